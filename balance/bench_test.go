package balance

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/fastudp/fastudp/core"
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

// BenchmarkSelectorPick measures a new flow's pick through a Selector, the
// picker's per-view state, for every policy: all backends usable, 10% down,
// and 10% of them backups. P2C reads live flows as the proxy does: two
// published counters per shard of 8 for each of its two candidates.
func BenchmarkSelectorPick(b *testing.B) {
	const shards = 8
	var counters [shards][2 * 101]atomic.Uint64
	for s := range shards {
		for i := range counters[s] {
			counters[s][i].Store(uint64(1000 + i*s))
		}
	}
	load := func(id core.BackendID) uint64 {
		var n uint64
		for s := range shards {
			closed := counters[s][2*id+1].Load()
			n += counters[s][2*id].Load() - closed
		}
		return n
	}
	for _, alg := range allAlgorithms {
		for _, n := range []int{3, 100} {
			for _, c := range []string{"up", "down=10%", "backups=10%"} {
				b.Run(fmt.Sprintf("%v/N=%d/%s", alg, n, c), func(b *testing.B) {
					bs := testBackends(n, func(i int) uint32 { return uint32(1 + i%4) })
					if c == "backups=10%" {
						for i := range max(1, n/10) {
							bs[i].Backup = true
						}
					}
					tab, err := New(alg, 1, bs, 0)
					if err != nil {
						b.Fatal(err)
					}
					var usable *Set
					if c == "down=10%" {
						usable = tab.All()
						for i := range max(1, n/10) {
							usable.Remove(i * 7 % n)
						}
					}
					s := NewSelector(tab, usable, 0)
					b.ReportAllocs()
					var k uint64
					for b.Loop() {
						k += 0x9e3779b97f4a7c15
						sink += s.Pick(k, load)
					}
				})
			}
		}
	}
}

// BenchmarkSelectorBuild measures building a view's selector (on the first
// pick after a health or table change).
func BenchmarkSelectorBuild(b *testing.B) {
	for _, alg := range []Algorithm{Maglev, RoundRobin, P2C} {
		b.Run(fmt.Sprintf("%v/N=100/weighted", alg), func(b *testing.B) {
			tab, err := New(alg, 1, testBackends(100, func(i int) uint32 { return uint32(1 + i%4) }), 0)
			if err != nil {
				b.Fatal(err)
			}
			usable := tab.All()
			usable.Remove(5)
			b.ReportAllocs()
			for b.Loop() {
				NewSelector(tab, usable, 0)
			}
		})
	}
}

// BenchmarkMaglevBuildBackups is BenchmarkMaglevBuild with 10 of the 100
// backends backups: two tables, of 90 primaries and of 10 backups.
func BenchmarkMaglevBuildBackups(b *testing.B) {
	bs := testBackends(100, nil)
	for i := range 10 {
		bs[i*10].Backup = true
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewMaglev(1, bs, DefaultSize); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHRWDisruption reports, as BenchmarkMaglevDisruption does, the keys
// that move when one of N backends leaves, over 200,000 keys; HRW moves only
// the leaver's keys, so extra-% is 0. The timing is one table build and the
// lookups.
func BenchmarkHRWDisruption(b *testing.B) {
	for _, n := range []int{3, 10, 100} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			bs := testBackends(n, nil)
			const keys = 200_000
			var moved, own float64
			measure := func(r int) {
				a, _ := NewHRW(99, bs)
				c, _ := NewHRW(99, without(bs, r))
				for k := range keys {
					x, _ := a.Lookup(key(k))
					y, _ := c.Lookup(key(k))
					if x.Addr == bs[r].Addr {
						own++
					}
					if x.Addr != y.Addr {
						moved++
					}
				}
			}
			runs := 0
			for r := 0; r < n; r += max(1, n/10) {
				measure(r)
				runs++
			}
			total := float64(runs * keys)
			for b.Loop() {
				a, _ := NewHRW(99, without(bs, 0))
				sink += a.Pick(1, nil)
			}
			b.ReportMetric(100*moved/total, "moved-%")
			b.ReportMetric(100/float64(n), "ideal-%")
			b.ReportMetric(100*(moved-own)/total, "extra-%")
		})
	}
}
