package balance

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"testing"
)

func Test_nextPrime(t *testing.T) {
	tests := []struct{ n, want uint64 }{
		{0, 2}, {1, 2}, {2, 2}, {3, 3}, {4, 5}, {8, 11}, {100, 101},
		{65536, 65537}, {65537, 65537}, {65538, 65539}, {655373, 655373},
		{5000000, 5000011}, {5000011, 5000011},
	}
	for _, tt := range tests {
		if got := nextPrime(tt.n); got != tt.want {
			t.Errorf("nextPrime(%d) = %d, want %d", tt.n, got, tt.want)
		}
	}
}

func TestNewMaglevSize(t *testing.T) {
	bs := testBackends(3, nil)
	tests := []struct {
		name string
		size uint32
		want int
		err  error
	}{
		{"default", 0, DefaultSize, nil},
		{"prime kept", 65537, 65537, nil},
		{"rounded up to next prime", 1000, 1009, nil},
		{"tiny rounded up", 3, 3, nil},
		{"max", MaxSize, MaxSize, nil},
		{"above max", MaxSize + 1, 0, ErrSize},
		{"fewer slots than backends", 2, 0, ErrSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, err := NewMaglev(1, bs, tt.size)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			if tab.Size() != tt.want {
				t.Errorf("Size() = %d, want %d", tab.Size(), tt.want)
			}
			for s, i := range tab.slots {
				if int(i) >= tab.Len() {
					t.Fatalf("slot %d holds %d", s, i)
				}
			}
		})
	}
}

// TestMaglevSlotShares checks that each backend owns its weight's share of the
// slots within one slot, which is within 1% for every backend with at least 100
// slots (the paper's M > 100·N).
func TestMaglevSlotShares(t *testing.T) {
	tests := []struct {
		name string
		n    int
		w    func(i int) uint32
	}{
		{"1 backend", 1, nil},
		{"3 equal", 3, nil},
		{"10 equal", 10, nil},
		{"100 equal", 100, nil},
		{"1000 equal", 1000, nil},
		{"weights 1..10", 10, func(i int) uint32 { return uint32(i + 1) }},
		{"one heavy", 20, func(i int) uint32 { return map[bool]uint32{true: 1000, false: 1}[i == 7] }},
		{"huge weights", 5, func(i int) uint32 { return math.MaxUint32 - uint32(i) }},
		{"weight too small for a slot", 2, func(i int) uint32 { return []uint32{math.MaxUint32, 1}[i] }},
		{"tiny next to huge", 3, func(i int) uint32 { return []uint32{math.MaxUint32, 1, 70000}[i] }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, err := NewMaglev(42, testBackends(tt.n, tt.w), 0)
			if err != nil {
				t.Fatal(err)
			}
			var total float64
			for i := range tab.Len() {
				total += float64(tab.Backend(i).Weight)
			}
			counts := slotCounts(tab)
			m := float64(tab.Size())
			worst := 0.0
			for i, c := range counts {
				ideal := float64(tab.Backend(i).Weight) / total * m
				if d := math.Abs(float64(c) - ideal); d >= 1 {
					t.Errorf("backend %d: %d slots, ideal %.2f", i, c, ideal)
				}
				if ideal >= 100 { // the paper's M > 100·N regime
					worst = max(worst, math.Abs(float64(c)-ideal)/ideal)
				}
			}
			if worst > 0.01 {
				t.Errorf("worst relative share error %.4f%%", 100*worst)
			}
		})
	}
}

// TestMaglevHonorsWeight: a backend with 4× the weight of another gets 80% of
// the keys (sozu's maglev_honors_weight), measured on 1M keys.
func TestMaglevHonorsWeight(t *testing.T) {
	bs := testBackends(2, func(i int) uint32 { return []uint32{4, 1}[i] })
	tab, err := NewMaglev(7, bs, 0)
	if err != nil {
		t.Fatal(err)
	}
	const keys = 1_000_000
	heavy := 0
	for k := range keys {
		if b, _ := tab.Lookup(key(k)); b.Weight == 4 {
			heavy++
		}
	}
	if got := float64(heavy) / keys; math.Abs(got-0.8) > 0.005 {
		t.Errorf("heavy backend got %.4f of keys, want 0.8", got)
	}
}

