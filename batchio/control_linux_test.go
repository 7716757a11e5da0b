package batchio

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// cmsg is one decoded control message, for tests.
type cmsg struct {
	level, typ int
	data       []byte
}

// buildControl lays out cs the way the kernel does (put_cmsg).
func buildControl(cs ...cmsg) []byte {
	var b []byte
	for _, c := range cs {
		buf := make([]byte, cmsgSpace(len(c.data)))
		d, _ := putCmsg(buf, c.level, c.typ, len(c.data))
		copy(d, c.data)
		b = append(b, buf...)
	}
	return b
}

// walkControl decodes a well-formed control buffer; it fails the test on a
// malformed one.
func walkControl(t *testing.T, b []byte) []cmsg {
	t.Helper()
	var cs []cmsg
	for len(b) > 0 {
		if len(b) < cmsgHdrLen {
			t.Fatalf("%d trailing bytes", len(b))
		}
		l := int(binary.NativeEndian.Uint64(b))
		if sizeofSizeT == 4 {
			l = int(binary.NativeEndian.Uint32(b))
		}
		if l < cmsgHdrLen || l > len(b) {
			t.Fatalf("bad cmsg_len %d with %d bytes left", l, len(b))
		}
		cs = append(cs, cmsg{
			level: int(int32(binary.NativeEndian.Uint32(b[sizeofSizeT:]))),
			typ:   int(int32(binary.NativeEndian.Uint32(b[sizeofSizeT+4:]))),
			data:  b[cmsgHdrLen:l],
		})
		b = b[min(cmsgAlign(l), len(b)):]
	}
	return cs
}

func ne32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
func ne16(v uint16) []byte { return binary.NativeEndian.AppendUint16(nil, v) }

func pktinfo4(ifindex int32, specDst, addr string) []byte {
	b := ne32(uint32(ifindex))
	s, a := netip.MustParseAddr(specDst).As4(), netip.MustParseAddr(addr).As4()
	return append(append(b, s[:]...), a[:]...)
}

func pktinfo6(addr string, ifindex int32) []byte {
	a := netip.MustParseAddr(addr).As16()
	return append(a[:], ne32(uint32(ifindex))...)
}

func Test_cmsgConstants(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want int
	}{
		{"CMSG_LEN(0)", cmsgHdrLen, unix.CmsgLen(0)},
		{"in6_pktinfo", spaceInet6Pktinfo, unix.CmsgSpace(unix.SizeofInet6Pktinfo)},
		{"in_pktinfo", spaceInet4Pktinfo, unix.CmsgSpace(unix.SizeofInet4Pktinfo)},
		{"int", spaceInt, unix.CmsgSpace(4)},
		{"u16", spaceUint16, unix.CmsgSpace(2)},
		{"cmsgSpace(1)", cmsgSpace(1), unix.CmsgSpace(1)},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func Test_parseControl(t *testing.T) {
	for _, tc := range []struct {
		name    string
		control []byte
		want    Message
		drops   uint32
		ok      bool
	}{
		{
			name:    "empty",
			control: nil,
		},
		{
			name: "v4 listener",
			control: buildControl(
				cmsg{unix.SOL_IP, unix.IP_PKTINFO, pktinfo4(7, "10.0.0.1", "10.0.0.9")},
				cmsg{unix.SOL_IP, unix.IP_TOS, []byte{0xb9}}),
			want: Message{Local: netip.MustParseAddr("10.0.0.9"), IfIndex: 7, TOS: 0xb9},
		},
		{
			name: "v6 with v4-mapped pktinfo and IPv4 TOS",
			control: buildControl(
				cmsg{unix.SOL_IPV6, unix.IPV6_PKTINFO, pktinfo6("::ffff:127.0.0.2", 1)},
				cmsg{unix.SOL_IP, unix.IP_TOS, []byte{0x02}}),
			want: Message{Local: netip.MustParseAddr("127.0.0.2"), IfIndex: 1, TOS: 0x02},
		},
		{
			name: "v6 tclass",
			control: buildControl(
				cmsg{unix.SOL_IPV6, unix.IPV6_PKTINFO, pktinfo6("2001:db8::1", 3)},
				cmsg{unix.SOL_IPV6, unix.IPV6_TCLASS, ne32(0x2a)}),
			want: Message{Local: netip.MustParseAddr("2001:db8::1"), IfIndex: 3, TOS: 0x2a},
		},
		{
			// tailscale#17835: GRO size lost when SO_RXQ_OVFL came first.
			name: "GRO after RXQ_OVFL",
			control: buildControl(
				cmsg{unix.SOL_SOCKET, unix.SO_RXQ_OVFL, ne32(42)},
				cmsg{unix.SOL_UDP, unix.UDP_GRO, ne32(1200)}),
			want:  Message{SegmentSize: 1200},
			drops: 42, ok: true,
		},
		{
			name:    "GRO size read as int, not u16",
			control: buildControl(cmsg{unix.SOL_UDP, unix.UDP_GRO, ne32(70000)}),
			want:    Message{SegmentSize: 70000},
		},
		{
			name:    "negative GRO size ignored",
			control: buildControl(cmsg{unix.SOL_UDP, unix.UDP_GRO, ne32(0xffffffff)}),
		},
		{
			name: "short data ignored, later message still read",
			control: buildControl(
				cmsg{unix.SOL_IP, unix.IP_PKTINFO, []byte{1, 2, 3}},
				cmsg{unix.SOL_UDP, unix.UDP_GRO, ne16(1200)},
				cmsg{unix.SOL_IP, unix.IP_TOS, []byte{4}}),
			want: Message{TOS: 4},
		},
		{
			name:    "unknown message skipped",
			control: buildControl(cmsg{unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, make([]byte, 16)}, cmsg{unix.SOL_IP, unix.IP_TOS, []byte{9}}),
			want:    Message{TOS: 9},
		},
		{
			name:    "cmsg_len past the end stops the walk",
			control: append(buildControl(cmsg{unix.SOL_IP, unix.IP_TOS, []byte{9}})[:cmsgHdrLen+1], 0),
			want:    Message{TOS: 9},
		},
		{
			name:    "truncated header",
			control: buildControl(cmsg{unix.SOL_IP, unix.IP_TOS, []byte{9}})[:cmsgHdrLen-1],
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m Message
			ri := parseControl(tc.control, &m)
			if m.Local != tc.want.Local || m.IfIndex != tc.want.IfIndex || m.TOS != tc.want.TOS || m.SegmentSize != tc.want.SegmentSize {
				t.Errorf("parsed %+v, want %+v", m, tc.want)
			}
			if ri.drops != tc.drops || ri.hasDrops != tc.ok {
				t.Errorf("drops = %d, %v; want %d, %v", ri.drops, ri.hasDrops, tc.drops, tc.ok)
			}
		})
	}
}

