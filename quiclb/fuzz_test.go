package quiclb

import (
	"bytes"
	"testing"
)

// FuzzParseHeader checks that no datagram panics the parser or the
// classifier, that the IDs it returns lie inside the datagram, and that a
// server ID comes out of an ID of the configuration.
func FuzzParseHeader(f *testing.F) {
	f.Add([]byte{0xc0, 0, 0, 0, 1, 4, 1, 2, 3, 4, 0}, uint8(0), uint8(2), uint8(4), false)
	f.Add([]byte{0x40, 0x1f, 1, 2, 3, 4, 5, 6, 7}, uint8(0), uint8(2), uint8(4), true)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, uint8(6), uint8(15), uint8(4), false)
	f.Add([]byte{}, uint8(0), uint8(0), uint8(0), false)
	f.Fuzz(func(t *testing.T, pkt []byte, id, sidLen, nonceLen uint8, self bool) {
		h, err := ParseHeader(pkt)
		if err == nil && h.Long {
			if 7+len(h.DCID)+len(h.SCID) > len(pkt) {
				t.Fatalf("IDs of %d+%d bytes in a %d-byte datagram", len(h.DCID), len(h.SCID), len(pkt))
			}
			if !bytes.Equal(h.DCID, pkt[6:6+len(h.DCID)]) {
				t.Fatal("DCID is not the datagram's")
			}
		}
		c := Config{ConfigID: id % 8, ServerIDLen: sidLen % 16, NonceLen: nonceLen % 20, SelfEncodedLength: self}
		r, b := c.Classify(pkt)
		if r == RouteServerID {
			if c.ServerIDLen == 0 || len(b) != int(c.ServerIDLen) {
				t.Fatalf("server ID %x under %+v", b, c)
			}
		}
		if (r == RouteMalformed) != (err != nil) && !(r == RouteMalformed && !h.Long && c.ServerIDLen > 0) {
			t.Fatalf("classify %v, parse error %v", r, err)
		}
	})
}
