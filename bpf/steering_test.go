package bpf

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/fastudp/fastudp/core"
)

// vector is one line of testdata/affinity-hash.txt.
type vector struct {
	seed   uint64
	client netip.AddrPort
	key    Key
	hash   uint64
	line   int
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	f, err := os.Open("../testdata/affinity-hash.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var vs []vector
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) != 5 {
			t.Fatalf("line %d: %d fields", n, len(fs))
		}
		seed, err1 := strconv.ParseUint(fs[0], 0, 64)
		ip, err2 := netip.ParseAddr(fs[1])
		port, err3 := strconv.ParseUint(fs[2], 10, 16)
		hash, err4 := strconv.ParseUint(fs[4], 0, 64)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
			t.Fatalf("line %d: %q", n, line)
		}
		key := KeyFlow
		switch fs[3] {
		case "ip":
			key = KeyIP
		case "ip-port":
		default:
			t.Fatalf("line %d: mode %q", n, fs[3])
		}
		vs = append(vs, vector{seed, netip.AddrPortFrom(ip, uint16(port)), key, hash, n})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(vs) < 100 {
		t.Fatalf("only %d vectors", len(vs))
	}
	return vs
}

// programHash computes the hash the way the program does: from the seeded
// FNV state in the config map and the bytes of the override key it builds
// on the stack (the IPv4 address at bytes 12..15 of the mapped form, else
// all 16; the port at 16..17 in network order).
func programHash(seed uint64, client netip.AddrPort, key Key) uint64 {
	k := OverrideKeyOf(client)
	h := fnvSeeded(seed)
	ip := k.Addr[:]
	if client.Addr().Unmap().Is4() {
		ip = k.Addr[12:16]
	}
	for _, b := range ip {
		h ^= uint64(b)
		h *= fnvPrime64
	}
	if key == KeyFlow {
		for _, b := range k.Port {
			h ^= uint64(b)
			h *= fnvPrime64
		}
	}
	h ^= h >> 30
	h *= mix1
	h ^= h >> 27
	h *= mix2
	h ^= h >> 31
	return h
}

// TestShardForVectors checks ShardFor and the program's data layout against
// the published affinity-hash vectors.
func TestShardForVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		if got := core.AffinityHash(v.seed, v.client, v.key.affinity()); got != v.hash {
			t.Errorf("line %d: core.AffinityHash = %#x, want %#x", v.line, got, v.hash)
		}
		if got := programHash(v.seed, v.client, v.key); got != v.hash {
			t.Errorf("line %d: program layout hash = %#x, want %#x", v.line, got, v.hash)
		}
		for _, n := range []int{1, 2, 3, 4, 7, 16, 1000} {
			if got, want := ShardFor(v.seed, v.client, v.key, n), int(v.hash%uint64(n)); got != want {
				t.Errorf("line %d: ShardFor(shards=%d) = %d, want %d", v.line, n, got, want)
			}
		}
	}
}

func TestShardForCPU(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		cpu  int
		want int
	}{
		{"modulo", Options{Shards: 4}, 6, 2},
		{"one-shard", Options{Shards: 1}, 5, 0},
		{"pinned", Options{Shards: 2, CPUs: []int{3, 5}}, 5, 1},
		{"pinned-first", Options{Shards: 2, CPUs: []int{3, 5}}, 3, 0},
		{"unpinned-cpu", Options{Shards: 2, CPUs: []int{3, 5}}, 4, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ShardForCPU(tc.cpu, tc.o); got != tc.want {
				t.Errorf("ShardForCPU(%d) = %d, want %d", tc.cpu, got, tc.want)
			}
		})
	}
}

func TestOverrideKeyOf(t *testing.T) {
	k := OverrideKeyOf(netip.MustParseAddrPort("192.0.2.10:258"))
	want := OverrideKey{Addr: netip.MustParseAddr("::ffff:192.0.2.10").As16(), Port: [2]byte{1, 2}}
	if k != want {
		t.Errorf("IPv4 key = %v, want %v", k, want)
	}
	if m := OverrideKeyOf(netip.MustParseAddrPort("[::ffff:192.0.2.10]:258")); m != k {
		t.Errorf("IPv4-mapped key = %v, want the IPv4 key", m)
	}
	k6 := OverrideKeyOf(netip.MustParseAddrPort("[2001:db8::1]:53"))
	if k6.Addr != netip.MustParseAddr("2001:db8::1").As16() || k6.Port != [2]byte{0, 53} {
		t.Errorf("IPv6 key = %v", k6)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Mode: ModeKernel, Shards: 1}, "nothing to load"},
		{Options{Mode: ModeHash, Shards: 0}, "shards: 0"},
		{Options{Mode: ModeHash, Shards: MaxShards + 1}, "shards"},
		{Options{Mode: ModeCPU, Shards: 2, CPUs: []int{0}}, "cpus"},
		{Options{Mode: ModeHash, Key: 7, Shards: 2}, "key"},
	} {
		err := tc.o.validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("validate(%+v) = %v, want an error mentioning %q", tc.o, err, tc.want)
		}
	}
	if err := (&Options{Mode: ModeCPU, Shards: 2, CPUs: []int{0, 1}}).validate(); err != nil {
		t.Error(err)
	}
}

func TestStrings(t *testing.T) {
	got := fmt.Sprint(ModeKernel, ModeHash, ModeCPU, Mode(9), KeyFlow, KeyIP, Key(9))
	if want := "kernel hash cpu mode(9) flow ip key(9)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestProgramAssembles(t *testing.T) {
	insns := program()
	refs := insns.ReferenceOffsets()
	for _, m := range []string{mapSocks, mapConfig, mapOverrides, mapCPUs, mapStats} {
		if len(refs[m]) == 0 {
			t.Errorf("program does not reference map %s", m)
		}
	}
	if _, err := insns.SymbolOffsets(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d instructions", len(insns))
}