// maglevDisruption returns the fraction of slots that change backend when
// backend r leaves bs, and the ideal fraction (the slots r owned).
func maglevDisruption(t testing.TB, seed uint64, bs []Backend, r int, size uint32) (moved, ideal float64) {
	before, err := NewMaglev(seed, bs, size)
	if err != nil {
		t.Fatal(err)
	}
	after, err := NewMaglev(seed, without(bs, r), size)
	if err != nil {
		t.Fatal(err)
	}
	a, b := slotAddrs(before), slotAddrs(after)
	gone := bs[r].Addr
	var n, own int
	for s := range a {
		if a[s] == gone {
			own++
		}
		if a[s] != b[s] {
			n++
		}
	}
	m := float64(len(a))
	return float64(n) / m, float64(own) / m
}

// TestMaglevDisruptionRemove: when one of N backends leaves, the keys that
// move exceed the ideal (the leaver's own keys) by at most 1% of all keys.
// Slots stand for keys: keys map uniformly onto slots.
func TestMaglevDisruptionRemove(t *testing.T) {
	tests := []struct {
		name string
		n    int
		w    func(i int) uint32
	}{
		{"N=3", 3, nil},
		{"N=5", 5, nil},
		{"N=10", 10, nil},
		{"N=50", 50, nil},
		{"N=100", 100, nil},
		{"N=500", 500, nil},
		{"N=10 weights 1..10", 10, func(i int) uint32 { return uint32(i + 1) }},
		{"N=100 weights 1..4", 100, func(i int) uint32 { return uint32(i%4 + 1) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := testBackends(tt.n, tt.w)
			var worst, sum float64
			removals := 0
			for r := 0; r < tt.n; r += max(1, tt.n/10) {
				moved, ideal := maglevDisruption(t, 99, bs, r, 0)
				if moved < ideal {
					t.Fatalf("removing %d moved %.4f < ideal %.4f", r, moved, ideal)
				}
				worst = max(worst, moved-ideal)
				sum += moved - ideal
				removals++
			}
			t.Logf("extra disruption: mean %.3f%%, worst %.3f%% of keys (ideal 1/N = %.3f%%)",
				100*sum/float64(removals), 100*worst, 100/float64(tt.n))
			if worst > 0.01 {
				t.Errorf("worst extra disruption %.3f%% > 1%%", 100*worst)
			}
		})
	}
}

// TestMaglevDisruptionAdd: a new backend takes about its share, and almost no
// key moves between the old backends.
func TestMaglevDisruptionAdd(t *testing.T) {
	for _, n := range []int{3, 10, 100} {
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			bs := testBackends(n+1, nil)
			newcomer := bs[n].Addr
			before, err := NewMaglev(5, bs[:n], 0)
			if err != nil {
				t.Fatal(err)
			}
			after, err := NewMaglev(5, bs, 0)
			if err != nil {
				t.Fatal(err)
			}
			a, b := slotAddrs(before), slotAddrs(after)
			var toNew, between int
			for s := range a {
				switch {
				case b[s] == newcomer:
					toNew++
				case a[s] != b[s]:
					between++
				}
			}
			m := float64(len(a))
			t.Logf("to newcomer %.3f%% (ideal %.3f%%), between old backends %.3f%%",
				100*float64(toNew)/m, 100/float64(n+1), 100*float64(between)/m)
			if f := float64(between) / m; f > 0.01 {
				t.Errorf("%.3f%% of keys moved between old backends", 100*f)
			}
		})
	}
}

