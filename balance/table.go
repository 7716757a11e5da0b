package balance

import (
	"fmt"
	"net/netip"
)

// Algorithm names a load-balancing policy.
type Algorithm uint8

// Load-balancing policies. Maglev and HRW are consistent: a key's backend is a
// pure function of the table, the key and the usable set, the same in every
// shard and on every node. RoundRobin, Random and P2C ignore the key: they
// need a [Selector] (one per usable set) holding their cursor, and a client's
// flows may go to different backends.
const (
	// Maglev is Google's consistent hashing with a lookup table (Eisenbud et
	// al., NSDI 2016): O(1) lookup, near-minimal disruption.
	Maglev Algorithm = iota + 1
	// HRW is weighted rendezvous (highest random weight) hashing: O(N)
	// lookup, minimal disruption.
	HRW
	// RoundRobin is smooth weighted round robin: every W consecutive picks
	// give each usable backend exactly its weight's share (W is the sum of
	// the weights divided by their greatest common divisor), interleaved
	// (see [Selector]).
	RoundRobin
	// Random is weighted random: each pick is an independent draw in
	// proportion to the weights (Walker's alias method, O(1)).
	Random
	// P2C is power of two choices: two distinct usable backends drawn at
	// random by weight, and the one with the fewer live flows per unit of
	// weight wins.
	P2C
)

var algNames = [...]string{Maglev: "maglev", HRW: "hrw", RoundRobin: "rr", Random: "random", P2C: "p2c"}

// String returns the name ParseAlgorithm accepts.
func (a Algorithm) String() string {
	if a >= Maglev && int(a) < len(algNames) {
		return algNames[a]
	}
	return fmt.Sprintf("algorithm(%d)", uint8(a))
}

// Consistent reports whether the algorithm maps a key to the same backend in
// every shard and node (Maglev and HRW).
func (a Algorithm) Consistent() bool { return a == Maglev || a == HRW }

// ParseAlgorithm parses "maglev", "hrw", "rr", "random" or "p2c".
func ParseAlgorithm(s string) (Algorithm, error) {
	for a := Maglev; int(a) < len(algNames); a++ {
		if algNames[a] == s {
			return a, nil
		}
	}
	return 0, fmt.Errorf("unknown load-balancing algorithm %q (want maglev, hrw, rr, random or p2c)", s)
}

// Table chooses backends for affinity keys. It is immutable once built and may
// be shared read-only by any number of goroutines. The zero Table has no
// backends and every lookup on it fails.
//
// Backend indices (in [Table.Backend], [Table.IndexOf] and [Set]) refer to the
// table's backends sorted by address; they are stable for the life of the
// table and may differ between tables.
//
// # Backups
//
// Backends marked [Backend.Backup] form a second tier: a lookup chooses among
// the usable primaries, and among the usable backups only when no primary is
// usable. Maglev builds one lookup table over the primaries (the same as a
// table without the backups, so adding or removing a backup moves no key) and
// one over the backups; HRW scores only the tier's backends.
type Table struct {
	alg      Algorithm
	seed     uint64
	backends []Backend // sorted by normalised address
	// primary and backup are the two tiers' indices; both nil when the
	// table has no backup, or only backups (then all are primaries).
	primary, backup *Set
	// hrw[i] is backendHash(seed, saltHRW, backends[i].Addr).
	hrw []uint64
	// weight[i] is float64(backends[i].Weight); nil when all weights are
	// equal, which lets HRW compare hashes without logarithms.
	weight []float64
	// slots is the Maglev lookup table of M entries over the primaries,
	// each a backend index; nil for the other algorithms. bslots is the
	// one over the backups, nil when there are none.
	slots  []uint16
	bslots []uint16
	m      uint64
}

// New builds a table for alg. size is the Maglev table size (see [NewMaglev])
// and is ignored by the other algorithms. A table of RoundRobin, Random or P2C
// holds the backends for a [Selector]; its own lookups ([Table.Lookup],
// [Table.Pick]) answer by rendezvous hashing, as HRW's do.
func New(alg Algorithm, seed uint64, backends []Backend, size uint32) (*Table, error) {
	switch alg {
	case Maglev:
		return NewMaglev(seed, backends, size)
	case HRW:
		return NewHRW(seed, backends)
	case RoundRobin, Random, P2C:
		t, err := newTable(alg, seed, backends)
		if err != nil {
			return nil, fmt.Errorf("balance: %v: %w", alg, err)
		}
		return t, nil
	}
	return nil, fmt.Errorf("balance: %v has no table", alg)
}

// NewHRW builds a weighted rendezvous table. It returns an error wrapping
// [ErrNoBackends], [ErrZeroWeight], [ErrInvalidAddr], [ErrDuplicateBackend] or
// [ErrTooManyBackends] when backends is not a valid set. backends is not
// retained.
func NewHRW(seed uint64, backends []Backend) (*Table, error) {
	t, err := newTable(HRW, seed, backends)
	if err != nil {
		return nil, fmt.Errorf("balance: hrw: %w", err)
	}
	return t, nil
}

