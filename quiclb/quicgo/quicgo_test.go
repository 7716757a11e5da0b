package quicgo

import (
	"bytes"
	"testing"

	"github.com/fastudp/fastudp/quiclb"
)

func TestGenerator(t *testing.T) {
	for _, self := range []bool{false, true} {
		cfg := quiclb.Config{ConfigID: 3, ServerIDLen: 3, NonceLen: 6, SelfEncodedLength: self}
		g, err := New(cfg, []byte{1, 2, 3})
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for range 1000 {
			cid, err := g.GenerateConnectionID()
			if err != nil {
				t.Fatal(err)
			}
			b := cid.Bytes()
			if len(b) != g.ConnectionIDLen() || len(b) != 10 {
				t.Fatalf("ID of %d bytes", len(b))
			}
			if sid, ok := cfg.ServerID(b); !ok || !bytes.Equal(sid, []byte{1, 2, 3}) {
				t.Fatalf("%x: server ID %x %v", b, sid, ok)
			}
			if seen[string(b)] {
				t.Fatalf("ID %x repeated", b)
			}
			seen[string(b)] = true
		}
	}
	if _, err := New(quiclb.Config{ServerIDLen: 2, NonceLen: 8}, []byte{1}); err == nil {
		t.Fatal("a 1-byte server ID under server_id_len 2 was accepted")
	}
	if _, err := New(quiclb.Config{ServerIDLen: 2, NonceLen: 2}, []byte{1, 2}); err == nil {
		t.Fatal("an invalid config was accepted")
	}
}

// TestGeneratorEncrypted checks that with a key the generator's IDs decode
// to the server ID only with that key (single-pass and four-pass lengths),
// and do not show it in clear.
func TestGeneratorEncrypted(t *testing.T) {
	key := [quiclb.KeyLen]byte{0x8f, 0x95, 0xf0, 0x92, 0x45, 0x76, 0x5f, 0x80, 0x25, 0x69, 0x34, 0xe5, 0x0c, 0x66, 0x20, 0x7f}
	sid := []byte{0xed, 0x79, 0x3a}
	for _, nonceLen := range []uint8{6, 13} { // 9 bytes: four passes; 16: one
		cfg := quiclb.Config{ConfigID: 2, ServerIDLen: 3, NonceLen: nonceLen, SelfEncodedLength: true, Encrypted: true, Key: key}
		g, err := New(cfg, sid)
		if err != nil {
			t.Fatal(err)
		}
		codec, _ := quiclb.NewCodec(cfg)
		plain := cfg.Layout()
		clear := 0
		for range 500 {
			cid, err := g.GenerateConnectionID()
			if err != nil {
				t.Fatal(err)
			}
			b := cid.Bytes()
			var buf [quiclb.MaxServerIDLen]byte
			if got, ok := codec.ServerID(b, buf[:]); !ok || !bytes.Equal(got, sid) {
				t.Fatalf("%x: server ID %x %v", b, got, ok)
			}
			if got, ok := plain.ServerID(b); ok && bytes.Equal(got, sid) {
				clear++
			}
		}
		if clear > 0 {
			t.Errorf("nonce_len %d: %d IDs show the server ID in clear", nonceLen, clear)
		}
	}
}
