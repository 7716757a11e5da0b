package balance

import (
	"encoding/binary"
	"hash/fnv"
)

// Fingerprint returns a 64-bit FNV-1a digest of everything that decides
// which backend t picks for a key: the algorithm, the seed, the Maglev table
// size and each backend's address, weight and tier (primary or backup), in
// address order. Backend IDs and the order the backends were given in do not
// enter, as they do not change a pick.
//
// Two Maglev or HRW tables with the same fingerprint pick the same backend
// for every key and usable set (barring a 64-bit hash collision): processes
// that cannot share state, such as the nodes of a scale-out deployment
// behind ECMP, compare fingerprints to check that they agree. For the other
// algorithms equal fingerprints mean equal backend sets only: their picks
// depend on each process's own counter.
func (t *Table) Fingerprint() uint64 {
	h := fnv.New64a()
	var b [26]byte
	b[0] = byte(t.alg)
	binary.BigEndian.PutUint64(b[1:], t.seed)
	binary.BigEndian.PutUint64(b[9:], t.m)
	binary.BigEndian.PutUint32(b[17:], uint32(len(t.backends)))
	_, _ = h.Write(b[:21])
	for _, be := range t.backends {
		a := normAddr(be.Addr)
		ip := a.Addr().As16()
		copy(b[:16], ip[:])
		binary.BigEndian.PutUint16(b[16:], a.Port())
		binary.BigEndian.PutUint32(b[18:], be.Weight)
		b[22] = 0
		if be.Backup {
			b[22] = 1
		}
		_, _ = h.Write(b[:23])
	}
	return h.Sum64()
}
