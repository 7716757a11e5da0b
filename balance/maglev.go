package balance

import (
	"cmp"
	"fmt"
	"math/bits"
	"slices"
)

// Maglev table sizes and the probe bound.
const (
	// DefaultSize is the Maglev table size used when size is 0 (as Envoy and
	// Katran): shares within one slot of the weights, so within 1% while
	// M > 100·N (~650 equal backends). Beyond the ideal 1/N, a backend
	// leaving moves a further 0.2% (N=10), 0.6% (N=100), 0.9% (N=500) of
	// keys; 655373 slots cut that to 0.06-0.33% (BenchmarkMaglevDisruption).
	DefaultSize = 65537
	// MaxSize is the largest Maglev table size (Envoy's limit).
	MaxSize = 5000011
	// MaxProbes bounds the slots [Table.LookupAvailable] reads before it
	// falls back to rendezvous hashing over the usable backends: the home
	// slot and the next 7. The 8 entries share a cache line or two. When
	// backends owning a fraction f of the slots are unusable, about f^8 of
	// the keys reach the O(N) fallback (f = 0.5: 0.4%; f = 0.9: 43%).
	MaxProbes = 8
)

// NewMaglev builds a Maglev table of size slots: the smallest prime at least
// size (0 means [DefaultSize]). It returns an error wrapping [ErrSize] when
// that exceeds [MaxSize] or is smaller than the number of backends, and the
// errors of [NewHRW] for an invalid backend set. backends is not retained.
//
// Construction follows the paper (Eisenbud et al., "Maglev", NSDI 2016, §3.4)
// with weights. Backend i, sorted by address, has the permutation
//
//	offset_i = backendHash(seed, saltOffset, addr_i) mod M
//	skip_i   = backendHash(seed, saltSkip, addr_i) mod (M-1) + 1
//	perm_i(j) = (offset_i + j·skip_i) mod M
//
// which visits every slot because M is prime. Backend i owns exactly q_i slots,
// its weight's share of M by the largest-remainder method: ⌊w_i·M/W⌋, plus one
// for the M − Σ⌊…⌋ backends with the largest remainders (ties to the lower
// index). Each claim takes the next free slot in the backend's permutation.
// With equal weights the claims are the paper's round robin, exactly. With
// unequal weights the turns are weighted: backend i's k-th claim
// (k = 0 … q_i−1) is due at virtual time (2k+1)/(2q_i), rounded down to a
// multiple of 1/M, claims run in time order and claims due together in index
// order. Every backend thus advances through its permutation at the same
// relative pace and none is left with the last, most contested slots (plain
// per-backend quotas in a round robin would leave them to the heaviest).
// Building costs O(M + N) plus the paper's O(M log M) expected probes.
//
// A key's home slot is ⌊key·M / 2^64⌋ (multiply-shift range reduction, as
// uniform as key mod M for the well-mixed affinity key, without a division).
// [Table.Lookup] returns its owner; [Table.LookupAvailable] probes forward
// from it.
func NewMaglev(seed uint64, backends []Backend, size uint32) (*Table, error) {
	m, err := maglevSize(size)
	if err != nil {
		return nil, fmt.Errorf("balance: maglev: %w", err)
	}
	t, err := newTable(Maglev, seed, backends)
	if err != nil {
		return nil, fmt.Errorf("balance: maglev: %w", err)
	}
	if uint64(len(t.backends)) > m {
		return nil, fmt.Errorf("balance: maglev: %d slots for %d backends: %w", m, len(t.backends), ErrSize)
	}
	t.m = m
	if t.backup == nil {
		t.slots = populate(seed, t.backends, m)
	} else {
		t.slots = populateTier(seed, t.backends, t.primary, m)
		t.bslots = populateTier(seed, t.backends, t.backup, m)
	}
	return t, nil
}

// populateTier fills m slots with the backends of bs in tier as populate
// does for them alone (so the tier's table does not depend on the other
// tier), each slot holding an index into bs.
func populateTier(seed uint64, bs []Backend, tier *Set, m uint64) []uint16 {
	var sub []Backend
	var idx []uint16
	for i := range bs {
		if tier.Has(i) {
			sub = append(sub, bs[i])
			idx = append(idx, uint16(i))
		}
	}
	slots := populate(seed, sub, m)
	for s, j := range slots {
		slots[s] = idx[j]
	}
	return slots
}

func maglevSize(size uint32) (uint64, error) {
	if size == 0 {
		return DefaultSize, nil
	}
	if size > MaxSize {
		return 0, fmt.Errorf("size %d above %d: %w", size, MaxSize, ErrSize)
	}
	return nextPrime(uint64(size)), nil
}

// slot maps a key to its home slot ⌊key·M / 2^64⌋: Lemire's multiply-shift
// range reduction ("Fast random integer generation in an interval", 2019).
// It is as uniform as key mod M for the well-mixed affinity key and costs one
// multiplication where a 64-bit division costs tens of cycles.
func (t *Table) slot(key uint64) uint64 {
	hi, _ := bits.Mul64(key, t.m)
	return hi
}

