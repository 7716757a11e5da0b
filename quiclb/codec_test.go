package quiclb

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func key16(t testing.TB, s string) [KeyLen]byte {
	var k [KeyLen]byte
	copy(k[:], mustHex(t, s))
	return k
}

// TestDraftVectors checks the encrypted examples of
// draft-ietf-quic-load-balancers: the worked four-pass example of section
// "General Case: Four-Pass Encryption" and the "Encrypted CIDs" test vectors
// (four-pass with the server ID shorter and longer than the nonce, the
// 16-byte single pass, and an 18-byte four-pass). The vectors' first octets
// use an older 2-bit config rotation layout, so only the encrypted bytes
// after the first octet are compared; ours are checked against our layout.
func TestDraftVectors(t *testing.T) {
	for _, tc := range []struct {
		key, sid, nonce, cid string
		cr                   uint8
	}{
		{"fdf726a9893ec05c0632d3956680baf0", "31441a", "9c69c275", "0732c363fce1e0d2", 0},
		{"8f95f09245765f80256934e50c66207f", "ed793a", "ee080dbf", "0727edaa37e7fac8", 0},
		{"8f95f09245765f80256934e50c66207f", "ed793a51d49b8f5fab65", "ee080dbf48", "4f22614a97ceee84341ed7fbfeb1e6e2", 1},
		{"8f95f09245765f80256934e50c66207f", "ed793a51d49b8f5f", "ee080dbf48c0d1e5", "904dd2d05a7b0de9b2b9907afb5ecf8cc3", 2},
		{"8f95f09245765f80256934e50c66207f", "ed793a51d49b8f5fab", "ee080dbf48c0d1e55d", "125e3b00aa5fcfd1a9a58102a89a19a1e4a10e", 0},
	} {
		sid, nonce, want := mustHex(t, tc.sid), mustHex(t, tc.nonce), mustHex(t, tc.cid)
		cfg := Config{ConfigID: tc.cr, ServerIDLen: uint8(len(sid)), NonceLen: uint8(len(nonce)),
			SelfEncodedLength: true, Encrypted: true, Key: key16(t, tc.key)}
		k, err := NewCodec(cfg)
		if err != nil {
			t.Fatal(err)
		}
		var cid [MaxCIDLen]byte
		n, err := k.Encode(cid[:], sid, nonce, 0)
		if err != nil {
			t.Fatal(err)
		}
		if n != len(want) || cid[0] != tc.cr<<5|byte(n-1) || !bytes.Equal(cid[1:n], want[1:]) {
			t.Errorf("sid %s nonce %s: cid %x, want %02x%x", tc.sid, tc.nonce, cid[:n], tc.cr<<5|byte(n-1), want[1:])
		}
		// The load balancer decodes the draft's ciphertext (with our first
		// octet) to the server ID.
		in := append([]byte{tc.cr<<5 | byte(len(want)-1)}, want[1:]...)
		var buf [MaxServerIDLen]byte
		got, ok := k.ServerID(in, buf[:])
		if !ok || !bytes.Equal(got, sid) {
			t.Errorf("decode %x: %x %v, want %x", in, got, ok, sid)
		}
	}
}

// TestCodecRoundTrip encodes and decodes random IDs under every split of
// server ID and nonce (single pass at 16 bytes, four passes otherwise, odd
// and even), with and without a self-encoded length: the server ID comes
// back, the whole plaintext decrypts, and the server ID is not visible.
func TestCodecRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var key [KeyLen]byte
	for i := range key {
		key[i] = byte(rng.Uint32())
	}
	visible := 0
	for sidLen := 1; sidLen <= MaxServerIDLen; sidLen++ {
		for nonceLen := MinNonceLen; sidLen+nonceLen <= MaxIDLen; nonceLen++ {
			for _, self := range []bool{false, true} {
				cfg := Config{ConfigID: 3, ServerIDLen: uint8(sidLen), NonceLen: uint8(nonceLen), SelfEncodedLength: self, Encrypted: true, Key: key}
				k, err := NewCodec(cfg)
				if err != nil {
					t.Fatal(err)
				}
				for range 20 {
					sid, nonce := make([]byte, sidLen), make([]byte, nonceLen)
					for i := range sid {
						sid[i] = byte(rng.Uint32())
					}
					for i := range nonce {
						nonce[i] = byte(rng.Uint32())
					}
					var cid [MaxCIDLen]byte
					n, err := k.Encode(cid[:], sid, nonce, byte(rng.Uint32()))
					if err != nil || n != cfg.CIDLen() {
						t.Fatalf("%v: encode: %d, %v", cfg, n, err)
					}
					var buf [MaxServerIDLen]byte
					got, ok := k.ServerID(cid[:n], buf[:])
					if !ok || !bytes.Equal(got, sid) {
						t.Fatalf("%v: sid %x nonce %x: cid %x decodes to %x %v", cfg, sid, nonce, cid[:n], got, ok)
					}
					// The full plaintext decrypts (all four passes).
					var s [2][16]byte
					var dec [MaxIDLen]byte
					k.decryptSID(&s, cid[1:n], n-1, dec[:])
					if plain := append(append([]byte(nil), sid...), nonce...); !bytes.Equal(dec[:n-1], plain) {
						t.Fatalf("%v: plaintext %x, want %x", cfg, dec[:n-1], plain)
					}
					if sidLen >= 3 && bytes.Equal(cid[1:1+sidLen], sid) {
						visible++
					}
					// A short header routes by the decrypted server ID.
					pkt := append([]byte{0x40}, cid[:n]...)
					if r, got := k.Classify(pkt, buf[:]); r != RouteServerID || !bytes.Equal(got, sid) {
						t.Fatalf("%v: classify %v %x", cfg, r, got)
					}
				}
			}
		}
	}
	if visible > 0 {
		t.Errorf("%d encrypted IDs show their server ID in clear", visible)
	}
}

