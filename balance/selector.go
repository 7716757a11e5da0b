package balance

import (
	"math/bits"
	"sync/atomic"

	"github.com/fastudp/fastudp/core"
)

// LoadFunc returns the live load of a backend, by the [Backend.ID] the shell
// gave it: for [P2C], its live flows (or DNS queries in flight). It is called
// from many goroutines at once and must not block.
type LoadFunc func(id core.BackendID) uint64

// Selector chooses backends of one [Table] among one usable set: the
// per-view state of every policy, built once per change of the table or the
// set (a health view) and shared by all shards. Its Pick takes no lock and
// allocates nothing.
//
// Building costs O(N) (plus O(N/64) for the backup tier's test): the usable
// backends of the tier (primaries, or backups when no primary is usable; see
// [Table]), and for the stateful policies their weights reduced by their
// greatest common divisor g, W = Σ w_i/g, cumulative sums and an alias table.
//
//   - [Maglev], [HRW]: [Table.Pick] with the tier decided in advance; when
//     every backend of the tier is usable, Maglev is one slot read.
//   - [RoundRobin]: the n-th pick (an atomic counter) takes position
//     p = (n mod W)·s mod W, s the integer nearest W/φ (φ the golden ratio)
//     that is coprime to W, and returns the backend whose cumulative-weight
//     interval holds p. Since n ↦ n·s mod W permutes 0…W−1, every W
//     consecutive picks give each backend exactly w_i/g of them, and the
//     golden-ratio stride spreads a backend's picks evenly over the period
//     (the three-distance theorem): the guarantee of nginx's smooth weighted
//     round robin, without per-backend mutable state. With equal weights it
//     is plain round robin over the backends in a fixed order.
//   - [Random]: an independent draw by weight per pick from Walker's alias
//     table (O(1)); the random bits are splitmix64 of an atomic counter.
//   - [P2C]: two draws as for Random, redrawn (up to 4 times, then the next
//     candidate) until distinct; the one with the smaller load/weight, by the
//     [LoadFunc], wins; ties go to the first draw. Without a LoadFunc it is
//     Random.
//
// Concurrent shards share the counter (one atomic add per pick of
// RoundRobin, Random and P2C); it sits on a cache line of its own.
type Selector struct {
	t    *Table
	alg  Algorithm
	n    int      // candidates
	set  *Set     // candidates; nil when they are every backend of the table
	fast bool     // Maglev: every backend of the tier is a candidate
	slot []uint16 // Maglev: the tier's slots

	// RoundRobin, Random, P2C: candidate k is backend idx[k].
	idx    []uint16
	weight []uint64 // raw weights, for P2C
	cum    []uint64 // cum[k] = Σ_{j<=k} w_j/g
	total  uint64   // W
	stride uint64
	thr    []uint64 // alias table: keep k when u < thr[k] (u in [0, W))
	alias  []uint16

	_   [64]byte
	ctr atomic.Uint64
	_   [56]byte
}

// golden is 2^64/φ, the splitmix64 increment.
const golden = 0x9e3779b97f4a7c15

// NewSelector returns the selector of t's algorithm for the backends in
// usable (indices into t; nil means all). start is the initial cursor, for
// example the previous selector's [Selector.Cursor], so that round robin
// continues across view changes instead of restarting at the same backend.
func NewSelector(t *Table, usable *Set, start uint64) *Selector {
	s := &Selector{t: t, alg: t.alg}
	s.ctr.Store(start)
	mask, slots := t.tier(usable)
	s.slot = slots
	set := NewSet(len(t.backends))
	for i := range t.backends {
		if (usable == nil || usable.Has(i)) && (mask == nil || mask.Has(i)) {
			set.Add(i)
			s.n++
		}
	}
	tierLen := len(t.backends)
	if mask != nil {
		tierLen = mask.Len()
	}
	s.fast = s.n > 0 && s.n == tierLen && slots != nil
	if s.n < len(t.backends) {
		s.set = set
	}
	if t.alg == Maglev || t.alg == HRW || s.n == 0 {
		return s
	}
	s.idx = make([]uint16, 0, s.n)
	s.weight = make([]uint64, 0, s.n)
	var g uint64
	for i := range t.backends {
		if set.Has(i) {
			w := uint64(t.backends[i].Weight)
			s.idx = append(s.idx, uint16(i))
			s.weight = append(s.weight, w)
			g = gcd(g, w)
		}
	}
	s.cum = make([]uint64, s.n)
	for k, w := range s.weight {
		s.total += w / g
		s.cum[k] = s.total
	}
	s.stride = goldenStride(s.total)
	s.thr, s.alias = aliasTable(s.weight, g, s.total)
	return s
}

