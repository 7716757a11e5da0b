package balance

import (
	"math"

	"github.com/fastudp/fastudp/core"
)

// Weighted rendezvous hashing (Schindelhauer and Schomaker's logarithmic
// method, as in sozu): for key k, backend i draws
//
//	h_i = splitmix64(k XOR hrw_i)        hrw_i = backendHash(seed, saltHRW, addr_i)
//	u_i = (h_i>>11 + 0.5) / 2^53         in (0, 1)
//	score_i = w_i / -ln(u_i)
//
// and the highest score wins; equal scores go to the larger h_i, then to the
// lower index. -w/ln(u) makes backend i win with probability w_i / Σw, and a
// backend's score does not depend on the others, so removing a backend moves
// only its own keys and adding one takes keys only for the newcomer.
//
// When all weights are equal the score is monotone in h_i, so the table
// compares h_i directly and skips the logarithms; the winner is the same. With
// unequal weights, a backend whose upper bound w_i/(1-u_i) (from -ln u >= 1-u)
// is below the best score so far is skipped without a logarithm, which leaves
// O(log N) logarithms per lookup on average.

// hrwPick returns the index of the winning backend among the backends in
// both usable and mask (nil: all), or -1 when there is none.
func (t *Table) hrwPick(key uint64, usable, mask *Set) int {
	if usable == nil {
		usable, mask = mask, nil
	}
	best := -1
	var bestH uint64
	if t.weight == nil && usable == nil {
		if len(t.hrw) == 0 {
			return -1
		}
		best, bestH = 0, splitmix64(key^t.hrw[0])
		for i := 1; i < len(t.hrw); i++ {
			if h := splitmix64(key ^ t.hrw[i]); h > bestH {
				best, bestH = i, h
			}
		}
		return best
	}
	if t.weight == nil {
		for i, hb := range t.hrw {
			if !usable.Has(i) || mask != nil && !mask.Has(i) {
				continue
			}
			if h := splitmix64(key ^ hb); best < 0 || h > bestH {
				best, bestH = i, h
			}
		}
		return best
	}
	var bestS float64
	for i, hb := range t.hrw {
		if usable != nil && !usable.Has(i) || mask != nil && !mask.Has(i) {
			continue
		}
		h := splitmix64(key ^ hb)
		u := unitInterval(h)
		// -ln(u) >= 1-u, so score <= w/(1-u): skip the logarithm when even
		// that bound (with a margin far above rounding error) loses.
		if best >= 0 && t.weight[i] < bestS*(1-u)*(1-0x1p-30) {
			continue
		}
		s := t.weight[i] / -math.Log(u)
		if best < 0 || s > bestS || (s == bestS && h > bestH) {
			best, bestS, bestH = i, s, h
		}
	}
	return best
}

// unitInterval maps h to (0, 1), never reaching either end.
func unitInterval(h uint64) float64 {
	return (float64(h>>11) + 0.5) * 0x1p-53
}

// splitmix64 is the finaliser core.AffinityHash ends with.
func splitmix64(h uint64) uint64 { return core.Mix64(h) }