// TestCodecWrongKey checks that another key does not decode IDs to their
// server ID, and that the plaintext Config does not read encrypted IDs.
func TestCodecWrongKey(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, lens := range [][2]uint8{{3, 4}, {4, 12}, {10, 5}, {8, 11}} {
		cfg := Config{ServerIDLen: lens[0], NonceLen: lens[1], Encrypted: true, Key: key16(t, "8f95f09245765f80256934e50c66207f")}
		other := cfg
		other.Key[0] ^= 1
		k, _ := NewCodec(cfg)
		w, err := NewCodec(other)
		if err != nil {
			t.Fatal(err)
		}
		same := 0
		for range 200 {
			sid, nonce := make([]byte, lens[0]), make([]byte, lens[1])
			for i := range sid {
				sid[i] = byte(rng.Uint32())
			}
			for i := range nonce {
				nonce[i] = byte(rng.Uint32())
			}
			var cid [MaxCIDLen]byte
			n, _ := k.Encode(cid[:], sid, nonce, 0)
			var buf [MaxServerIDLen]byte
			if got, ok := w.ServerID(cid[:n], buf[:]); ok && bytes.Equal(got, sid) {
				same++
			}
			if _, ok := cfg.ServerID(cid[:n]); ok {
				t.Fatal("Config.ServerID read an encrypted ID")
			}
		}
		if same > 0 {
			t.Errorf("%v: the wrong key decoded %d of 200 IDs to their server ID", lens, same)
		}
	}
	if _, err := (&Config{ServerIDLen: 2, NonceLen: 8, Encrypted: true}).Encode(make([]byte, 20), []byte{1, 2}, make([]byte, 8), 0); err == nil {
		t.Error("Config.Encode of an encrypted config: want an error")
	}
}

// TestCodecAllocs checks that decoding encrypted IDs allocates nothing.
func TestCodecAllocs(t *testing.T) {
	for _, lens := range [][2]uint8{{2, 8}, {8, 8}, {10, 5}} {
		cfg := Config{ServerIDLen: lens[0], NonceLen: lens[1], Encrypted: true, Key: key16(t, "8f95f09245765f80256934e50c66207f")}
		k, _ := NewCodec(cfg)
		var cid [MaxCIDLen]byte
		n, _ := k.Encode(cid[:], make([]byte, lens[0]), make([]byte, lens[1]), 0)
		pkt := append([]byte{0x40}, cid[:n]...)
		allocs := testing.AllocsPerRun(1000, func() {
			var buf [MaxServerIDLen]byte
			if r, _ := k.Classify(pkt, buf[:]); r != RouteServerID {
				t.Fatal(r)
			}
		})
		if allocs != 0 {
			t.Errorf("%v: %v allocations per decode", lens, allocs)
		}
	}
}

// TestConfigRedactsKey checks that formatting or logging a Config never
// shows its key.
func TestConfigRedactsKey(t *testing.T) {
	cfg := Config{ServerIDLen: 2, NonceLen: 8, Encrypted: true, Key: key16(t, "8f95f09245765f80256934e50c66207f")}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "quic_lb", cfg)
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), fmt.Sprintf("%v", &cfg), logged.String()} {
		if strings.Contains(s, "8f95") || strings.Contains(s, "143") || !strings.Contains(s, "redacted") {
			t.Errorf("key shown or not marked: %s", s)
		}
	}
	if cfg.Layout().Encrypted || cfg.Layout().Key != [KeyLen]byte{} {
		t.Error("Layout kept the key")
	}
}

func BenchmarkCodecServerID(b *testing.B) {
	for _, lens := range [][2]uint8{{2, 8}, {8, 8}} {
		for _, enc := range []bool{false, true} {
			cfg := Config{ServerIDLen: lens[0], NonceLen: lens[1], Encrypted: enc}
			k, _ := NewCodec(cfg)
			var cid [MaxCIDLen]byte
			n, _ := k.Encode(cid[:], make([]byte, lens[0]), make([]byte, lens[1]), 0)
			b.Run(fmt.Sprintf("sid%d-nonce%d-encrypted=%t", lens[0], lens[1], enc), func(b *testing.B) {
				var buf [MaxServerIDLen]byte
				for b.Loop() {
					k.ServerID(cid[:n], buf[:])
				}
			})
		}
	}
}

// TestCodecConcurrent decodes and encodes from several goroutines at once
// (the shards share a cluster's Codec): every result is right (run with
// -race).
func TestCodecConcurrent(t *testing.T) {
	cfg := Config{ServerIDLen: 3, NonceLen: 6, Encrypted: true, Key: key16(t, "8f95f09245765f80256934e50c66207f")}
	k, _ := NewCodec(cfg)
	errs := make(chan error, 4)
	for g := range 4 {
		go func() {
			sid := []byte{byte(g), 2, 3}
			for i := range 2000 {
				var cid [MaxCIDLen]byte
				n, err := k.Encode(cid[:], sid, []byte{byte(i), byte(i >> 8), 0, 0, 0, byte(g)}, 0)
				var buf [MaxServerIDLen]byte
				if got, ok := k.ServerID(cid[:n], buf[:]); err != nil || !ok || !bytes.Equal(got, sid) {
					errs <- fmt.Errorf("goroutine %d: %x decodes to %x %v (%v)", g, cid[:n], got, ok, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
