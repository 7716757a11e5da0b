package batchio

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Control messages and socket addresses are read and written as bytes in
// fixed per-batch buffers: unix.ParseSocketControlMessage and unix.Sockaddr
// allocate for every datagram, and byte slices keep every access bounds
// checked, which matters for a parser fed by the kernel (and by the fuzzer).

// sizeofSizeT is sizeof(size_t), the width of cmsg_len and the alignment
// unit of CMSG_ALIGN (sizeof(long) in include/linux/socket.h).
const sizeofSizeT = int(unsafe.Sizeof(uintptr(0)))

// cmsgHdrLen is CMSG_LEN(0), where the data of a control message starts:
//
//	struct cmsghdr {
//		size_t cmsg_len;   // offset 0: header + data, unaligned
//		int    cmsg_level; // offset sizeof(size_t)
//		int    cmsg_type;  // offset sizeof(size_t)+4
//	};                     // 16 bytes on 64-bit, 12 on 32-bit
const cmsgHdrLen = (unix.SizeofCmsghdr + sizeofSizeT - 1) &^ (sizeofSizeT - 1)

// cmsgAlign is CMSG_ALIGN.
func cmsgAlign(n int) int { return (n + sizeofSizeT - 1) &^ (sizeofSizeT - 1) }

// cmsgSpace is CMSG_SPACE: the room one control message with n data bytes
// takes, padding included.
func cmsgSpace(n int) int { return cmsgHdrLen + cmsgAlign(n) }

// Control buffer sizes per message, as constants (CMSG_SPACE spelled out;
// a test checks them against unix.CmsgSpace). The kernel sets MSG_CTRUNC
// and drops whatever does not fit, so recvControlLen covers every message a
// socket from [ListenUDP] can get at once (a dual-stack socket gets
// IPV6_PKTINFO and IP_TOS for IPv4 datagrams) plus IP_PKTINFO in case the
// caller enabled it too. On 64-bit: 40 + 32 + 4*24 = 168 bytes.
const (
	spaceInet6Pktinfo = cmsgHdrLen + (unix.SizeofInet6Pktinfo+sizeofSizeT-1)&^(sizeofSizeT-1)
	spaceInet4Pktinfo = cmsgHdrLen + (unix.SizeofInet4Pktinfo+sizeofSizeT-1)&^(sizeofSizeT-1)
	spaceInt          = cmsgHdrLen + (4+sizeofSizeT-1)&^(sizeofSizeT-1)
	spaceUint16       = cmsgHdrLen + (2+sizeofSizeT-1)&^(sizeofSizeT-1)

	recvControlLen = spaceInet6Pktinfo + // IPV6_PKTINFO
		spaceInet4Pktinfo + // IP_PKTINFO
		spaceInt + // IP_TOS (1 byte) or IPV6_TCLASS (int)
		spaceInt + // the other of the two
		spaceInt + // UDP_GRO (int)
		spaceInt // SO_RXQ_OVFL (u32)
	// sendControlLen covers what putControl writes: one PKTINFO, IP_TOS
	// and IPV6_TCLASS (both when the family is unknown) and UDP_SEGMENT.
	sendControlLen = spaceInet6Pktinfo + 2*spaceInt + spaceUint16
)

// rxInfo is what parseControl found besides the fields it sets in Message.
type rxInfo struct {
	drops    uint32 // SO_RXQ_OVFL: cumulative sk_drops of the socket
	hasDrops bool
}

