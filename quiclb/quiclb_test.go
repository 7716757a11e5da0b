package quiclb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// longHeader builds a long-header packet of version v and type bits typ.
func longHeader(v uint32, typ byte, dcid, scid []byte, pad int) []byte {
	b := []byte{0xc0 | typ<<4}
	b = binary.BigEndian.AppendUint32(b, v)
	b = append(b, byte(len(dcid)))
	b = append(b, dcid...)
	b = append(b, byte(len(scid)))
	b = append(b, scid...)
	return append(b, make([]byte, pad)...)
}

func TestParseHeaderLong(t *testing.T) {
	dcid, scid := bytes.Repeat([]byte{0xaa}, 8), []byte{1, 2, 3}
	h, err := ParseHeader(longHeader(Version1, 0, dcid, scid, 20))
	if err != nil || !h.Long || h.Version != Version1 || !bytes.Equal(h.DCID, dcid) || !bytes.Equal(h.SCID, scid) {
		t.Fatalf("got %+v, %v", h, err)
	}
	// An unknown version may carry 255-byte IDs (RFC 8999 §5.1).
	big := bytes.Repeat([]byte{7}, 255)
	h, err = ParseHeader(longHeader(0x1a2a3a4a, 0, big, big, 0))
	if err != nil || len(h.DCID) != 255 || len(h.SCID) != 255 || !h.ClientChosenDCID() {
		t.Fatalf("255-byte IDs: %+v, %v", h, err)
	}
	// Cut anywhere, the header is malformed.
	full := longHeader(Version1, 0, dcid, scid, 0)
	for n := 0; n < len(full); n++ {
		if _, err := ParseHeader(full[:n]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("cut at %d: err %v, want ErrMalformed", n, err)
		}
	}
	// The IDs cannot grow into what follows.
	h, _ = ParseHeader(full)
	if cap(h.DCID) != len(h.DCID) || cap(h.SCID) != len(h.SCID) {
		t.Fatal("connection IDs must be capped at their length")
	}
}

func TestParseHeaderShort(t *testing.T) {
	h, err := ParseHeader([]byte{0x40, 1, 2, 3})
	if err != nil || h.Long || h.DCID != nil || h.ClientChosenDCID() {
		t.Fatalf("got %+v, %v", h, err)
	}
	if _, err := ParseHeader(nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("empty: %v", err)
	}
}

