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
