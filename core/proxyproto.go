package core

import (
	"encoding/binary"
	"net/netip"
)

// PROXY protocol v2 (haproxy.org/download/2.9/doc/proxy-protocol.txt, section
// 2.2) for datagrams:
//
//	0..11  signature 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
//	12     0x21: version 2, command PROXY
//	13     0x12 AF_INET+DGRAM, 0x22 AF_INET6+DGRAM, 0x00 AF_UNSPEC
//	14..15 address block length, big-endian: 12, 36 or 0
//	16..   source IP, destination IP, source port, destination port
const (
	ProxyHeaderLenIPv4   = 28
	ProxyHeaderLenIPv6   = 52
	ProxyHeaderLenUnspec = 16
	// ProxyHeaderMaxLen is the headroom a shell reserves to prepend a header
	// in place.
	ProxyHeaderMaxLen = ProxyHeaderLenIPv6
)

var proxySignature = [12]byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

// AppendProxyHeader appends a PROXY v2 DGRAM header for a datagram from src
// addressed to dst and returns the extended slice. IPv4-mapped addresses count
// as IPv4; when the families differ (or an address is invalid) the header is
// AF_UNSPEC with no addresses, which receivers must accept.
func AppendProxyHeader(b []byte, src, dst netip.AddrPort) []byte {
	sa, da := src.Addr().Unmap(), dst.Addr().Unmap()
	b = append(b, proxySignature[:]...)
	b = append(b, 0x21)
	switch {
	case sa.Is4() && da.Is4():
		b = append(b, 0x12, 0, 12)
		s4, d4 := sa.As4(), da.As4()
		b = append(b, s4[:]...)
		b = append(b, d4[:]...)
	case sa.Is6() && da.Is6():
		b = append(b, 0x22, 0, 36)
		s16, d16 := sa.As16(), da.As16()
		b = append(b, s16[:]...)
		b = append(b, d16[:]...)
	default:
		return append(b, 0x00, 0, 0)
	}
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}