// parseControl walks every control message in b (the first msg_controllen
// bytes of a receive control buffer) and fills m.Local, m.IfIndex, m.TOS and
// m.SegmentSize. It walks them all: Tailscale once re-parsed the first one
// and lost the GRO size whenever SO_RXQ_OVFL came first (tailscale#17835).
// It stops at the first malformed header and never reads outside b.
func parseControl(b []byte, m *Message) (ri rxInfo) {
	ne := binary.NativeEndian
	for len(b) >= cmsgHdrLen {
		var l uint64
		if sizeofSizeT == 8 {
			l = ne.Uint64(b)
		} else {
			l = uint64(ne.Uint32(b))
		}
		if l < uint64(cmsgHdrLen) || l > uint64(len(b)) {
			return ri
		}
		level := int(int32(ne.Uint32(b[sizeofSizeT:])))
		typ := int(int32(ne.Uint32(b[sizeofSizeT+4:])))
		data := b[cmsgHdrLen:l]
		switch {
		case level == unix.SOL_IP && typ == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo { int ipi_ifindex; /* 0 */
			//   struct in_addr ipi_spec_dst; /* 4: route's local address */
			//   struct in_addr ipi_addr; /* 8: header destination */ };
			m.IfIndex = int(int32(ne.Uint32(data)))
			m.Local = netip.AddrFrom4([4]byte(data[8:12]))
		case level == unix.SOL_IPV6 && typ == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			// struct in6_pktinfo { struct in6_addr ipi6_addr; /* 0 */
			//   int ipi6_ifindex; /* 16 */ };
			// IPv4 datagrams on a dual-stack socket carry a v4-mapped address.
			m.Local = netip.AddrFrom16([16]byte(data[0:16])).Unmap()
			m.IfIndex = int(int32(ne.Uint32(data[16:])))
		case level == unix.SOL_IP && typ == unix.IP_TOS && len(data) >= 1:
			// ip_cmsg_recv_tos puts the one-byte header field.
			m.TOS = data[0]
		case level == unix.SOL_IPV6 && typ == unix.IPV6_TCLASS && len(data) >= 4:
			// ip6_datagram_recv_specific_ctl puts an int.
			m.TOS = uint8(ne.Uint32(data))
		case level == unix.SOL_UDP && typ == unix.UDP_GRO && len(data) >= 4:
			// udp_cmsg_recv puts an int (the send side, UDP_SEGMENT, takes
			// a u16); reading only two bytes is wrong on big-endian.
			if s := int32(ne.Uint32(data)); s > 0 {
				m.SegmentSize = int(s)
			}
		case level == unix.SOL_SOCKET && typ == unix.SO_RXQ_OVFL && len(data) >= 4:
			// sock_recv_drops puts a u32, and only once sk_drops is non-zero.
			ri.drops, ri.hasDrops = ne.Uint32(data), true
		}
		next := cmsgAlign(int(l))
		if next >= len(b) {
			break
		}
		b = b[next:]
	}
	return ri
}

// putCmsg writes a control message header for dataLen bytes at the start
// of b and returns its data area and the space it takes (CMSG_SPACE).
// cmsg_len is CMSG_LEN(dataLen), which the kernel checks exactly for
// IP_PKTINFO, IPV6_TCLASS and UDP_SEGMENT.
func putCmsg(b []byte, level, typ, dataLen int) (data []byte, space int) {
	ne := binary.NativeEndian
	l := cmsgHdrLen + dataLen
	space = cmsgSpace(dataLen)
	clear(b[:space])
	if sizeofSizeT == 8 {
		ne.PutUint64(b, uint64(l))
	} else {
		ne.PutUint32(b, uint32(l))
	}
	ne.PutUint32(b[sizeofSizeT:], uint32(int32(level)))
	ne.PutUint32(b[sizeofSizeT+4:], uint32(int32(typ)))
	return b[cmsgHdrLen:l], space
}

// putControl writes the send control messages m asks for into b, which
// must hold sendControlLen bytes, and returns the length used (0: none).
//
// Which family's messages to write follows the destination: an IPv4 (or
// v4-mapped) destination goes through udp_sendmsg, which reads SOL_IP
// messages (and ignores SOL_IPV6 ones except a v4-mapped IPV6_PKTINFO,
// ip_cmsg_send in net/ipv4/ip_sockglue.c), even on an AF_INET6 socket;
// an IPv6 destination goes through ip6_datagram_send_ctl, which ignores
// SOL_IP. With no destination (connected socket) the family of Local is
// used, and with neither both TOS messages are written: each path ignores
// the other's.
func putControl(b []byte, m *Message) int {
	ne := binary.NativeEndian
	fam := familyOf(m.Addr.Addr())
	if fam == 0 {
		fam = familyOf(m.Local)
	}
	off := 0
	if m.Local.IsValid() {
		if l := m.Local.Unmap(); l.Is4() {
			// in_pktinfo on send: ipi_spec_dst is the source address,
			// ipi_ifindex the outgoing interface; ipi_addr is ignored.
			d, n := putCmsg(b[off:], unix.SOL_IP, unix.IP_PKTINFO, unix.SizeofInet4Pktinfo)
			ne.PutUint32(d, uint32(int32(m.IfIndex)))
			a := l.As4()
			copy(d[4:8], a[:])
			off += n
		} else {
			d, n := putCmsg(b[off:], unix.SOL_IPV6, unix.IPV6_PKTINFO, unix.SizeofInet6Pktinfo)
			a := l.As16()
			copy(d[0:16], a[:])
			ne.PutUint32(d[16:], uint32(int32(m.IfIndex)))
			off += n
		}
	}
	if m.TOS != 0 {
		// Both take an int; IP_TOS would also accept one byte.
		if fam != 6 {
			d, n := putCmsg(b[off:], unix.SOL_IP, unix.IP_TOS, 4)
			ne.PutUint32(d, uint32(m.TOS))
			off += n
		}
		if fam != 4 {
			d, n := putCmsg(b[off:], unix.SOL_IPV6, unix.IPV6_TCLASS, 4)
			ne.PutUint32(d, uint32(m.TOS))
			off += n
		}
	}
	if m.SegmentSize != 0 {
		if m.SegmentSize < 0 || m.SegmentSize > 0xffff {
			// The kernel field is a u16; anything else is a caller bug.
			panic("batchio: Message.SegmentSize out of range")
		}
		// __udp_cmsg_send insists on exactly CMSG_LEN(sizeof(__u16)).
		d, n := putCmsg(b[off:], unix.SOL_UDP, unix.UDP_SEGMENT, 2)
		ne.PutUint16(d, uint16(m.SegmentSize))
		off += n
	}
	return off
}

// familyOf returns 4 or 6 for a valid address (v4-mapped counts as 4) and
// 0 for the invalid Addr.
func familyOf(a netip.Addr) int {
	switch {
	case !a.IsValid():
		return 0
	case a.Is4() || a.Is4In6():
		return 4
	}
	return 6
}

// sockaddrLen is the room for the largest address: sizeof(sockaddr_in6).
const sockaddrLen = unix.SizeofSockaddrInet6

// putSockaddr encodes ap into b and returns the length to pass as
// msg_namelen. IPv4 and v4-mapped addresses become a sockaddr_in, which
// udpv6_sendmsg also accepts on a dual-stack AF_INET6 socket.
//
//	struct sockaddr_in {
//		sa_family_t    sin_family; // 0: native u16
//		in_port_t      sin_port;   // 2: big-endian
//		struct in_addr sin_addr;   // 4
//		char           sin_zero[8];
//	};                             // 16 bytes
//	struct sockaddr_in6 {
//		sa_family_t     sin6_family;   // 0
//		in_port_t       sin6_port;     // 2
//		uint32_t        sin6_flowinfo; // 4
//		struct in6_addr sin6_addr;     // 8
//		uint32_t        sin6_scope_id; // 24
//	};                                 // 28 bytes
func putSockaddr(b *[sockaddrLen]byte, ap netip.AddrPort) uint32 {
	a := ap.Addr().Unmap()
	binary.BigEndian.PutUint16(b[2:4], ap.Port())
	if a.Is4() {
		binary.NativeEndian.PutUint16(b[0:2], unix.AF_INET)
		a4 := a.As4()
		copy(b[4:8], a4[:])
		clear(b[8:16])
		return unix.SizeofSockaddrInet4
	}
	binary.NativeEndian.PutUint16(b[0:2], unix.AF_INET6)
	clear(b[4:8])
	a16 := a.As16()
	copy(b[8:24], a16[:])
	clear(b[24:28])
	return unix.SizeofSockaddrInet6
}

// parseSockaddr decodes the first n bytes of b (msg_namelen after the
// call). v4-mapped addresses are unmapped and the IPv6 scope id is dropped
// (netip zones are strings and would allocate). Anything else gives the
// zero AddrPort.
func parseSockaddr(b *[sockaddrLen]byte, n uint32) netip.AddrPort {
	port := binary.BigEndian.Uint16(b[2:4])
	switch binary.NativeEndian.Uint16(b[0:2]) {
	case unix.AF_INET:
		if n >= unix.SizeofSockaddrInet4 {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port)
		}
	case unix.AF_INET6:
		if n >= 24 {
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), port)
		}
	}
	return netip.AddrPort{}
}
