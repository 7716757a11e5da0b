package core

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// The affinity hash is a published contract: every shard, every node started
// with the same seed, and the eBPF steering program must compute the same value
// for the same client, so it is written to be easy to reproduce in C.
//
//	h := 0xcbf29ce484222325                  // FNV-1a 64 offset basis
//	for each byte b of:
//	    seed as 8 bytes, little-endian;
//	    the client IP: 4 bytes for IPv4 (IPv4-mapped IPv6 is unmapped first),
//	        16 bytes for IPv6, in network order;
//	    with AffinityIPPort (and AffinityDatagram and AffinityQUIC): the
//	        client port, 2 bytes, big-endian;
//	do  h ^= b; h *= 0x100000001b3             // FNV-1a 64 prime
//	h ^= h >> 30; h *= 0xbf58476d1ce4e5b9      // splitmix64 finaliser
//	h ^= h >> 27; h *= 0x94d049bb133111eb
//	h ^= h >> 31
//
// Test vectors are in testdata/affinity-hash.txt.
const (
	fnvOffset64 = 0xcbf29ce484222325
	fnvPrime64  = 0x100000001b3
)

// AffinityHash returns the affinity key of client under mode with seed, as
// documented above. It allocates nothing. [AffinityDatagram] gives the
// ip-port key here; the manager varies it per admitted flow.
func AffinityHash(seed uint64, client netip.AddrPort, mode Affinity) uint64 {
	return affinityFrom(fnvSeeded(seed), client, mode)
}

// fnvSeeded returns the FNV-1a state after the seed bytes, which the manager
// computes once.
func fnvSeeded(seed uint64) uint64 {
	h := uint64(fnvOffset64)
	for i := 0; i < 8; i++ {
		h ^= seed >> (8 * i) & 0xff
		h *= fnvPrime64
	}
	return h
}

func affinityFrom(h uint64, client netip.AddrPort, mode Affinity) uint64 {
	ip := client.Addr().Unmap()
	if ip.Is4() {
		b := ip.As4()
		for _, c := range b {
			h ^= uint64(c)
			h *= fnvPrime64
		}
	} else {
		b := ip.As16()
		for _, c := range b {
			h ^= uint64(c)
			h *= fnvPrime64
		}
	}
	if mode == AffinityIPPort || mode == AffinityDatagram || mode == AffinityQUIC {
		p := client.Port()
		h ^= uint64(p >> 8)
		h *= fnvPrime64
		h ^= uint64(p & 0xff)
		h *= fnvPrime64
	}
	return splitmix64(h)
}

// Mix64 is the finaliser the affinity hash ends with (Steele, Lea and
// Flood's SplitMix64), exported so that other parts of the contract (backend
// hashing in balance) use the very same function.
func Mix64(h uint64) uint64 { return splitmix64(h) }

// splitmix64 is the finaliser of Steele, Lea and Flood's SplitMix64.
func splitmix64(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// addr is a pointer-free socket address for the flow table. netip.AddrPort
// holds a pointer (its zone handle); keeping flows pointer-free keeps a table of
// a million flows out of the garbage collector's way. Zones are not kept.
type addr struct {
	ip   [16]byte // IPv4 addresses in IPv4-mapped form
	port uint16
	is4  bool // the address was a plain IPv4 address (not IPv4-mapped IPv6)
}

func toAddr(ap netip.AddrPort) addr {
	a := ap.Addr()
	return addr{ip: a.As16(), port: ap.Port(), is4: a.Is4()}
}

// set stores ap in a exactly as toAddr does, writing each field in place.
func (a *addr) set(ap netip.AddrPort) {
	ip := ap.Addr()
	a.port = ap.Port()
	a.is4 = ip.Is4()
	if a.is4 {
		// As4's result is one 4-byte store, where As16's two 8-byte stores
		// read back with one 16-byte load cannot be store-forwarded. Bytes
		// 8..15 are 00 00 ff ff and the address, written as one word
		// because the hash reads them as one.
		v4 := ip.As4()
		binary.LittleEndian.PutUint64(a.ip[:8], 0)
		binary.LittleEndian.PutUint64(a.ip[8:], 0xffff0000|uint64(binary.LittleEndian.Uint32(v4[:]))<<32)
		return
	}
	a.ip = ip.As16()
}

// isValidClient reports whether a can be a client's source: a port, and an
// address that is neither unspecified (or the zero Addr) nor multicast.
func (a *addr) isValidClient() bool {
	if a.port == 0 {
		return false
	}
	hi := binary.BigEndian.Uint64(a.ip[:8])
	lo := binary.BigEndian.Uint64(a.ip[8:])
	if hi == 0 && lo>>32 == 0xffff { // IPv4 (plain or mapped)
		v4 := uint32(lo)
		return v4 != 0 && v4>>28 != 0xe // not 0.0.0.0, not 224.0.0.0/4
	}
	return (hi|lo) != 0 && a.ip[0] != 0xff // not ::, not ff00::/8
}

func (a *addr) addrPort() netip.AddrPort {
	if a.port == 0 && !a.is4 && a.ip == ([16]byte{}) {
		return netip.AddrPort{} // the shell gave no address
	}
	if a.is4 {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(a.ip[12:16])), a.port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(a.ip), a.port)
}

// flowKey is what the flow table is keyed by: listener, client, local address.
type flowKey struct {
	client, local addr
	listener      ListenerID
}

// equal compares keys field by field, which the compiler turns into a few
// word compares (== on the whole 42-byte struct calls a generic memequal).
func (k *flowKey) equal(o *flowKey) bool {
	return k.client.ip == o.client.ip && k.local.ip == o.local.ip &&
		k.client.port == o.client.port && k.local.port == o.local.port &&
		k.listener == o.listener && k.client.is4 == o.client.is4 && k.local.is4 == o.local.is4
}

// tableSecrets key the flow table's hash so that clients cannot choose
// addresses that collide.
type tableSecrets [4]uint64

func newTableSecrets(seed uint64) tableSecrets {
	var s tableSecrets
	x := seed ^ 0x6a09e667f3bcc908
	for i := range s {
		x += 0x9e3779b97f4a7c15
		s[i] = splitmix64(x) | 1
	}
	return s
}

// hash mixes the key with 64x64->128 multiplies (as wyhash does): a few
// nanoseconds for the 38 bytes of a key.
func (s *tableSecrets) hash(k *flowKey) uint64 {
	c0 := binary.LittleEndian.Uint64(k.client.ip[0:8])
	c1 := binary.LittleEndian.Uint64(k.client.ip[8:16])
	l0 := binary.LittleEndian.Uint64(k.local.ip[0:8])
	l1 := binary.LittleEndian.Uint64(k.local.ip[8:16])
	ports := uint64(k.client.port) | uint64(k.local.port)<<16 | uint64(k.listener)<<32
	h := mum(c0^s[0], c1^s[1])
	h ^= mum(l0^s[2], l1^s[3])
	return mum(h^s[1], ports^s[0])
}

func mum(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}
