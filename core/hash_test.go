package core

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
)

var updateVectors = flag.Bool("update", false, "rewrite testdata/affinity-hash.txt from AffinityHash")

const affinityVectorsPath = "../testdata/affinity-hash.txt"

// refAffinity is an independent, deliberately plain implementation of the
// documented affinity hash: build the byte string, run the standard library's
// FNV-1a 64 over it, then the splitmix64 finaliser.
func refAffinity(seed uint64, client netip.AddrPort, mode Affinity) uint64 {
	var b []byte
	b = binary.LittleEndian.AppendUint64(b, seed)
	ip := client.Addr().Unmap()
	if ip.Is4() {
		a := ip.As4()
		b = append(b, a[:]...)
	} else {
		a := ip.As16()
		b = append(b, a[:]...)
	}
	if mode == AffinityIPPort {
		b = binary.BigEndian.AppendUint16(b, client.Port())
	}
	h := fnv.New64a()
	h.Write(b)
	return refSplitmix(h.Sum64())
}

func refSplitmix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// testRand is a tiny deterministic generator (SplitMix64) for test data.
type testRand uint64

func (r *testRand) next() uint64 {
	*r += 0x9e3779b97f4a7c15
	return refSplitmix(uint64(*r))
}

func (r *testRand) addrPort() netip.AddrPort {
	x := r.next()
	var a netip.Addr
	switch x % 4 {
	case 0, 1:
		a = netip.AddrFrom4([4]byte{byte(x >> 8), byte(x >> 16), byte(x >> 24), byte(x >> 32)})
	case 2:
		var b [16]byte
		binary.BigEndian.PutUint64(b[:8], r.next())
		binary.BigEndian.PutUint64(b[8:], r.next())
		a = netip.AddrFrom16(b)
	default: // IPv4-mapped
		a = netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: byte(x >> 8), 13: byte(x >> 16), 14: byte(x >> 24), 15: byte(x >> 32)})
	}
	return netip.AddrPortFrom(a, uint16(x>>48))
}

func TestSplitmix64(t *testing.T) {
	// The first outputs of SplitMix64 seeded with 0 (Steele, Lea, Flood 2014;
	// the reference sequence used by xoshiro's authors).
	var r testRand
	for i, want := range []uint64{0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f} {
		if got := r.next(); got != want {
			t.Fatalf("reference splitmix output %d = %#x, want %#x", i, got, want)
		}
	}
	var x uint64
	for i := 0; i < 1000; i++ {
		x += 0x9e3779b97f4a7c15
		if splitmix64(x) != refSplitmix(x) {
			t.Fatalf("splitmix64(%#x) = %#x, want %#x", x, splitmix64(x), refSplitmix(x))
		}
	}
}

func TestAffinityHashReference(t *testing.T) {
	tests := []struct {
		name   string
		seed   uint64
		client string
	}{
		{"IPv4", 0, "192.0.2.10:5000"},
		{"IPv4 seeded", 0xdeadbeefcafebabe, "192.0.2.10:5000"},
		{"IPv6", 1, "[2001:db8::10]:5000"},
		{"IPv4-mapped", 1, "[::ffff:192.0.2.10]:5000"},
		{"zoned IPv6", 7, "[fe80::1%eth0]:53"},
		{"port 0", 7, "10.0.0.1:0"},
		{"largest", ^uint64(0), "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"},
		{"zero address", 3, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ap netip.AddrPort
			if tc.client != "" {
				ap = netip.MustParseAddrPort(tc.client)
			}
			for _, mode := range []Affinity{AffinityIP, AffinityIPPort} {
				if got, want := AffinityHash(tc.seed, ap, mode), refAffinity(tc.seed, ap, mode); got != want {
					t.Fatalf("%v: %#x, want %#x", mode, got, want)
				}
			}
		})
	}
	r := testRand(99)
	for i := 0; i < 20000; i++ {
		seed, ap := r.next(), r.addrPort()
		for _, mode := range []Affinity{AffinityIP, AffinityIPPort} {
			if got, want := AffinityHash(seed, ap, mode), refAffinity(seed, ap, mode); got != want {
				t.Fatalf("AffinityHash(%#x, %v, %v) = %#x, want %#x", seed, ap, mode, got, want)
			}
		}
	}
}

func TestAffinityHashProperties(t *testing.T) {
	v4 := netip.MustParseAddrPort("192.0.2.10:5000")
	tests := []struct {
		name  string
		a, b  netip.AddrPort
		mode  Affinity
		seedB uint64
		same  bool
	}{
		{"ip mode ignores the port", v4, netip.MustParseAddrPort("192.0.2.10:5001"), AffinityIP, 0, true},
		{"ip-port mode sees the port", v4, netip.MustParseAddrPort("192.0.2.10:5001"), AffinityIPPort, 0, false},
		{"IPv4-mapped equals IPv4", v4, netip.MustParseAddrPort("[::ffff:192.0.2.10]:5000"), AffinityIPPort, 0, true},
		{"zone ignored", netip.MustParseAddrPort("[fe80::1%eth0]:1"), netip.MustParseAddrPort("[fe80::1]:1"), AffinityIPPort, 0, true},
		{"seed matters", v4, v4, AffinityIP, 1, false},
		{"address matters", v4, netip.MustParseAddrPort("192.0.2.11:5000"), AffinityIP, 0, false},
		{"mode matters", v4, v4, AffinityIPPort, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ha := AffinityHash(0, tc.a, AffinityIP)
			if tc.name != "mode matters" {
				ha = AffinityHash(0, tc.a, tc.mode)
			}
			hb := AffinityHash(tc.seedB, tc.b, tc.mode)
			if (ha == hb) != tc.same {
				t.Fatalf("%#x vs %#x, same want %v", ha, hb, tc.same)
			}
		})
	}
}