func TestClientChosenDCID(t *testing.T) {
	for _, tc := range []struct {
		v    uint32
		typ  byte
		want bool
	}{
		{Version1, 0, true},  // Initial
		{Version1, 1, true},  // 0-RTT
		{Version1, 2, false}, // Handshake
		{Version1, 3, false}, // Retry
		{Version2, 0, false}, // Retry
		{Version2, 1, true},  // Initial
		{Version2, 2, true},  // 0-RTT
		{Version2, 3, false}, // Handshake
		{0xfaceb002, 2, true},
		{VersionNegotiation, 0, true},
	} {
		h, err := ParseHeader(longHeader(tc.v, tc.typ, []byte{1, 2, 3, 4}, nil, 0))
		if err != nil {
			t.Fatal(err)
		}
		if got := h.ClientChosenDCID(); got != tc.want {
			t.Errorf("version %#x type %d: client-chosen %v, want %v", tc.v, tc.typ, got, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		c  Config
		ok bool
	}{
		{Config{ConfigID: 0, ServerIDLen: 2, NonceLen: 6}, true},
		{Config{ConfigID: 6, ServerIDLen: 15, NonceLen: 4}, true},
		{Config{ConfigID: 1, ServerIDLen: 1, NonceLen: 18}, true},
		{Config{ConfigID: 7, ServerIDLen: 2, NonceLen: 6}, false},
		{Config{ServerIDLen: 0, NonceLen: 6}, false},
		{Config{ServerIDLen: 16, NonceLen: 4}, false},
		{Config{ServerIDLen: 2, NonceLen: 3}, false},
		{Config{ServerIDLen: 2, NonceLen: 18}, false},
	} {
		if err := tc.c.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: %v, want ok=%v", tc.c, err, tc.ok)
		}
	}
}

func TestEncodeServerID(t *testing.T) {
	for _, self := range []bool{false, true} {
		c := Config{ConfigID: 5, ServerIDLen: 3, NonceLen: 5, SelfEncodedLength: self}
		sid, nonce := []byte{0xde, 0xad, 0x01}, []byte{9, 8, 7, 6, 5}
		var buf [MaxCIDLen]byte
		n, err := c.Encode(buf[:], sid, nonce, 0xff)
		if err != nil || n != 9 {
			t.Fatalf("encode: %d, %v", n, err)
		}
		cid := buf[:n]
		if cid[0]>>5 != 5 {
			t.Fatalf("config rotation bits: %08b", cid[0])
		}
		if low := cid[0] & 0x1f; self && low != 8 || !self && low != 0x1f {
			t.Fatalf("self=%v: low bits %d", self, low)
		}
		got, ok := c.ServerID(cid)
		if !ok || !bytes.Equal(got, sid) {
			t.Fatalf("server ID %x %v", got, ok)
		}
		// Another config rotation ID, 7 (unroutable) or another length.
		other := append([]byte(nil), cid...)
		other[0] = 7<<5 | other[0]&0x1f
		if _, ok := c.ServerID(other); ok {
			t.Fatal("unroutable ID decoded")
		}
		if _, ok := c.ServerID(cid[:n-1]); ok {
			t.Fatal("short ID decoded")
		}
		// Short header: the DCID follows the first octet.
		pkt := append([]byte{0x41}, cid...)
		pkt = append(pkt, 1, 2, 3)
		if r, s := c.Classify(pkt); r != RouteServerID || !bytes.Equal(s, sid) {
			t.Fatalf("classify short: %v %x", r, s)
		}
		if r, _ := c.Classify(pkt[:n]); r != RouteMalformed {
			t.Fatalf("classify cut short header: %v", r)
		}
	}
	c := Config{ServerIDLen: 2, NonceLen: 4}
	var buf [MaxCIDLen]byte
	if _, err := c.Encode(buf[:], []byte{1}, make([]byte, 4), 0); err == nil {
		t.Fatal("short server ID accepted")
	}
	if _, err := c.Encode(buf[:], []byte{1, 2}, make([]byte, 3), 0); err == nil {
		t.Fatal("short nonce accepted")
	}
	if _, err := c.Encode(buf[:6], []byte{1, 2}, make([]byte, 4), 0); err == nil {
		t.Fatal("short buffer accepted")
	}
}

func TestClassify(t *testing.T) {
	c := Config{ConfigID: 1, ServerIDLen: 2, NonceLen: 4}
	var buf [MaxCIDLen]byte
	n, _ := c.Encode(buf[:], []byte{0x12, 0x34}, []byte{1, 2, 3, 4}, 3)
	server := buf[:n]
	client := []byte{0x21, 0x12, 0x34, 1, 2, 3, 4} // even one that decodes
	for _, tc := range []struct {
		name string
		pkt  []byte
		want Route
		sid  []byte
	}{
		{"v1 initial", longHeader(Version1, 0, client, nil, 10), RouteCIDHash, nil},
		{"v1 0-rtt", longHeader(Version1, 1, client, nil, 10), RouteCIDHash, nil},
		{"v1 handshake", longHeader(Version1, 2, server, nil, 10), RouteServerID, []byte{0x12, 0x34}},
		{"v2 handshake", longHeader(Version2, 3, server, nil, 10), RouteServerID, []byte{0x12, 0x34}},
		{"v1 handshake, foreign id", longHeader(Version1, 2, []byte{1, 2, 3}, nil, 10), RouteFallback, nil},
		{"unknown version", longHeader(0x0a0a0a0a, 0, server, nil, 10), RouteCIDHash, nil},
		{"short", append([]byte{0x40}, server...), RouteServerID, []byte{0x12, 0x34}},
		{"short, other config", append([]byte{0x40, 0x00}, server[1:]...), RouteFallback, nil},
		{"short, cut", []byte{0x40, 0x21, 0x12}, RouteMalformed, nil},
		{"empty", nil, RouteMalformed, nil},
		{"long, cut", longHeader(Version1, 0, client, nil, 0)[:8], RouteMalformed, nil},
	} {
		r, got := c.Classify(tc.pkt)
		if r != tc.want || (tc.want == RouteServerID && !bytes.Equal(got, tc.sid)) {
			t.Errorf("%s: %v %x, want %v %x", tc.name, r, got, tc.want, tc.sid)
		}
		if r == RouteCIDHash && !bytes.Equal(got, client) && !bytes.Equal(got, server) {
			t.Errorf("%s: hash input %x is not the DCID", tc.name, got)
		}
	}
	// No configuration: short headers fall back, Initials hash.
	var none Config
	if r, _ := none.Classify(append([]byte{0x40}, server...)); r != RouteFallback {
		t.Fatalf("no config, short: %v", r)
	}
	if r, _ := none.Classify(longHeader(Version1, 0, client, nil, 0)); r != RouteCIDHash {
		t.Fatalf("no config, initial: %v", r)
	}
}

func TestShortDCIDSelfEncoded(t *testing.T) {
	c := Config{ConfigID: 2, ServerIDLen: 2, NonceLen: 4, SelfEncodedLength: true}
	// A self-encoded 10-byte ID under config 2: the length is read from it.
	pkt := []byte{0x40, 2<<5 | 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xee}
	d, err := c.ShortDCID(pkt)
	if err != nil || len(d) != 10 {
		t.Fatalf("dcid %x, %v", d, err)
	}
	// Longer than the config's own IDs: a server with a longer nonce.
	if sid, ok := c.ServerID(d); !ok || !bytes.Equal(sid, []byte{1, 2}) {
		t.Fatalf("10-byte self-encoded ID: %x %v", sid, ok)
	}
	// A length that disagrees with the first octet, or a nonce under 4
	// bytes: not an ID of c.
	if _, ok := c.ServerID(d[:9]); ok {
		t.Fatal("an ID shorter than its encoded length decoded")
	}
	if _, ok := c.ServerID([]byte{2<<5 | 5, 1, 2, 3, 4, 5}); ok {
		t.Fatal("a 3-byte nonce decoded")
	}
	if _, err := c.ShortDCID([]byte{0x40, 3 << 5}); !errors.Is(err, ErrUnroutable) {
		t.Fatalf("other config: %v", err)
	}
	if _, err := c.ShortDCID(pkt[:6]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("cut: %v", err)
	}
}

func TestClassifyAllocs(t *testing.T) {
	c := Config{ConfigID: 0, ServerIDLen: 2, NonceLen: 6}
	var buf [MaxCIDLen]byte
	n, _ := c.Encode(buf[:], []byte{1, 2}, make([]byte, 6), 0)
	pkts := [][]byte{
		append([]byte{0x40}, buf[:n]...),
		longHeader(Version1, 0, buf[:n], nil, 30),
		longHeader(Version1, 2, buf[:n], nil, 30),
		{0x40},
	}
	allocs := testing.AllocsPerRun(100, func() {
		for _, p := range pkts {
			c.Classify(p)
		}
		_, _ = c.Encode(buf[:], []byte{1, 2}, buf[3:9], 1)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per run", allocs)
	}
}
