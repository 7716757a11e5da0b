package balance

import (
	"net/netip"

	"github.com/fastudp/fastudp/core"
)

// testBackends returns n backends 10.0.x.y:53+i with weight w(i) (1 if nil),
// in an order that is not address order.
func testBackends(n int, w func(i int) uint32) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		j := n - 1 - i
		weight := uint32(1)
		if w != nil {
			weight = w(i)
		}
		bs[i] = Backend{
			ID:     core.BackendID(i + 1),
			Addr:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(j >> 8), byte(j)}), uint16(53+i)),
			Weight: weight,
		}
	}
	return bs
}

// key returns the i-th test key: a well-mixed 64-bit value, as core.AffinityHash
// produces.
func key(i int) uint64 { return splitmix64(uint64(i) + 0x9e3779b97f4a7c15) }

// without returns bs minus element r.
func without(bs []Backend, r int) []Backend {
	out := append([]Backend(nil), bs[:r]...)
	return append(out, bs[r+1:]...)
}

// slotAddrs returns the backend address of every Maglev slot.
func slotAddrs(t *Table) []netip.AddrPort {
	out := make([]netip.AddrPort, len(t.slots))
	for s, i := range t.slots {
		out[s] = t.backends[i].Addr
	}
	return out
}

// slotCounts returns the number of slots each backend owns, by index.
func slotCounts(t *Table) []int {
	c := make([]int, len(t.backends))
	for _, i := range t.slots {
		c[i]++
	}
	return c
}