// affinityVector is one line of testdata/affinity-hash.txt.
type affinityVector struct {
	seed   uint64
	client netip.AddrPort
	mode   Affinity
	hash   uint64
}

const affinityVectorsHeader = `# Test vectors for the fastudp affinity hash (core.AffinityHash, documented in
# core/hash.go). Every implementation (the Go core, the eBPF steering program,
# any other node) must reproduce each line exactly.
#
# Format: one vector per line, five fields separated by one space:
#   seed  the 64-bit seed: 0x and 16 lowercase hex digits
#   ip    the client IP: dotted quad for IPv4; RFC 5952 text for IPv6, with
#         IPv4-mapped addresses written ::ffff:a.b.c.d (they hash as IPv4)
#   port  the client port, decimal 0..65535
#   mode  ip (the port is not hashed) or ip-port
#   hash  the expected hash: 0x and 16 lowercase hex digits
# Lines that start with # and empty lines are comments.
#
# The hash: FNV-1a 64 (offset 0xcbf29ce484222325, prime 0x100000001b3) over
# the seed (8 bytes, little-endian), the IP (4 bytes for IPv4 and IPv4-mapped,
# else 16, network order) and, in ip-port mode, the port (2 bytes, big-endian);
# then the splitmix64 finaliser.
#
# Regenerate with: go test ./core -run TestAffinityHashVectors -update
`

func generateAffinityVectors() []affinityVector {
	seeds := []uint64{0, 1, 0x0123456789abcdef, 0xdeadbeefcafebabe, ^uint64(0)}
	clients := []string{"192.0.2.10:5000", "10.0.0.1:53", "0.0.0.0:0", "255.255.255.255:65535",
		"[::ffff:192.0.2.10]:5000", "[::1]:8080", "[2001:db8::10]:5000", "[fe80::1]:546",
		"[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[::]:0"}
	var vs []affinityVector
	for _, s := range seeds {
		for _, c := range clients {
			for _, m := range []Affinity{AffinityIP, AffinityIPPort} {
				vs = append(vs, affinityVector{seed: s, client: netip.MustParseAddrPort(c), mode: m})
			}
		}
	}
	r := testRand(2026)
	for i := 0; i < 60; i++ {
		vs = append(vs, affinityVector{seed: r.next(), client: r.addrPort(), mode: Affinity(i % 2)})
	}
	for i := range vs {
		vs[i].hash = AffinityHash(vs[i].seed, vs[i].client, vs[i].mode)
	}
	return vs
}

func formatAffinityVector(v affinityVector) string {
	return fmt.Sprintf("%#016x %v %d %v %#016x", v.seed, v.client.Addr(), v.client.Port(), v.mode, v.hash)
}

func parseAffinityVectors(text string) ([]affinityVector, error) {
	var vs []affinityVector
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, " ")
		if len(f) != 5 {
			return nil, fmt.Errorf("line %d: %d fields", n, len(f))
		}
		var v affinityVector
		var err error
		if v.seed, err = strconv.ParseUint(strings.TrimPrefix(f[0], "0x"), 16, 64); err != nil || !strings.HasPrefix(f[0], "0x") {
			return nil, fmt.Errorf("line %d: seed %q", n, f[0])
		}
		ip, err := netip.ParseAddr(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", n, err)
		}
		port, err := strconv.ParseUint(f[2], 10, 16)
		if err != nil {
			return nil, fmt.Errorf("line %d: port %q", n, f[2])
		}
		v.client = netip.AddrPortFrom(ip, uint16(port))
		if v.mode, err = ParseAffinity(f[3]); err != nil {
			return nil, fmt.Errorf("line %d: %v", n, err)
		}
		if v.hash, err = strconv.ParseUint(strings.TrimPrefix(f[4], "0x"), 16, 64); err != nil || !strings.HasPrefix(f[4], "0x") {
			return nil, fmt.Errorf("line %d: hash %q", n, f[4])
		}
		if formatAffinityVector(v) != line {
			return nil, fmt.Errorf("line %d: not in canonical form: %q", n, line)
		}
		vs = append(vs, v)
	}
	return vs, sc.Err()
}

