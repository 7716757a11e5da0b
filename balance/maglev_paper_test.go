package balance

import (
	"fmt"
	"slices"
	"testing"
)

const emptySlot = 0xffff // never a backend index: MaxBackends < 1<<16

// paperPopulate is the population loop of the Maglev paper (Eisenbud et al.,
// NSDI 2016, Pseudocode 1), unweighted: backends take turns in index order
// until the table is full.
func paperPopulate(seed uint64, bs []Backend, m uint64) []uint16 {
	n := len(bs)
	next := make([]uint64, n)
	skip := make([]uint64, n)
	for i := range bs {
		next[i] = backendHash(seed, saltOffset, bs[i].Addr) % m
		skip[i] = backendHash(seed, saltSkip, bs[i].Addr)%(m-1) + 1
	}
	slots := make([]uint16, m)
	for j := range slots {
		slots[j] = emptySlot
	}
	filled := uint64(0)
	for {
		for i := range n {
			c := next[i]
			for slots[c] != emptySlot {
				if c += skip[i]; c >= m {
					c -= m
				}
			}
			slots[c] = uint16(i)
			if c += skip[i]; c >= m {
				c -= m
			}
			next[i] = c
			if filled++; filled == m {
				return slots
			}
		}
	}
}

// TestMaglevEqualWeightsIsPaper: with equal weights the weighted population
// builds exactly the paper's table.
func TestMaglevEqualWeightsIsPaper(t *testing.T) {
	for _, m := range []uint64{2, 101, 65537} {
		for _, n := range []int{1, 2, 3, 10, 99} {
			t.Run(fmt.Sprintf("M=%d/N=%d", m, n), func(t *testing.T) {
				if uint64(n) > m {
					t.Skip()
				}
				bs, err := sortedBackends(testBackends(n, func(int) uint32 { return 7 }))
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(populate(13, bs, m), paperPopulate(13, bs, m)) {
					t.Error("tables differ")
				}
			})
		}
	}
}