func newTable(alg Algorithm, seed uint64, backends []Backend) (*Table, error) {
	bs, err := sortedBackends(backends)
	if err != nil {
		return nil, err
	}
	t := &Table{alg: alg, seed: seed, backends: bs, hrw: make([]uint64, len(bs))}
	equal := true
	nb := 0
	for i := range bs {
		t.hrw[i] = backendHash(seed, saltHRW, bs[i].Addr)
		equal = equal && bs[i].Weight == bs[0].Weight
		if bs[i].Backup {
			nb++
		}
	}
	if nb > 0 && nb < len(bs) {
		t.primary, t.backup = NewSet(len(bs)), NewSet(len(bs))
		for i := range bs {
			if bs[i].Backup {
				t.backup.Add(i)
			} else {
				t.primary.Add(i)
			}
		}
	}
	if !equal {
		t.weight = make([]float64, len(bs))
		for i := range bs {
			t.weight[i] = float64(bs[i].Weight)
		}
	}
	return t, nil
}

// Algorithm returns the table's algorithm.
func (t *Table) Algorithm() Algorithm { return t.alg }

// Seed returns the seed the table was built with.
func (t *Table) Seed() uint64 { return t.seed }

// Size returns the number of Maglev slots M, or 0 for HRW.
func (t *Table) Size() int { return len(t.slots) }

// Len returns the number of backends.
func (t *Table) Len() int { return len(t.backends) }

// Backend returns backend i (0 <= i < Len) in address order.
func (t *Table) Backend(i int) Backend { return t.backends[i] }

// Backends returns a copy of the backends in address order.
func (t *Table) Backends() []Backend { return append([]Backend(nil), t.backends...) }

// IndexOf returns the index of the backend with address addr (compared
// unmapped and without zone), for building a [Set].
func (t *Table) IndexOf(addr netip.AddrPort) (int, bool) {
	a := normAddr(addr)
	lo, hi := 0, len(t.backends)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if normAddr(t.backends[mid].Addr).Compare(a) < 0 {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < len(t.backends) && normAddr(t.backends[lo].Addr) == a {
		return lo, true
	}
	return -1, false
}

// All returns a new [Set] holding every backend of the table.
func (t *Table) All() *Set {
	s := NewSet(len(t.backends))
	for i := range t.backends {
		s.Add(i)
	}
	return s
}

// Lookup returns the backend for key, treating every backend as usable. It
// fails only on the zero Table. It allocates nothing; it is O(1) for Maglev
// and O(N) for HRW.
func (t *Table) Lookup(key uint64) (Backend, bool) {
	i := t.Pick(key, nil)
	if i < 0 {
		return Backend{}, false
	}
	return t.backends[i], true
}

// LookupAvailable returns the backend for key among the backends in usable
// (indices into this table; nil means all). It fails when usable holds none of
// the table's backends. For Maglev the cost is at most [MaxProbes] slot reads
// plus, when none of those slots is usable, one O(N) rendezvous scoring of the
// usable backends; for HRW it is O(N). It allocates nothing.
//
// The result is a pure function of (table, key, usable): a key whose Maglev
// slot (or HRW winner) is usable gets that backend, and changing usable moves
// only keys whose answer involved a backend that changed state.
func (t *Table) LookupAvailable(key uint64, usable *Set) (Backend, bool) {
	i := t.Pick(key, usable)
	if i < 0 {
		return Backend{}, false
	}
	return t.backends[i], true
}

// Pick is LookupAvailable returning the backend's index, or -1 when none is
// usable. With backups, it chooses among the usable primaries, or, when none
// is usable, among the usable backups; deciding which costs a scan of usable's
// words (one per 64 backends), which a [Selector] does once per usable set.
func (t *Table) Pick(key uint64, usable *Set) int {
	if usable == nil && t.slots != nil { // the O(1) Maglev lookup
		return int(t.slots[t.slot(key)])
	}
	mask, slots := t.tier(usable)
	if slots != nil {
		return t.maglevPick(key, slots, usable, mask)
	}
	return t.hrwPick(key, usable, mask)
}

// tier returns the backends a lookup with usable chooses among (nil: all)
// and their Maglev slots: the primaries while one of them is usable, else
// the backups.
func (t *Table) tier(usable *Set) (*Set, []uint16) {
	if t.backup == nil || usable == nil || usable.intersects(t.primary) {
		return t.primary, t.slots
	}
	return t.backup, t.bslots
}

// IsBackup reports whether backend i is in the backup tier: marked
// [Backend.Backup] in a table that also has primaries.
func (t *Table) IsBackup(i int) bool { return t.backup != nil && t.backup.Has(i) }