// TestAffinityHashVectors checks AffinityHash, and the independent reference,
// against the published vectors (-update rewrites them).
func TestAffinityHashVectors(t *testing.T) {
	if *updateVectors {
		var b strings.Builder
		b.WriteString(affinityVectorsHeader)
		for _, v := range generateAffinityVectors() {
			b.WriteString(formatAffinityVector(v))
			b.WriteByte('\n')
		}
		if err := os.WriteFile(affinityVectorsPath, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(affinityVectorsPath)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	vs, err := parseAffinityVectors(string(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) < 100 {
		t.Fatalf("only %d vectors", len(vs))
	}
	mapped := 0
	for _, v := range vs {
		if got := AffinityHash(v.seed, v.client, v.mode); got != v.hash {
			t.Errorf("%s: AffinityHash = %#016x", formatAffinityVector(v), got)
		}
		if got := refAffinity(v.seed, v.client, v.mode); got != v.hash {
			t.Errorf("%s: reference = %#016x", formatAffinityVector(v), got)
		}
		if v.client.Addr().Is4In6() {
			mapped++
		}
	}
	if mapped == 0 {
		t.Error("no IPv4-mapped vector")
	}
}

// FuzzAffinityHash compares AffinityHash with the reference on arbitrary
// seeds, addresses and modes.
func FuzzAffinityHash(f *testing.F) {
	f.Add(uint64(0), []byte{4, 192, 0, 2, 10, 0x13, 0x88}, false)
	f.Add(uint64(1), []byte{16, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 53}, true)
	f.Fuzz(func(t *testing.T, seed uint64, data []byte, withPort bool) {
		r := byteReader{b: data}
		ap := r.addrPort()
		mode := AffinityIP
		if withPort {
			mode = AffinityIPPort
		}
		if got, want := AffinityHash(seed, ap, mode), refAffinity(seed, ap, mode); got != want {
			t.Fatalf("AffinityHash(%#x, %v, %v) = %#x, want %#x", seed, ap, mode, got, want)
		}
		if ap.Addr().Is4() {
			mapped := netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
			if AffinityHash(seed, mapped, mode) != AffinityHash(seed, ap, mode) {
				t.Fatalf("%v and %v hash differently", ap, mapped)
			}
		}
	})
}

// Test_tableHash checks the flow table's keyed hash: every field of the key
// matters, and the seed does.
func Test_tableHash(t *testing.T) {
	base := flowKey{client: toAddr(netip.MustParseAddrPort("192.0.2.10:5000")), local: toAddr(netip.MustParseAddrPort("198.51.100.1:53")), listener: 2}
	mutate := []struct {
		name string
		fn   func(k *flowKey)
	}{
		{"client port", func(k *flowKey) { k.client.port++ }},
		{"client ip", func(k *flowKey) { k.client.ip[15]++ }},
		{"client ip high", func(k *flowKey) { k.client.ip[0]++ }},
		{"local port", func(k *flowKey) { k.local.port++ }},
		{"local ip", func(k *flowKey) { k.local.ip[15]++ }},
		{"local ip high", func(k *flowKey) { k.local.ip[3]++ }},
		{"listener", func(k *flowKey) { k.listener++ }},
	}
	s := newTableSecrets(1)
	for _, tc := range mutate {
		t.Run(tc.name, func(t *testing.T) {
			k := base
			tc.fn(&k)
			if s.hash(&k) == s.hash(&base) {
				t.Fatal("hash ignores the field")
			}
		})
	}
	s2 := newTableSecrets(2)
	if s.hash(&base) == s2.hash(&base) {
		t.Fatal("hash ignores the seed")
	}
	for i := range s {
		if s[i]&1 == 0 {
			t.Fatal("secret not odd")
		}
	}
}

func Test_toAddr(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" = the zero AddrPort
	}{
		{"192.0.2.10:5000", "192.0.2.10:5000"},
		{"0.0.0.0:0", "0.0.0.0:0"},
		{"[2001:db8::10]:5000", "[2001:db8::10]:5000"},
		{"[::ffff:192.0.2.10]:5000", "[::ffff:192.0.2.10]:5000"},
		{"[fe80::1%eth0]:1", "[fe80::1]:1"},
		{"[::]:1", "[::]:1"},
		{"", ""},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			var ap, want netip.AddrPort
			if tc.in != "" {
				ap = netip.MustParseAddrPort(tc.in)
			}
			if tc.want != "" {
				want = netip.MustParseAddrPort(tc.want)
			}
			a := toAddr(ap)
			if got := a.addrPort(); got != want {
				t.Fatalf("round trip %v -> %v, want %v", ap, got, want)
			}
		})
	}
	// A plain IPv4 address and its IPv4-mapped form are different keys.
	if toAddr(netip.MustParseAddrPort("192.0.2.10:1")) == toAddr(netip.MustParseAddrPort("[::ffff:192.0.2.10]:1")) {
		t.Fatal("IPv4 and IPv4-mapped keys collide")
	}
	if got := fnvSeeded(0x0123456789abcdef); got != func() uint64 {
		h := fnv.New64a()
		h.Write(binary.LittleEndian.AppendUint64(nil, 0x0123456789abcdef))
		return h.Sum64()
	}() {
		t.Fatalf("fnvSeeded = %#x", got)
	}
}
