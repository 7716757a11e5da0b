package core

import (
	"fmt"
	"testing"
)

// tableFixture is a flow table over a flows slice whose key hashes the test
// chooses, so it can force collisions, shared tags and wrap-around.
type tableFixture struct {
	t      *testing.T
	tab    flowTable
	flows  []flow
	hashes []uint64
	in     map[uint32]bool // reference: indexes in the table
}

func newTableFixture(t *testing.T, n int, hash func(i int) uint64) *tableFixture {
	fx := &tableFixture{t: t, flows: make([]flow, n), hashes: make([]uint64, n), in: map[uint32]bool{}}
	for i := range fx.flows {
		fx.flows[i].key = flowKey{client: addr{ip: [16]byte{0: byte(i), 1: byte(i >> 8), 2: byte(i >> 16)}, port: uint16(i)}, listener: ListenerID(i % 3)}
		fx.hashes[i] = hash(i)
	}
	fx.tab.init(0)
	return fx
}

func (fx *tableFixture) insert(i uint32) {
	fx.tab.insert(fx.hashes[i], i)
	fx.in[i] = true
}

func (fx *tableFixture) remove(i uint32) {
	if !fx.tab.remove(fx.hashes[i], i) {
		fx.t.Fatalf("remove %d: not found", i)
	}
	delete(fx.in, i)
}

// verify checks the table against the reference and the linear-probing
// invariant: every entry is reachable from its home slot without crossing an
// empty slot.
func (fx *tableFixture) verify(step string) {
	t := fx.t
	tab := &fx.tab
	if tab.count != len(fx.in) {
		t.Fatalf("%s: count %d, reference %d", step, tab.count, len(fx.in))
	}
	if tab.count*4 > len(tab.slots)*3 {
		t.Fatalf("%s: %d entries in %d slots", step, tab.count, len(tab.slots))
	}
	seen := map[uint32]bool{}
	for i, s := range tab.slots {
		if s == 0 {
			continue
		}
		idx := slotIndex(s)
		if seen[idx] || !fx.in[idx] {
			t.Fatalf("%s: slot %d holds %d (duplicate or removed)", step, i, idx)
		}
		seen[idx] = true
		if s != packSlot(fx.hashes[idx], idx) {
			t.Fatalf("%s: slot %d holds a stale tag", step, i)
		}
		for j := tab.home(s); j != uint64(i); j = (j + 1) & tab.mask {
			if tab.slots[j] == 0 {
				t.Fatalf("%s: entry %d at %d unreachable from home %d (hole at %d)", step, idx, i, tab.home(s), j)
			}
		}
	}
	for i := range fx.flows {
		k := fx.flows[i].key
		got, ok := tab.find(fx.hashes[i], &k, slabOf(fx.flows))
		if ok != fx.in[uint32(i)] || (ok && got != uint32(i)) {
			t.Fatalf("%s: find(%d) = %d, %v; in table %v", step, i, got, ok, fx.in[uint32(i)])
		}
	}
}

// Test_flowTable_randomized interleaves inserts and removes and checks the
// table against a Go map after each, under hash patterns that stress
// backward-shift deletion: spread, clustered around the end of the table
// (wrap-around), and identical hashes (every lookup confirmed by key).
func Test_flowTable_randomized(t *testing.T) {
	tests := []struct {
		name string
		n    int // distinct keys
		max  int // most in the table at once
		ops  int
		hash func(i int) uint64
	}{
		{name: "spread", n: 3000, max: 2500, ops: 20000, hash: func(i int) uint64 { return splitmix64(uint64(i)) }},
		{name: "wrap-around clusters", n: 200, max: 150, ops: 20000, hash: func(i int) uint64 {
			// Top 32 bits near 2^32: homes are the last and first slots at
			// every table size.
			top := []uint64{0xffffffff, 0xfffffffe, 0xfffffffd, 0, 1}[i%5]
			return top<<32 | uint64(i)
		}},
		{name: "two homes", n: 100, max: 48, ops: 10000, hash: func(i int) uint64 { return uint64(i%2)<<32 | uint64(i) }},
		{name: "identical hashes", n: 40, max: 40, ops: 5000, hash: func(int) uint64 { return 0xabcdef0012345678 }},
		{name: "identical tags, two homes", n: 60, max: 45, ops: 5000, hash: func(i int) uint64 { return uint64(63-i%2) << 32 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fx := newTableFixture(t, tc.n, tc.hash)
			r := testRand(len(tc.name))
			for step := 0; step < tc.ops; step++ {
				i := uint32(r.next() % uint64(tc.n))
				switch {
				case fx.in[i]:
					fx.remove(i)
				case len(fx.in) < tc.max:
					fx.insert(i)
				}
				if step%97 == 0 || tc.n <= 200 {
					fx.verify(fmt.Sprintf("step %d", step))
				}
			}
			fx.verify("end")
			for i := range fx.in {
				fx.remove(i)
			}
			fx.verify("emptied")
		})
	}
}

func Test_flowTable(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, fx *tableFixture)
	}{
		{name: "remove of an absent entry", run: func(t *testing.T, fx *tableFixture) {
			fx.insert(0)
			if fx.tab.remove(fx.hashes[1], 1) {
				t.Fatal("removed an absent entry")
			}
			if fx.tab.remove(fx.hashes[0], 1) {
				t.Fatal("removed by hash with the wrong index")
			}
			fx.verify("after")
		}},
		{name: "grow keeps every entry", run: func(t *testing.T, fx *tableFixture) {
			for i := 0; i < 1000; i++ {
				fx.insert(uint32(i))
			}
			if len(fx.tab.slots) != 2048 {
				t.Fatalf("%d slots for 1000 entries", len(fx.tab.slots))
			}
			fx.verify("grown")
		}},
		{name: "remove the first of a wrapped cluster", run: func(t *testing.T, fx *tableFixture) {
			// Entries homed at the last slot wrap to the front; removing the
			// one in the last slot must pull the wrapped ones back.
			for i := 0; i < 4; i++ {
				fx.hashes[i] = 63 << 32
				fx.insert(uint32(i))
			}
			fx.hashes[4] = 0 // homed at slot 0, displaced by the wrap
			fx.insert(4)
			fx.verify("built")
			fx.remove(0)
			fx.verify("removed first")
			fx.remove(4)
			fx.verify("removed displaced")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, newTableFixture(t, 1000, func(i int) uint64 { return splitmix64(uint64(i) + 12345) }))
		})
	}
	for _, tc := range []struct{ n, size int }{{0, 64}, {48, 64}, {49, 128}, {1000, 2048}, {1536, 2048}, {1537, 4096}} {
		var tab flowTable
		tab.init(tc.n)
		if len(tab.slots) != tc.size || tab.mask != uint64(tc.size-1) {
			t.Errorf("init(%d): %d slots, want %d", tc.n, len(tab.slots), tc.size)
		}
	}
}
