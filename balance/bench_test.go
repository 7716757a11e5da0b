package balance

import (
	"fmt"
	"testing"
)

// sink keeps lookups from being optimised away.
var sink int

func BenchmarkMaglevLookup(b *testing.B) {
	for _, n := range []int{3, 100} {
		b.Run(fmt.Sprintf("N=%d/M=%d", n, DefaultSize), func(b *testing.B) {
			tab, err := NewMaglev(1, testBackends(n, nil), 0)
			if err != nil {
				b.Fatal(err)
			}
			benchmarkLookup(b, tab, nil)
		})
	}
}

// BenchmarkMaglevLookupAvailable measures lookups with a share of the
// backends down: probes, and with most down the HRW fallback.
func BenchmarkMaglevLookupAvailable(b *testing.B) {
	for _, down := range []int{0, 10, 50, 90} {
		b.Run(fmt.Sprintf("N=100/down=%d%%", down), func(b *testing.B) {
			tab, err := NewMaglev(1, testBackends(100, nil), 0)
			if err != nil {
				b.Fatal(err)
			}
			usable := tab.All()
			for i := range down {
				usable.Remove(i)
			}
			benchmarkLookup(b, tab, usable)
		})
	}
}

func BenchmarkHRWLookup(b *testing.B) {
	for _, weighted := range []bool{false, true} {
		for _, n := range []int{3, 10, 100} {
			b.Run(fmt.Sprintf("N=%d/weighted=%v", n, weighted), func(b *testing.B) {
				var w func(int) uint32
				if weighted {
					w = func(i int) uint32 { return uint32(1 + i%4) }
				}
				tab, err := NewHRW(1, testBackends(n, w))
				if err != nil {
					b.Fatal(err)
				}
				benchmarkLookup(b, tab, nil)
			})
		}
	}
}

func benchmarkLookup(b *testing.B, tab *Table, usable *Set) {
	b.ReportAllocs()
	var k uint64
	for b.Loop() {
		k += 0x9e3779b97f4a7c15 // distinct, well-spread keys; no hashing cost
		if usable == nil {
			be, _ := tab.Lookup(k)
			sink += int(be.ID)
		} else {
			be, _ := tab.LookupAvailable(k, usable)
			sink += int(be.ID)
		}
	}
}

func BenchmarkMaglevBuild(b *testing.B) {
	for _, c := range []struct {
		n        int
		size     uint32
		weighted bool
	}{
		{10, DefaultSize, false},
		{100, DefaultSize, false},
		{100, DefaultSize, true},
		{1000, DefaultSize, false},
		{100, 655373, false},
	} {
		b.Run(fmt.Sprintf("N=%d/M=%d/weighted=%v", c.n, c.size, c.weighted), func(b *testing.B) {
			var w func(int) uint32
			if c.weighted {
				w = func(i int) uint32 { return uint32(1 + i%4) }
			}
			bs := testBackends(c.n, w)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := NewMaglev(1, bs, c.size); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMaglevDisruption reports, as metrics, the share of keys that move
// when one of N backends leaves (moved-%), the ideal 1/N share (ideal-%) and
// the excess (extra-%), averaged over up to ten choices of the leaver. The
// timing is that of two table builds.
func BenchmarkMaglevDisruption(b *testing.B) {
	for _, c := range []struct {
		n    int
		size uint32
	}{{3, DefaultSize}, {10, DefaultSize}, {100, DefaultSize}, {500, DefaultSize}, {1000, DefaultSize}, {100, 655373}, {1000, 655373}} {
		b.Run(fmt.Sprintf("N=%d/M=%d", c.n, c.size), func(b *testing.B) {
			bs := testBackends(c.n, nil)
			var moved, ideal float64
			runs := 0
			for r := 0; r < c.n; r += max(1, c.n/10) {
				m, i := maglevDisruption(b, 99, bs, r, c.size)
				moved += m
				ideal += i
				runs++
			}
			for b.Loop() {
				maglevDisruption(b, 99, bs, 0, c.size)
			}
			b.ReportMetric(100*moved/float64(runs), "moved-%")
			b.ReportMetric(100*ideal/float64(runs), "ideal-%")
			b.ReportMetric(100*(moved-ideal)/float64(runs), "extra-%")
		})
	}
}
