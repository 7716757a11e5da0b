package core

import (
	"fmt"
	"slices"
	"testing"
)

// heapFixture runs a timerHeap over a flows slice (for heapPos) beside a
// reference map of index -> time.
type heapFixture struct {
	t     *testing.T
	h     timerHeap
	flows []flow
	ref   map[uint32]Time
}

func newHeapFixture(t *testing.T, n int) *heapFixture {
	fx := &heapFixture{t: t, flows: make([]flow, n), ref: map[uint32]Time{}}
	for i := range fx.flows {
		fx.flows[i].heapPos = -1
	}
	return fx
}

func (fx *heapFixture) verify(step string) {
	t := fx.t
	if fx.h.len() != len(fx.ref) {
		t.Fatalf("%s: %d entries, reference %d", step, fx.h.len(), len(fx.ref))
	}
	for i, e := range fx.h.entries {
		if i > 0 {
			if p := (i - 1) / heapArity; fx.h.entries[p].at > e.at {
				t.Fatalf("%s: entry %d (%d) before its parent %d (%d)", step, i, e.at, p, fx.h.entries[p].at)
			}
		}
		if fx.flows[e.idx].heapPos != int32(i) {
			t.Fatalf("%s: flow %d heapPos %d, at %d", step, e.idx, fx.flows[e.idx].heapPos, i)
		}
		if fx.ref[e.idx] != e.at {
			t.Fatalf("%s: flow %d at %d, reference %d", step, e.idx, e.at, fx.ref[e.idx])
		}
	}
	for idx := range fx.flows {
		if _, ok := fx.ref[uint32(idx)]; !ok && fx.flows[idx].heapPos != -1 {
			t.Fatalf("%s: flow %d out of the heap has heapPos %d", step, idx, fx.flows[idx].heapPos)
		}
	}
	want := Never
	for _, at := range fx.ref {
		want = min(want, at)
	}
	if fx.h.min() != want {
		t.Fatalf("%s: min %d, reference %d", step, fx.h.min(), want)
	}
}

// Test_timerHeap_randomized pushes, removes and updates (earlier and later)
// against a map and a sort, then drains the heap in order.
func Test_timerHeap_randomized(t *testing.T) {
	tests := []struct {
		name  string
		n     int
		ops   int
		times uint64 // distinct times drawn from; small = many ties
	}{
		{name: "few flows", n: 5, ops: 3000, times: 10},
		{name: "many ties", n: 200, ops: 20000, times: 4},
		{name: "spread", n: 1000, ops: 30000, times: 1 << 40},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fx := newHeapFixture(t, tc.n)
			r := testRand(tc.n)
			for step := 0; step < tc.ops; step++ {
				idx := uint32(r.next() % uint64(tc.n))
				at := Time(r.next() % tc.times)
				_, in := fx.ref[idx]
				switch op := r.next() % 3; {
				case !in:
					fx.h.push(at, idx, slabOf(fx.flows))
					fx.ref[idx] = at
				case op == 0:
					fx.h.remove(int(fx.flows[idx].heapPos), slabOf(fx.flows))
					delete(fx.ref, idx)
				default:
					fx.h.update(int(fx.flows[idx].heapPos), at, slabOf(fx.flows))
					fx.ref[idx] = at
				}
				if tc.n <= 200 || step%101 == 0 {
					fx.verify(fmt.Sprintf("step %d", step))
				}
			}
			fx.verify("end")
			var want []Time
			for _, at := range fx.ref {
				want = append(want, at)
			}
			slices.Sort(want)
			var got []Time
			for fx.h.len() > 0 {
				e := fx.h.entries[0]
				got = append(got, e.at)
				fx.h.remove(0, slabOf(fx.flows))
				delete(fx.ref, e.idx)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("drained out of order:\n got %v\nwant %v", got, want)
			}
			fx.verify("drained")
		})
	}
}

func Test_timerHeap(t *testing.T) {
	tests := []struct {
		name string
		run  func(fx *heapFixture)
	}{
		{name: "empty min is Never", run: func(fx *heapFixture) {}},
		{name: "remove the last entry", run: func(fx *heapFixture) {
			fx.h.push(5, 0, slabOf(fx.flows))
			fx.h.push(7, 1, slabOf(fx.flows))
			fx.h.remove(1, slabOf(fx.flows))
			fx.ref[0] = 5
		}},
		{name: "remove the only entry", run: func(fx *heapFixture) {
			fx.h.push(5, 0, slabOf(fx.flows))
			fx.h.remove(0, slabOf(fx.flows))
		}},
		{name: "remove from the middle moves the last up", run: func(fx *heapFixture) {
			for i, at := range []Time{1, 10, 20, 30, 40, 11, 12, 13, 14, 2} {
				fx.h.push(at, uint32(i), slabOf(fx.flows))
				fx.ref[uint32(i)] = at
			}
			fx.h.remove(int(fx.flows[2].heapPos), slabOf(fx.flows))
			delete(fx.ref, 2)
		}},
		{name: "update to the same time", run: func(fx *heapFixture) {
			fx.h.push(5, 0, slabOf(fx.flows))
			fx.h.push(5, 1, slabOf(fx.flows))
			fx.h.update(1, 5, slabOf(fx.flows))
			fx.ref[0], fx.ref[1] = 5, 5
		}},
		{name: "Never entries", run: func(fx *heapFixture) {
			fx.h.push(Never, 0, slabOf(fx.flows))
			fx.h.push(3, 1, slabOf(fx.flows))
			fx.h.update(int(fx.flows[1].heapPos), Never, slabOf(fx.flows))
			fx.ref[0], fx.ref[1] = Never, Never
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fx := newHeapFixture(t, 16)
			tc.run(fx)
			fx.verify(tc.name)
		})
	}
}