// TestMaglevLookupAvailable checks health skipping: the answer is usable, it
// is the plain lookup whenever that backend is usable, the probes stay within
// MaxProbes slots or fall back to HRW over the usable set, and an empty set
// fails.
func TestMaglevLookupAvailable(t *testing.T) {
	tab, err := NewMaglev(3, testBackends(10, func(i int) uint32 { return uint32(1 + i%3) }), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, down := range [][]int{{}, {0}, {3, 4}, {0, 1, 2, 3, 4, 5, 6, 7, 8}} {
		t.Run(fmt.Sprint("down", down), func(t *testing.T) {
			usable := tab.All()
			for _, i := range down {
				usable.Remove(i)
			}
			fallbacks := 0
			for k := range 100_000 {
				i := tab.Pick(key(k), usable)
				if !usable.Has(i) {
					t.Fatalf("key %d: picked unusable %d", k, i)
				}
				home := int(tab.slots[tab.slot(key(k))])
				if usable.Has(home) && i != home {
					t.Fatalf("key %d: home %d usable but picked %d", k, home, i)
				}
				probed := false
				for p := range uint64(MaxProbes) {
					s := (tab.slot(key(k)) + p) % tab.m
					if int(tab.slots[s]) == i {
						probed = true
						break
					}
					if usable.Has(int(tab.slots[s])) {
						t.Fatalf("key %d: skipped usable slot", k)
					}
				}
				if !probed {
					fallbacks++
					if want := tab.hrwPick(key(k), usable, nil); i != want {
						t.Fatalf("key %d: fallback %d, want HRW %d", k, i, want)
					}
				}
			}
			t.Logf("%d down: %.3f%% of keys fell back to HRW", len(down), float64(fallbacks)/1000)
		})
	}
	if _, ok := tab.LookupAvailable(1, NewSet(0)); ok {
		t.Error("lookup with no usable backend succeeded")
	}
}

// TestMaglevSkipRedistributes: keys of a down backend spread over the others
// roughly in proportion to their weights (the next slots' owners, not an exact
// weighted draw).
func TestMaglevSkipRedistributes(t *testing.T) {
	bs := testBackends(4, func(i int) uint32 { return []uint32{1, 1, 2, 4}[i] })
	tab, err := NewMaglev(11, bs, 0)
	if err != nil {
		t.Fatal(err)
	}
	down, _ := tab.IndexOf(bs[0].Addr)
	usable := tab.All()
	usable.Remove(down)
	got := map[uint32]int{}
	moved := 0
	for k := range 1_000_000 {
		if home, _ := tab.Lookup(key(k)); home.Addr != bs[0].Addr {
			continue
		}
		b, _ := tab.LookupAvailable(key(k), usable)
		got[b.Weight]++
		moved++
	}
	for w, want := range map[uint32]float64{1: 1.0 / 7, 2: 2.0 / 7, 4: 4.0 / 7} {
		if f := float64(got[w]) / float64(moved); math.Abs(f-want) > 0.05 {
			t.Errorf("weight %d got %.3f of the moved keys, want %.3f", w, f, want)
		}
	}
}

// TestMaglevFirstClaims pins the hash contract: offsets and skips come
// from the published affinity hash of the address with salted seeds, and the
// first claims follow the paper's permutation.
func TestMaglevFirstClaims(t *testing.T) {
	bs := []Backend{
		{ID: 1, Addr: netip.MustParseAddrPort("192.0.2.1:53"), Weight: 1},
		{ID: 2, Addr: netip.MustParseAddrPort("[2001:db8::1]:53"), Weight: 1},
	}
	const seed = 0x0123456789abcdef
	tab, err := NewMaglev(seed, bs, 101)
	if err != nil {
		t.Fatal(err)
	}
	// Backend 0 (IPv4 sorts first) claims its offset first; backend 1 claims
	// its offset unless taken, then its offset+skip.
	off0 := fnvSplitmix(seed^saltOffset, bs[0].Addr) % 101
	off1 := fnvSplitmix(seed^saltOffset, bs[1].Addr) % 101
	skip1 := fnvSplitmix(seed^saltSkip, bs[1].Addr)%100 + 1
	if tab.slots[off0] != 0 {
		t.Errorf("slot %d = %d, want backend 0", off0, tab.slots[off0])
	}
	want1 := off1
	if off1 == off0 {
		want1 = (off1 + skip1) % 101
	}
	if tab.slots[want1] != 1 {
		t.Errorf("slot %d = %d, want backend 1", want1, tab.slots[want1])
	}
}