func Test_putControl(t *testing.T) {
	v4 := netip.MustParseAddrPort("192.0.2.1:53")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:53")
	for _, tc := range []struct {
		name string
		m    Message
		want []cmsg
	}{
		{"nothing", Message{Addr: v4}, nil},
		{
			"v4 all",
			Message{Addr: v4, Local: netip.MustParseAddr("10.0.0.2"), IfIndex: 5, TOS: 0xb9, SegmentSize: 1200},
			[]cmsg{
				{unix.SOL_IP, unix.IP_PKTINFO, pktinfo4(5, "10.0.0.2", "0.0.0.0")},
				{unix.SOL_IP, unix.IP_TOS, ne32(0xb9)},
				{unix.SOL_UDP, unix.UDP_SEGMENT, ne16(1200)},
			},
		},
		{
			"v4-mapped destination uses IPv4 messages",
			Message{Addr: netip.MustParseAddrPort("[::ffff:192.0.2.1]:53"), Local: netip.MustParseAddr("::ffff:10.0.0.2"), TOS: 1},
			[]cmsg{
				{unix.SOL_IP, unix.IP_PKTINFO, pktinfo4(0, "10.0.0.2", "0.0.0.0")},
				{unix.SOL_IP, unix.IP_TOS, ne32(1)},
			},
		},
		{
			"v6 all",
			Message{Addr: v6, Local: netip.MustParseAddr("2001:db8::2"), IfIndex: 2, TOS: 0x2a, SegmentSize: 0xffff},
			[]cmsg{
				{unix.SOL_IPV6, unix.IPV6_PKTINFO, pktinfo6("2001:db8::2", 2)},
				{unix.SOL_IPV6, unix.IPV6_TCLASS, ne32(0x2a)},
				{unix.SOL_UDP, unix.UDP_SEGMENT, ne16(0xffff)},
			},
		},
		{
			"connected, family from Local",
			Message{Local: netip.MustParseAddr("2001:db8::2"), TOS: 3},
			[]cmsg{
				{unix.SOL_IPV6, unix.IPV6_PKTINFO, pktinfo6("2001:db8::2", 0)},
				{unix.SOL_IPV6, unix.IPV6_TCLASS, ne32(3)},
			},
		},
		{
			"connected, family unknown",
			Message{TOS: 3},
			[]cmsg{
				{unix.SOL_IP, unix.IP_TOS, ne32(3)},
				{unix.SOL_IPV6, unix.IPV6_TCLASS, ne32(3)},
			},
		},
		{"IfIndex alone is ignored", Message{Addr: v4, IfIndex: 3}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := make([]byte, sendControlLen)
			n := putControl(b, &tc.m)
			got := walkControl(t, b[:n])
			if len(got) != len(tc.want) {
				t.Fatalf("got %d messages %v, want %d %v", len(got), got, len(tc.want), tc.want)
			}
			for i := range got {
				g, w := got[i], tc.want[i]
				if g.level != w.level || g.typ != w.typ || !bytes.Equal(g.data, w.data) {
					t.Errorf("message %d = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

func Test_putControlSegmentSizeRange(t *testing.T) {
	for _, s := range []int{-1, 0x10000} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("SegmentSize %d: no panic", s)
				}
			}()
			putControl(make([]byte, sendControlLen), &Message{SegmentSize: s})
		}()
	}
}

func Test_sockaddr(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		n        uint32
	}{
		{"192.0.2.1:53", "192.0.2.1:53", unix.SizeofSockaddrInet4},
		{"[2001:db8::1]:443", "[2001:db8::1]:443", unix.SizeofSockaddrInet6},
		{"[::ffff:192.0.2.1]:53", "192.0.2.1:53", unix.SizeofSockaddrInet4},
		{"[fe80::1%eth0]:9", "[fe80::1]:9", unix.SizeofSockaddrInet6},
	} {
		var b [sockaddrLen]byte
		for i := range b {
			b[i] = 0xee // stale bytes from an earlier use must not leak
		}
		n := putSockaddr(&b, netip.MustParseAddrPort(tc.in))
		if n != tc.n {
			t.Errorf("%s: namelen %d, want %d", tc.in, n, tc.n)
		}
		if got := parseSockaddr(&b, n); got != netip.MustParseAddrPort(tc.want) {
			t.Errorf("%s: round trip gave %v, want %s", tc.in, got, tc.want)
		}
		if n == unix.SizeofSockaddrInet6 && (!bytes.Equal(b[4:8], make([]byte, 4)) || !bytes.Equal(b[24:28], make([]byte, 4))) {
			t.Errorf("%s: flowinfo/scope not cleared: % x", tc.in, b)
		}
	}
	var b [sockaddrLen]byte
	putSockaddr(&b, netip.MustParseAddrPort("[2001:db8::1]:1"))
	if got := parseSockaddr(&b, 20); got.IsValid() {
		t.Errorf("short sockaddr_in6 parsed as %v", got)
	}
	binary.NativeEndian.PutUint16(b[:], unix.AF_UNIX)
	if got := parseSockaddr(&b, sockaddrLen); got.IsValid() {
		t.Errorf("AF_UNIX parsed as %v", got)
	}
}

// FuzzParseControl feeds arbitrary control buffers to the parser. It must
// never panic (a read out of bounds would) and what it reports must be
// well-formed.
func FuzzParseControl(f *testing.F) {
	f.Add([]byte(nil))
	f.Add(buildControl(
		cmsg{unix.SOL_IPV6, unix.IPV6_PKTINFO, pktinfo6("::ffff:127.0.0.2", 1)},
		cmsg{unix.SOL_IP, unix.IP_TOS, []byte{0x02}},
		cmsg{unix.SOL_UDP, unix.UDP_GRO, ne32(1200)},
		cmsg{unix.SOL_SOCKET, unix.SO_RXQ_OVFL, ne32(7)}))
	f.Add(buildControl(
		cmsg{unix.SOL_IP, unix.IP_PKTINFO, pktinfo4(1, "127.0.0.1", "127.0.0.2")},
		cmsg{unix.SOL_IPV6, unix.IPV6_TCLASS, ne32(0xff)}))
	f.Add(buildControl(cmsg{unix.SOL_UDP, unix.UDP_GRO, ne16(1200)})[:cmsgHdrLen+1])
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Message
		parseControl(b, &m)
		if m.SegmentSize < 0 {
			t.Errorf("negative SegmentSize %d", m.SegmentSize)
		}
		if m.Local.Is4In6() || m.Local.Zone() != "" {
			t.Errorf("Local %v not unmapped or has a zone", m.Local)
		}
		if len(b) < cmsgHdrLen && (m.Local.IsValid() || m.IfIndex != 0 || m.TOS != 0 || m.SegmentSize != 0) {
			t.Errorf("parsed %+v from %d bytes", m, len(b))
		}
	})
}

// FuzzPutControl checks that any send metadata fits sendControlLen and
// comes out as well-formed control messages.
func FuzzPutControl(f *testing.F) {
	f.Add([]byte{192, 0, 2, 1}, []byte{10, 0, 0, 1}, 0, uint8(0), 0)
	f.Add(make([]byte, 16), make([]byte, 16), 3, uint8(0xb9), 1200)
	f.Add([]byte(nil), []byte(nil), 0, uint8(1), 0)
	f.Fuzz(func(t *testing.T, dst, local []byte, ifindex int, tos uint8, seg int) {
		addr, _ := netip.AddrFromSlice(dst)
		l, _ := netip.AddrFromSlice(local)
		m := Message{Local: l, IfIndex: ifindex, TOS: tos, SegmentSize: seg & 0xffff}
		if addr.IsValid() {
			m.Addr = netip.AddrPortFrom(addr, 1)
		}
		b := make([]byte, sendControlLen)
		n := putControl(b, &m)
		walkControl(t, b[:n])
	})
}