// maglevPick returns the first usable backend among the key's home slot in
// slots (a tier's table; mask is the tier) and the MaxProbes-1 slots after
// it, else the rendezvous winner among the usable backends of the tier.
func (t *Table) maglevPick(key uint64, slots []uint16, usable, mask *Set) int {
	s := t.slot(key)
	if usable == nil {
		return int(slots[s])
	}
	for range MaxProbes {
		if i := int(slots[s]); usable.Has(i) {
			return i
		}
		if s++; s == t.m {
			s = 0
		}
	}
	return t.hrwPick(key, usable, mask)
}

// quotas returns each backend's slot count: its share of m by weight, rounded
// by the largest-remainder method. The counts sum to m.
func quotas(bs []Backend, m uint64) []uint64 {
	var total uint64 // < 2^16 · 2^32
	for i := range bs {
		total += uint64(bs[i].Weight)
	}
	q := make([]uint64, len(bs))
	rem := make([]uint64, len(bs))
	left := m
	for i := range bs {
		p := uint64(bs[i].Weight) * m // < 2^32 · 2^23
		q[i], rem[i] = p/total, p%total
		left -= q[i]
	}
	if left > 0 { // left < len(bs)
		order := make([]int, len(bs))
		for i := range order {
			order[i] = i
		}
		slices.SortFunc(order, func(a, b int) int {
			if c := cmp.Compare(rem[b], rem[a]); c != 0 {
				return c
			}
			return cmp.Compare(a, b)
		})
		for _, i := range order[:left] {
			q[i]++
		}
	}
	return q
}

// populate fills the m slots as NewMaglev describes.
func populate(seed uint64, bs []Backend, m uint64) []uint16 {
	n := len(bs)
	next := make([]uint64, n) // the next slot of i's permutation to try
	skip := make([]uint64, n)
	equal := true
	for i := range bs {
		next[i] = backendHash(seed, saltOffset, bs[i].Addr) % m
		skip[i] = backendHash(seed, saltSkip, bs[i].Addr)%(m-1) + 1
		equal = equal && bs[i].Weight == bs[0].Weight
	}
	slots := make([]uint16, m)
	// used marks the filled slots: the probes read this bitmap (8 KiB for
	// the default M, cache-resident) rather than the table.
	used := make([]uint64, (m+63)/64)
	// claim gives backend i the next free slot of its permutation, which
	// exists while the table is not full because m is prime.
	claim := func(i int32) {
		c, sk := next[i], skip[i]
		for used[c>>6]&(1<<(c&63)) != 0 {
			if c += sk; c >= m {
				c -= m
			}
		}
		used[c>>6] |= 1 << (c & 63)
		slots[c] = uint16(i)
		if c += sk; c >= m {
			c -= m
		}
		next[i] = c
	}

	if equal { // the paper's loop: one claim per backend per round
		filled := uint64(0)
		for {
			for i := range int32(n) {
				claim(i)
				if filled++; filled == m {
					return slots
				}
			}
		}
	}

	// Weighted turns on a calendar of m ticks. Backend i's k-th claim is due
	// at tick ⌊(2k+1)·m / 2q_i⌋, tracked incrementally as tick and rem (the
	// remainder of the division); consecutive claims are at least one tick
	// apart because q_i <= m, and the last is due before tick m. Each tick's
	// backends claim in index order.
	quota := quotas(bs, m)
	type turn struct {
		tick, rem, twoQ, stepQ, stepR, left uint64
	}
	turns := make([]turn, n)
	head := make([]int32, m) // head[t]: a backend due at tick t, or -1
	for t := range head {
		head[t] = -1
	}
	link := make([]int32, n) // the next backend due at the same tick
	for i := int32(n) - 1; i >= 0; i-- {
		q := quota[i]
		if q == 0 {
			continue
		}
		tu := &turns[i]
		*tu = turn{tick: m / (2 * q), rem: m % (2 * q), twoQ: 2 * q, stepQ: m / q, stepR: 2 * (m % q), left: q}
		link[i], head[tu.tick] = head[tu.tick], i
	}
	due := make([]int32, 0, n)
	for t := range head {
		due = due[:0]
		for i := head[t]; i >= 0; i = link[i] {
			due = append(due, i)
		}
		for a := 1; a < len(due); a++ { // insertion sort: a tick has few
			for b := a; b > 0 && due[b] < due[b-1]; b-- {
				due[b], due[b-1] = due[b-1], due[b]
			}
		}
		for _, i := range due {
			claim(i)
			tu := &turns[i]
			if tu.left--; tu.left == 0 {
				continue
			}
			tu.tick += tu.stepQ
			if tu.rem += tu.stepR; tu.rem >= tu.twoQ {
				tu.rem -= tu.twoQ
				tu.tick++
			}
			link[i], head[tu.tick] = head[tu.tick], i
		}
	}
	return slots
}

// nextPrime returns the smallest prime at least max(n, 2).
func nextPrime(n uint64) uint64 {
	if n <= 2 {
		return 2
	}
	if n%2 == 0 {
		n++
	}
	for ; !isPrime(n); n += 2 {
	}
	return n
}

func isPrime(n uint64) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	for d := uint64(3); d*d <= n; d += 2 {
		if n%d == 0 {
			return false
		}
	}
	return true
}
