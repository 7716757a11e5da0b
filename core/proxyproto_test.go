package core

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// ppv2 is a parsed PROXY protocol v2 header (the test's own parser, written
// from haproxy's proxy-protocol.txt section 2.2, not from the builder).
type ppv2 struct {
	command  byte // 0x20 LOCAL, 0x21 PROXY
	family   byte // 0x12, 0x22 or 0x00
	src, dst netip.AddrPort
	length   int // header bytes, address block included
}

var errNotPPv2 = errors.New("not a PROXY v2 header")

// parsePPv2 parses the header at the start of b.
func parsePPv2(b []byte) (ppv2, error) {
	sig := []byte("\r\n\r\n\x00\r\nQUIT\n")
	if len(b) < 16 || !bytes.Equal(b[:12], sig) {
		return ppv2{}, errNotPPv2
	}
	h := ppv2{command: b[12], family: b[13]}
	if h.command>>4 != 2 || h.command&0xf > 1 {
		return ppv2{}, fmt.Errorf("version/command %#x", h.command)
	}
	n := int(binary.BigEndian.Uint16(b[14:16]))
	if len(b) < 16+n {
		return ppv2{}, fmt.Errorf("address block of %d bytes, %d present", n, len(b)-16)
	}
	h.length = 16 + n
	a := b[16 : 16+n]
	switch h.family {
	case 0x12: // AF_INET, DGRAM
		if n < 12 {
			return ppv2{}, fmt.Errorf("IPv4 block of %d bytes", n)
		}
		h.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[0:4])), binary.BigEndian.Uint16(a[8:10]))
		h.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[4:8])), binary.BigEndian.Uint16(a[10:12]))
	case 0x22: // AF_INET6, DGRAM
		if n < 36 {
			return ppv2{}, fmt.Errorf("IPv6 block of %d bytes", n)
		}
		h.src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[0:16])), binary.BigEndian.Uint16(a[32:34]))
		h.dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[16:32])), binary.BigEndian.Uint16(a[34:36]))
	case 0x00: // AF_UNSPEC: no addresses
	default:
		return ppv2{}, fmt.Errorf("family/transport %#x", h.family)
	}
	return h, nil
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// TestAppendProxyHeaderBytes pins the header byte for byte (the seed's
// vectors, plus IPv4-mapped and invalid addresses).
func TestAppendProxyHeaderBytes(t *testing.T) {
	const sig = "0d0a0d0a000d0a515549540a 21"
	v4 := mustHex(sig + "12 000c 7d190a01 0a040508 1f90 1068")
	v6 := mustHex(sig + "22 0024 00000000000000000000000000000001 00000000000000000000000000000001 1f90 1068")
	unspec := mustHex(sig + "00 0000")
	tests := []struct {
		name     string
		src, dst string
		want     []byte
	}{
		{name: "IPv4", src: "125.25.10.1:8080", dst: "10.4.5.8:4200", want: v4},
		{name: "IPv6", src: "[::1]:8080", dst: "[::1]:4200", want: v6},
		{name: "IPv4 to IPv6 is UNSPEC", src: "125.25.10.1:8080", dst: "[::1]:4200", want: unspec},
		{name: "IPv6 to IPv4 is UNSPEC", src: "[::1]:8080", dst: "10.4.5.8:4200", want: unspec},
		{name: "IPv4-mapped source is IPv4", src: "[::ffff:125.25.10.1]:8080", dst: "10.4.5.8:4200", want: v4},
		{name: "IPv4-mapped destination is IPv4", src: "125.25.10.1:8080", dst: "[::ffff:10.4.5.8]:4200", want: v4},
		{name: "both IPv4-mapped are IPv4", src: "[::ffff:125.25.10.1]:8080", dst: "[::ffff:10.4.5.8]:4200", want: v4},
		{name: "IPv6 with zone loses the zone", src: "[fe80::1%eth0]:1", dst: "[fe80::2]:2",
			want: mustHex(sig + "22 0024 fe800000000000000000000000000001 fe800000000000000000000000000002 0001 0002")},
		{name: "invalid source is UNSPEC", src: "", dst: "10.4.5.8:4200", want: unspec},
		{name: "invalid destination is UNSPEC", src: "125.25.10.1:8080", dst: "", want: unspec},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var src, dst netip.AddrPort
			if tc.src != "" {
				src = netip.MustParseAddrPort(tc.src)
			}
			if tc.dst != "" {
				dst = netip.MustParseAddrPort(tc.dst)
			}
			got := AppendProxyHeader(nil, src, dst)
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("header\n got %x\nwant %x", got, tc.want)
			}
			// Appending keeps what was there: the shell may build the header
			// in the headroom of its send buffer.
			prefix := []byte("prefix")
			got = AppendProxyHeader(prefix, src, dst)
			if string(got[:6]) != "prefix" || !bytes.Equal(got[6:], tc.want) {
				t.Fatalf("appended: %x", got)
			}
			h, err := parsePPv2(got[6:])
			if err != nil {
				t.Fatal(err)
			}
			if h.length != len(tc.want) || h.command != 0x21 {
				t.Fatalf("parsed %+v", h)
			}
			if h.family != 0 && (h.src != unmapPort(src) || h.dst != unmapPort(dst)) {
				t.Fatalf("parsed %v -> %v", h.src, h.dst)
			}
		})
	}
	if ProxyHeaderLenIPv4 != len(v4) || ProxyHeaderLenIPv6 != len(v6) || ProxyHeaderLenUnspec != len(unspec) || ProxyHeaderMaxLen < len(v6) {
		t.Fatal("header length constants disagree with the bytes")
	}
}

func unmapPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

func TestParsePPv2Rejects(t *testing.T) {
	good := AppendProxyHeader(nil, netip.MustParseAddrPort("1.2.3.4:5"), netip.MustParseAddrPort("6.7.8.9:10"))
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short", good[:15]},
		{"bad signature", append([]byte{0}, good[1:]...)},
		{"version 1", append(append([]byte{}, good[:12]...), append([]byte{0x11}, good[13:]...)...)},
		{"truncated block", good[:27]},
		{"unknown family", append(append([]byte{}, good[:13]...), append([]byte{0x31}, good[14:]...)...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parsePPv2(tc.b); err == nil {
				t.Fatalf("parsed %x", tc.b)
			}
		})
	}
}

// TestManagerProxyProtocol checks the header the manager sends upstream: when
// (off, first, every), what (source the client, destination the address the
// client sent to or PublicAddr; the seed used the backend), and how (a
// separate Header slice; the payload untouched; GRO runs split where needed).
func TestManagerProxyProtocol(t *testing.T) {
	pub := netip.MustParseAddrPort("203.0.113.9:853")
	pub6 := netip.MustParseAddrPort("[2001:db8:ffff::9]:853")
	type send struct {
		payload string
		seg     int
	}
	type want struct {
		header  bool
		payload string
		seg     int
	}
	tests := []struct {
		name     string
		mode     ProxyMode
		public   netip.AddrPort
		src, dst netip.AddrPort
		resolve  bool // resolve before the sends (else they are held)
		sends    []send
		want     []want // every SendToBackend, in order, the admission datagram "q" first
		family   byte
		hdrSrc   netip.AddrPort
		hdrDst   netip.AddrPort
	}{
		{name: "off", mode: ProxyOff, src: cliA, dst: lcl, resolve: true, sends: []send{{"a", 0}},
			want: []want{{false, "q", 0}, {false, "a", 0}}},
		{name: "first, IPv4", mode: ProxyFirst, src: cliA, dst: lcl, resolve: true, sends: []send{{"a", 0}, {"b", 0}},
			want: []want{{true, "q", 0}, {false, "a", 0}, {false, "b", 0}}, family: 0x12, hdrSrc: cliA, hdrDst: lcl},
		{name: "first, held datagrams", mode: ProxyFirst, src: cliA, dst: lcl, sends: []send{{"a", 0}, {"b", 0}},
			want: []want{{true, "q", 0}, {false, "a", 0}, {false, "b", 0}}, family: 0x12, hdrSrc: cliA, hdrDst: lcl},
		{name: "every, IPv6", mode: ProxyEvery, src: cli6, dst: lcl6, resolve: true, sends: []send{{"a", 0}, {"b", 0}},
			want: []want{{true, "q", 0}, {true, "a", 0}, {true, "b", 0}}, family: 0x22, hdrSrc: cli6, hdrDst: lcl6},
		{name: "every, held datagrams", mode: ProxyEvery, src: cliA, dst: lcl, sends: []send{{"a", 0}},
			want: []want{{true, "q", 0}, {true, "a", 0}}, family: 0x12, hdrSrc: cliA, hdrDst: lcl},
		{name: "public address replaces the local address", mode: ProxyEvery, public: pub, src: cliA, dst: lcl, resolve: true,
			want: []want{{true, "q", 0}}, family: 0x12, hdrSrc: cliA, hdrDst: pub},
		{name: "mixed families are UNSPEC", mode: ProxyEvery, public: pub6, src: cliA, dst: lcl, resolve: true,
			want: []want{{true, "q", 0}}, family: 0x00},
		{name: "IPv4-mapped client is IPv4", mode: ProxyEvery, src: cliM, dst: lcl, resolve: true,
			want: []want{{true, "q", 0}}, family: 0x12, hdrSrc: cliA, hdrDst: lcl},
		// Every: a run stays one output whose header precedes every segment.
		{name: "every keeps a run whole, header before each segment", mode: ProxyEvery, src: cliA, dst: lcl, resolve: true, sends: []send{{"a1a2a", 2}},
			want: []want{{true, "q", 0}, {true, "a1a2a", 2}}, family: 0x12, hdrSrc: cliA, hdrDst: lcl},
		{name: "every keeps a held run whole", mode: ProxyEvery, src: cliA, dst: lcl, sends: []send{{"a1a2", 2}},
			want: []want{{true, "q", 0}, {true, "a1a2", 2}}, family: 0x12, hdrSrc: cliA, hdrDst: lcl},
		{name: "first leaves later runs whole", mode: ProxyFirst, src: cliA, dst: lcl, resolve: true, sends: []send{{"a1a2a3", 2}, {"b1b2", 2}},
			want: []want{{true, "q", 0}, {false, "a1a2a3", 2}, {false, "b1b2", 2}}, family: 0x12, hdrSrc: cliA, hdrDst: lcl},
		{name: "first, held run after the first datagram stays whole", mode: ProxyFirst, src: cliA, dst: lcl, sends: []send{{"a1a2a3", 2}},
			want: []want{{true, "q", 0}, {false, "a1a2a3", 2}}, family: 0x12, hdrSrc: cliA, hdrDst: lcl},
		{name: "off keeps runs whole", mode: ProxyOff, src: cliA, dst: lcl, resolve: true, sends: []send{{"a1a2a3", 2}},
			want: []want{{false, "q", 0}, {false, "a1a2a3", 2}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{}, ClusterConfig{ProxyProtocol: tc.mode, PublicAddr: tc.public})
			id := h.open(0, tc.src, tc.dst, "q")
			var sent []Output
			var headers [][]byte
			collect := func(out []Output) {
				for _, o := range pick(out, OutSendToBackend) {
					sent = append(sent, o)
					// Header and payload are only valid until the next call.
					headers = append(headers, bytes.Clone(o.Header))
					sent[len(sent)-1].Payload = bytes.Clone(o.Payload)
				}
			}
			if tc.resolve {
				collect(h.handle(Resolved(id, be1)))
			}
			for _, s := range tc.sends {
				collect(h.handle(groClient(0, tc.src, tc.dst, []byte(s.payload), s.seg)))
			}
			if !tc.resolve {
				collect(h.handle(Resolved(id, be1)))
			}
			if len(sent) != len(tc.want) {
				t.Fatalf("%d sends, want %d:\n%s", len(sent), len(tc.want), fmtOutputs(sent))
			}
			for i, w := range tc.want {
				o := sent[i]
				if string(o.Payload) != w.payload || o.SegmentSize != w.seg || (headers[i] != nil) != w.header {
					t.Fatalf("send %d: %s, want %+v", i, fmtOutput(&o), w)
				}
				if !w.header {
					continue
				}
				p, err := parsePPv2(headers[i])
				if err != nil {
					t.Fatal(err)
				}
				if p.length != len(headers[i]) || p.family != tc.family {
					t.Fatalf("header %x: %+v", headers[i], p)
				}
				wantLen := map[byte]int{0x12: ProxyHeaderLenIPv4, 0x22: ProxyHeaderLenIPv6, 0x00: ProxyHeaderLenUnspec}[tc.family]
				if len(headers[i]) != wantLen {
					t.Fatalf("header of %d bytes, want %d", len(headers[i]), wantLen)
				}
				if tc.family != 0 && (p.src != tc.hdrSrc || p.dst != tc.hdrDst) {
					t.Fatalf("header %v -> %v, want %v -> %v", p.src, p.dst, tc.hdrSrc, tc.hdrDst)
				}
			}
		})
	}
	for _, tc := range []struct {
		name string
		run  string
		want []string // payloads; the first carries the header
		segs []int
	}{
		{name: "first splits a run that is the flow's first datagram", run: "q1q2q3", want: []string{"q1", "q2q3"}, segs: []int{0, 2}},
		{name: "first on a run of two leaves one datagram", run: "q1q2", want: []string{"q1", "q2"}, segs: []int{0, 0}},
		{name: "first on a run with a short tail", run: "q1q2q", want: []string{"q1", "q2q"}, segs: []int{0, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{}, ClusterConfig{ProxyProtocol: ProxyFirst})
			out := h.handle(groClient(0, cliA, lcl, []byte(tc.run), 2))
			id := pick(out, OutSelectBackend)[0].Flow
			sends := pick(h.handle(Resolved(id, be1)), OutSendToBackend)
			if len(sends) != len(tc.want) {
				t.Fatalf("%s", fmtOutputs(sends))
			}
			for i, o := range sends {
				if string(o.Payload) != tc.want[i] || o.SegmentSize != tc.segs[i] || (o.Header != nil) != (i == 0) {
					t.Fatalf("send %d: %s", i, fmtOutput(&o))
				}
			}
		})
	}
	t.Run("a new flow after close gets a header again", func(t *testing.T) {
		h := newHarness(t, Config{}, ClusterConfig{ProxyProtocol: ProxyFirst})
		for i := 0; i < 2; i++ {
			id := h.open(0, cliA, lcl, "q")
			out := h.handle(Resolved(id, be1))
			if s := pick(out, OutSendToBackend); len(s) != 1 || s[0].Header == nil {
				t.Fatalf("flow %d: %s", i, fmtOutputs(out))
			}
			h.handle(AbortFlow(id))
		}
	})
	t.Run("headers of one call stay valid until the next", func(t *testing.T) {
		// More headers than the arena's initial room: growing it must not
		// move or overwrite headers already handed out in the same call.
		const n = 150
		h := newHarness(t, Config{}, ClusterConfig{ProxyProtocol: ProxyEvery})
		clients := make([]netip.AddrPort, n)
		ins := make([]Input, n)
		for i := range clients {
			clients[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), uint16(1000+i))
			h.establish(0, clients[i], lcl, "q")
			ins[i] = ClientDatagram(0, clients[i], lcl, []byte("x"))
		}
		if i := len(clients) - 1; clients[i].Addr().Is6() {
			t.Fatal("bad test clients")
		}
		out := h.handle(ins...)
		if len(out) != n {
			t.Fatalf("%d outputs", len(out))
		}
		for i, o := range out {
			p, err := parsePPv2(o.Header)
			if err != nil || p.src != clients[i] || p.dst != lcl || len(o.Header) != ProxyHeaderLenIPv4 {
				t.Fatalf("header %d %x: %+v %v", i, o.Header, p, err)
			}
		}
	})
	t.Run("payload is never copied to make room for the header", func(t *testing.T) {
		h := newHarness(t, Config{}, ClusterConfig{ProxyProtocol: ProxyEvery})
		h.establish(0, cliA, lcl, "q")
		buf := []byte("payload")
		out := h.handle(ClientDatagram(0, cliA, lcl, buf))
		if &out[0].Payload[0] != &buf[0] || len(out[0].Payload) != len(buf) {
			t.Fatal("payload copied")
		}
		if cap(out[0].Header) != len(out[0].Header) {
			t.Fatal("header slice has spare capacity: an append would overwrite the next header")
		}
	})
}