// Table returns the selector's table.
func (s *Selector) Table() *Table { return s.t }

// Len returns the number of backends the selector chooses among.
func (s *Selector) Len() int { return s.n }

// Cursor returns the counter that drives round robin and the random draws.
func (s *Selector) Cursor() uint64 { return s.ctr.Load() }

// Pick returns the index (into the table) of the backend for a new flow with
// affinity key (used by Maglev and HRW only), or -1 when no backend is
// usable. load is read by P2C only and may be nil. It takes no lock and
// allocates nothing.
func (s *Selector) Pick(key uint64, load LoadFunc) int {
	if s.fast { // Maglev, every backend of the tier usable
		return int(s.slot[s.t.slot(key)])
	}
	switch s.alg {
	case Maglev:
		return s.t.maglevPick(key, s.slot, s.set, nil)
	case HRW:
		return s.t.hrwPick(key, s.set, nil)
	}
	switch {
	case s.n == 0:
		return -1
	case s.n == 1:
		return int(s.idx[0])
	}
	switch s.alg {
	case RoundRobin:
		c := (s.ctr.Add(1) - 1) % s.total
		hi, lo := bits.Mul64(c, s.stride)
		return int(s.idx[s.search(bits.Rem64(hi, lo, s.total))])
	case Random:
		return int(s.idx[s.draw(splitmix64(s.ctr.Add(1)*golden))])
	}
	r := splitmix64(s.ctr.Add(1) * golden)
	a := s.draw(r)
	b := a
	for try := 0; try < 4 && b == a; try++ {
		r = splitmix64(r + golden)
		b = s.draw(r)
	}
	if b == a {
		if b++; b == s.n {
			b = 0
		}
	}
	if load == nil {
		return int(s.idx[a])
	}
	ia, ib := s.idx[a], s.idx[b]
	la, lb := load(s.t.backends[ia].ID), load(s.t.backends[ib].ID)
	// lb/wb < la/wa, without division: lb·wa < la·wb in 128 bits.
	h1, l1 := bits.Mul64(lb, s.weight[a])
	h2, l2 := bits.Mul64(la, s.weight[b])
	if h1 < h2 || h1 == h2 && l1 < l2 {
		return int(ib)
	}
	return int(ia)
}

// search returns the candidate whose cumulative-weight interval holds p < W.
func (s *Selector) search(p uint64) int {
	lo, hi := 0, len(s.cum)-1
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if s.cum[mid] > p {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// draw returns a candidate drawn by weight with the random bits r.
func (s *Selector) draw(r uint64) int {
	k, _ := bits.Mul64(r, uint64(s.n))
	u, _ := bits.Mul64(splitmix64(r^golden), s.total)
	if u < s.thr[k] {
		return int(k)
	}
	return int(s.alias[k])
}

// aliasTable builds Walker's alias table (Vose's construction) in integers:
// candidate k holds w_k/g·n of n·W units, each column W units, so column k
// keeps k with probability thr[k]/W and gives alias[k] the rest.
func aliasTable(weight []uint64, g, total uint64) (thr []uint64, alias []uint16) {
	n := len(weight)
	thr = make([]uint64, n)
	alias = make([]uint16, n)
	scaled := make([]uint64, n)
	var small, large []int
	for k, w := range weight {
		scaled[k] = w / g * uint64(n) // < 2^32 · 2^16
		if scaled[k] < total {
			small = append(small, k)
		} else {
			large = append(large, k)
		}
	}
	for len(small) > 0 && len(large) > 0 {
		l := small[len(small)-1]
		small = small[:len(small)-1]
		h := large[len(large)-1]
		thr[l], alias[l] = scaled[l], uint16(h)
		scaled[h] -= total - scaled[l]
		if scaled[h] < total {
			large = large[:len(large)-1]
			small = append(small, h)
		}
	}
	for _, k := range large {
		thr[k], alias[k] = total, uint16(k)
	}
	for _, k := range small { // only by rounding, which integers rule out
		thr[k], alias[k] = total, uint16(k)
	}
	return thr, alias
}

// goldenStride returns the integer coprime to w nearest above w/φ: a
// multiplier whose multiples mod w spread as evenly as any.
func goldenStride(w uint64) uint64 {
	if w <= 2 {
		return 1
	}
	s := uint64(float64(w)*0.6180339887498949 + 0.5)
	for gcd(s, w) != 1 {
		s++
	}
	return s
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
