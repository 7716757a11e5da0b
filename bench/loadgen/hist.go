package loadgen

import (
	"math/bits"
	"time"
)

// Hist is a log-linear latency histogram in the style of HDR histograms:
// exact below 64 ns, then 32 buckets per power of two (relative error under
// 3.2%), up to about 2^40 ns (18 minutes); larger values land in the last
// bucket. Record allocates nothing. The zero value is empty and ready.
type Hist struct {
	counts [histBuckets]uint64
	n      uint64
	max    int64
}

const (
	histSubBits = 5
	histSub     = 1 << histSubBits // buckets per power of two
	histLinear  = 2 * histSub      // values below this have their own bucket
	histMaxExp  = 40 - histSubBits // largest shift
	histBuckets = histLinear + histMaxExp*histSub
)

func histIndex(v uint64) int {
	if v < histLinear {
		return int(v)
	}
	e := bits.Len64(v) - histSubBits - 1 // v>>e is in [histSub, 2*histSub)
	if e > histMaxExp {
		return histBuckets - 1
	}
	return histLinear + (e-1)*histSub + int(v>>e) - histSub
}

// histLow returns the smallest value that falls in bucket i.
func histLow(i int) uint64 {
	if i < histLinear {
		return uint64(i)
	}
	e := (i-histLinear)/histSub + 1
	m := uint64((i-histLinear)%histSub + histSub)
	return m << e
}

// Record adds one value; negative values count as 0.
func (h *Hist) Record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[histIndex(uint64(v))]++
	h.n++
	h.max = max(h.max, v)
}

// Count returns the number of recorded values.
func (h *Hist) Count() uint64 { return h.n }

// Max returns the largest recorded value.
func (h *Hist) Max() time.Duration { return time.Duration(h.max) }

// Quantile returns an upper bound of the q-quantile (0 ≤ q ≤ 1): the upper
// edge of the bucket holding it, capped at Max. It is 0 when h is empty.
func (h *Hist) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var cum uint64
	for i, c := range h.counts {
		cum += c
		if cum >= rank {
			hi := histLow(i+1) - 1
			if i == histBuckets-1 {
				hi = uint64(h.max)
			}
			return time.Duration(min(hi, uint64(h.max)))
		}
	}
	return time.Duration(h.max)
}

// Merge adds o's values to h.
func (h *Hist) Merge(o *Hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}
