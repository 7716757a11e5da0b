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

// FuzzCodecDecode decodes arbitrary datagrams under an encrypted
// configuration (any key and lengths): nothing panics, a server ID has the
// configured length, and an ID the Codec encodes from the datagram's bytes
// decodes back to its server ID.
func FuzzCodecDecode(f *testing.F) {
	f.Add([]byte{0x40, 0x07, 0x27, 0xed, 0xaa, 0x37, 0xe7, 0xfa, 0xc8}, []byte("0123456789abcdef"), uint8(3), uint8(4), true)
	f.Add([]byte{0x40, 0x0f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, []byte{}, uint8(8), uint8(8), false)
	f.Add([]byte{0xc0, 0, 0, 0, 1, 9, 0x1f, 1, 2, 3, 4, 5, 6, 7, 8, 0}, []byte{1}, uint8(10), uint8(5), true)
	f.Fuzz(func(t *testing.T, pkt, key []byte, sidLen, nonceLen uint8, self bool) {
		cfg := Config{ServerIDLen: 1 + sidLen%MaxServerIDLen, SelfEncodedLength: self, Encrypted: true}
		cfg.NonceLen = MinNonceLen + nonceLen%uint8(MaxIDLen-int(cfg.ServerIDLen)-MinNonceLen+1)
		copy(cfg.Key[:], key)
		k, err := NewCodec(cfg)
		if err != nil {
			t.Fatalf("%v: %v", cfg, err)
		}
		var buf [MaxServerIDLen]byte
		if r, sid := k.Classify(pkt, buf[:]); r == RouteServerID && len(sid) != int(cfg.ServerIDLen) {
			t.Fatalf("server ID %x under %v", sid, cfg)
		}
		if len(pkt) < int(cfg.ServerIDLen)+int(cfg.NonceLen) {
			return
		}
		sid, nonce := pkt[:cfg.ServerIDLen], pkt[cfg.ServerIDLen:cfg.ServerIDLen+cfg.NonceLen]
		var cid [MaxCIDLen]byte
		n, err := k.Encode(cid[:], sid, nonce, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := k.ServerID(cid[:n], buf[:]); !ok || !bytes.Equal(got, sid) {
			t.Fatalf("%v: sid %x decodes to %x %v", cfg, sid, got, ok)
		}
	})
}
