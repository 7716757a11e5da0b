package config

import (
	"os"
	"strings"
	"testing"
)

// TestQUICLBKey checks quic_lb's key: 32 hex digits (optional 0x) make an
// encrypted configuration; a wrong length, non-hex digits or a non-string
// are errors that name the key but never repeat its value.
func TestQUICLBKey(t *testing.T) {
	base := "[[listener]]\nname = \"q\"\naddress = \"127.0.0.1:443\"\ncluster = \"q\"\n[[cluster]]\nname = \"q\"\naffinity = \"quic\"\nbackend = [{ address = \"127.0.0.1:4434\" }]\n"
	c, err := Parse([]byte(base+"quic_lb = { server_id_len = 2, key = \"0x000102030405060708090a0b0c0d0e0f\" }\n"), "k.toml")
	if err != nil {
		t.Fatal(err)
	}
	q := c.Clusters[0].QUICLB
	if !q.Encrypted || q.Key[1] != 1 || q.Key[15] != 15 {
		t.Fatalf("key not read: encrypted %v", q.Encrypted)
	}
	if cc := c.Clusters[0].CoreConfig(0); cc.QUIC.Encrypted || cc.QUIC.Key != [16]byte{} {
		t.Fatal("the core got the key")
	}
	out, err := c.MarshalTOML()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(out, "out.toml")
	if err != nil || back.Clusters[0].QUICLB != q {
		t.Fatalf("MarshalTOML round trip: %v", err)
	}
	for _, tc := range []struct{ key, want string }{
		{`"0001020304050607deadbeefcafe0e"`, "want 32 hexadecimal digits"},
		{`"000102030405060708090a0b0c0d0e0fff"`, "want 32 hexadecimal digits"},
		{`"000102030405060708090a0b0c0dzzzz"`, "hexadecimal digits only"},
		{`12`, "want a string of 32 hexadecimal digits"},
	} {
		_, err := Parse([]byte(base+"quic_lb = { server_id_len = 2, key = "+tc.key+" }\n"), "k.toml")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "key") {
			t.Errorf("key %s: %v, want %q", tc.key, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "deadbeef") || strings.Contains(err.Error(), "0a0b0c0d") {
			t.Errorf("key %s: the error repeats the key: %v", tc.key, err)
		}
	}
}

// TestFlagsQUICKeyFile: --quic-key-file reads quic_lb's key from a file; a
// missing file or bad contents are errors naming the flag that do not show
// the contents.
func TestFlagsQUICKeyFile(t *testing.T) {
	dir := t.TempDir()
	good, bad := dir+"/good.key", dir+"/bad.key"
	if err := os.WriteFile(good, []byte("8f95f09245765f80256934e50c66207f\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("8f95f09245765f80deadbeef"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := func(file string) []string {
		return []string{"--listen", "127.0.0.1:443", "--affinity", "quic", "--quic-sid-len", "2", "--quic-key-file", file, "--backend", "10.0.0.1:443,sid=0a01"}
	}
	c, err := parseFlags(t, args(good)...).Config()
	if err != nil {
		t.Fatal(err)
	}
	if q := c.Clusters[0].QUICLB; !q.Encrypted || q.Key[0] != 0x8f || q.Key[15] != 0x7f {
		t.Fatalf("key not read from the file: %v", q)
	}
	_, err = parseFlags(t, args(bad)...).Config()
	if err == nil || !strings.Contains(err.Error(), "--quic-key-file") || !strings.Contains(err.Error(), "32 hexadecimal digits") || strings.Contains(err.Error(), "deadbeef") {
		t.Fatalf("bad key file: %v", err)
	}
	_, err = parseFlags(t, args(dir+"/missing.key")...).Config()
	if err == nil || !strings.Contains(err.Error(), "--quic-key-file") {
		t.Fatalf("missing key file: %v", err)
	}
}
