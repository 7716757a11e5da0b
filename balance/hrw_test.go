package balance

import (
	"fmt"
	"math"
	"testing"
)

// TestHRWDistribution: over 1M keys each backend's share is within 2% (relative)
// of its weight's share.
func TestHRWDistribution(t *testing.T) {
	tests := []struct {
		name string
		n    int
		w    func(i int) uint32
	}{
		{"3 equal", 3, nil},
		{"10 equal", 10, nil},
		{"weights 1..5", 5, func(i int) uint32 { return uint32(i + 1) }},
		{"4 to 1", 2, func(i int) uint32 { return []uint32{4, 1}[i] }},
		{"weights 100,200,700", 3, func(i int) uint32 { return []uint32{100, 200, 700}[i] }},
	}
	const keys = 1_000_000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab, err := NewHRW(17, testBackends(tt.n, tt.w))
			if err != nil {
				t.Fatal(err)
			}
			counts := make([]int, tab.Len())
			for k := range keys {
				counts[tab.Pick(key(k), nil)]++
			}
			var total float64
			for i := range tab.Len() {
				total += float64(tab.Backend(i).Weight)
			}
			worst := 0.0
			for i, c := range counts {
				want := float64(tab.Backend(i).Weight) / total
				got := float64(c) / keys
				worst = max(worst, math.Abs(got-want)/want)
			}
			t.Logf("worst relative share error %.3f%%", 100*worst)
			if worst > 0.02 {
				t.Errorf("worst relative share error %.3f%% > 2%%", 100*worst)
			}
		})
	}
}

// TestHRWMinimalDisruption: removing a backend moves exactly its own keys;
// adding one moves keys only to the newcomer.
func TestHRWMinimalDisruption(t *testing.T) {
	for _, weighted := range []bool{false, true} {
		t.Run(fmt.Sprint("weighted=", weighted), func(t *testing.T) {
			var w func(int) uint32
			if weighted {
				w = func(i int) uint32 { return uint32(1 + i%5) }
			}
			bs := testBackends(11, w)
			full, err := NewHRW(23, bs)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range []int{0, 5, 10} {
				less, err := NewHRW(23, without(bs, r))
				if err != nil {
					t.Fatal(err)
				}
				moved := 0
				for k := range 200_000 {
					a, _ := full.Lookup(key(k))
					b, _ := less.Lookup(key(k))
					if a.Addr != bs[r].Addr && a != b {
						t.Fatalf("remove %d: key %d moved %v -> %v", r, k, a.Addr, b.Addr)
					}
					if a.Addr == bs[r].Addr {
						moved++
					}
					// Adding bs[r] back to less is full: keys go only to it.
					if b != a && a.Addr != bs[r].Addr {
						t.Fatalf("add %d: key %d moved between old backends", r, k)
					}
				}
				t.Logf("removing backend %d moved %.2f%% of keys", r, float64(moved)/2000)
			}
		})
	}
}

// TestHRWLookupAvailable: a usable subset gives the HRW winner among it, which
// is the same as an HRW table built from the subset.
func TestHRWLookupAvailable(t *testing.T) {
	bs := testBackends(6, func(i int) uint32 { return uint32(i + 1) })
	tab, err := NewHRW(31, bs)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := NewHRW(31, []Backend{bs[1], bs[3], bs[4]})
	if err != nil {
		t.Fatal(err)
	}
	usable := NewSet(tab.Len())
	for _, j := range []int{1, 3, 4} {
		i, _ := tab.IndexOf(bs[j].Addr)
		usable.Add(i)
	}
	for k := range 100_000 {
		a, ok := tab.LookupAvailable(key(k), usable)
		b, _ := sub.Lookup(key(k))
		if !ok || a != b {
			t.Fatalf("key %d: subset lookup %v, table of the subset %v", k, a, b)
		}
	}
	if _, ok := tab.LookupAvailable(1, NewSet(tab.Len())); ok {
		t.Error("lookup with no usable backend succeeded")
	}
}

// hrwRef scores every usable backend with a logarithm: the rule without the
// equal-weight fast path or the bound that skips logarithms.
func hrwRef(t *Table, key uint64, usable *Set) int {
	best, bestS, bestH := -1, 0.0, uint64(0)
	for i := range t.backends {
		if usable != nil && !usable.Has(i) {
			continue
		}
		h := splitmix64(key ^ t.hrw[i])
		s := float64(t.backends[i].Weight) / -math.Log(unitInterval(h))
		if best < 0 || s > bestS || (s == bestS && h > bestH) {
			best, bestS, bestH = i, s, h
		}
	}
	return best
}

// TestHRWMatchesReference: the fast paths pick what the plain rule picks.
func TestHRWMatchesReference(t *testing.T) {
	for _, c := range []struct {
		n int
		w func(int) uint32
	}{
		{3, nil},
		{100, nil},
		{3, func(i int) uint32 { return uint32(1 + i) }},
		{100, func(i int) uint32 { return uint32(1 + i%7) }},
		{20, func(i int) uint32 { return []uint32{1, math.MaxUint32}[i%2] }},
	} {
		tab, err := NewHRW(37, testBackends(c.n, c.w))
		if err != nil {
			t.Fatal(err)
		}
		if (c.w == nil) != (tab.weight == nil) {
			t.Fatalf("N=%d: equal-weight fast path chosen wrongly", c.n)
		}
		usable := tab.All()
		for i := 0; i < c.n; i += 3 {
			usable.Remove(i)
		}
		for k := range 100_000 {
			if a, b := tab.Pick(key(k), nil), hrwRef(tab, key(k), nil); a != b {
				t.Fatalf("N=%d key %d: %d, reference %d", c.n, k, a, b)
			}
			if a, b := tab.Pick(key(k), usable), hrwRef(tab, key(k), usable); a != b {
				t.Fatalf("N=%d key %d (subset): %d, reference %d", c.n, k, a, b)
			}
		}
	}
}
