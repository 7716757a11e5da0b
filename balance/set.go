package balance

import "math/bits"

// Set is a set of backend indices of one [Table], one bit per backend: the
// backends a shard may send new flows to (up, not draining). The zero Set is
// empty. A Set is not safe for concurrent mutation; lookups only read it.
type Set struct {
	words []uint64
}

// NewSet returns an empty set with room for indices below n.
func NewSet(n int) *Set {
	return &Set{words: make([]uint64, (n+63)/64)}
}

// Add puts i in the set, growing it if needed. i must not be negative.
func (s *Set) Add(i int) {
	w := i >> 6
	if w >= len(s.words) {
		s.words = append(s.words, make([]uint64, w+1-len(s.words))...)
	}
	s.words[w] |= 1 << (uint(i) & 63)
}

// Remove takes i out of the set.
func (s *Set) Remove(i int) {
	if w := i >> 6; i >= 0 && w < len(s.words) {
		s.words[w] &^= 1 << (uint(i) & 63)
	}
}

// Has reports whether i is in the set.
func (s *Set) Has(i int) bool {
	w := uint(i) >> 6
	return w < uint(len(s.words)) && s.words[w]&(1<<(uint(i)&63)) != 0
}

// Len returns the number of indices in the set.
func (s *Set) Len() int {
	n := 0
	for _, w := range s.words {
		n += bits.OnesCount64(w)
	}
	return n
}

// intersects reports whether s and o share an index.
func (s *Set) intersects(o *Set) bool {
	for i, w := range s.words[:min(len(s.words), len(o.words))] {
		if w&o.words[i] != 0 {
			return true
		}
	}
	return false
}

// Clear empties the set, keeping its storage.
func (s *Set) Clear() { clear(s.words) }