// FuzzProxyHeader builds headers from arbitrary addresses and checks them with
// the test parser: the prefix is kept, the length follows the families, the
// addresses round-trip (IPv4-mapped as IPv4).
func FuzzProxyHeader(f *testing.F) {
	f.Add([]byte{4, 125, 25, 10, 1, 0x1f, 0x90, 4, 10, 4, 5, 8, 0x10, 0x68}, 3)
	f.Add([]byte{16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1f, 0x90, 4, 10, 4, 5, 8, 0x10, 0x68}, 0)
	f.Add([]byte{16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4, 0, 1, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 5, 6, 7, 8, 0, 2}, 52)
	f.Add([]byte{0}, 1)
	f.Fuzz(func(t *testing.T, data []byte, prefixLen int) {
		r := byteReader{b: data}
		src, dst := r.addrPort(), r.addrPort()
		prefix := bytes.Repeat([]byte{0xa5}, prefixLen&0x3f)
		out := AppendProxyHeader(bytes.Clone(prefix), src, dst)
		if !bytes.Equal(out[:len(prefix)], prefix) {
			t.Fatal("prefix changed")
		}
		hdr := out[len(prefix):]
		p, err := parsePPv2(hdr)
		if err != nil {
			t.Fatalf("%v -> %v: %x: %v", src, dst, hdr, err)
		}
		if p.length != len(hdr) || p.command != 0x21 {
			t.Fatalf("%x: %+v", hdr, p)
		}
		s, d := src.Addr().Unmap(), dst.Addr().Unmap()
		switch {
		case s.Is4() && d.Is4():
			if p.family != 0x12 || len(hdr) != ProxyHeaderLenIPv4 {
				t.Fatalf("IPv4: %x", hdr)
			}
		case s.Is6() && d.Is6():
			if p.family != 0x22 || len(hdr) != ProxyHeaderLenIPv6 {
				t.Fatalf("IPv6: %x", hdr)
			}
		default:
			if p.family != 0x00 || len(hdr) != ProxyHeaderLenUnspec {
				t.Fatalf("mixed: %x", hdr)
			}
			return
		}
		if p.src != unmapPort(src) || p.dst != unmapPort(dst) {
			t.Fatalf("round trip %v -> %v: %v -> %v", src, dst, p.src, p.dst)
		}
	})
}
