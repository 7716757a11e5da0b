package balance

import (
	"errors"
	"math"
	"net/netip"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// fnvSplitmix writes out the backend hash contract independently of core:
// FNV-1a 64 over seed (8 bytes LE), IP (4 or 16 bytes), port (2 bytes BE),
// then splitmix64.
func fnvSplitmix(seed uint64, ap netip.AddrPort) uint64 {
	var b []byte
	for i := range 8 {
		b = append(b, byte(seed>>(8*i)))
	}
	ip := ap.Addr().Unmap()
	b = append(b, ip.AsSlice()...)
	b = append(b, byte(ap.Port()>>8), byte(ap.Port()))
	h := uint64(0xcbf29ce484222325)
	for _, c := range b {
		h ^= uint64(c)
		h *= 0x100000001b3
	}
	return splitmix64(h)
}

func Test_backendHash(t *testing.T) {
	for _, s := range []string{"192.0.2.1:53", "[2001:db8::1]:443", "[::ffff:192.0.2.1]:53", "[fe80::1%eth0]:53"} {
		ap := netip.MustParseAddrPort(s)
		for _, salt := range []uint64{saltOffset, saltSkip, saltHRW} {
			if got, want := backendHash(77, salt, ap), fnvSplitmix(77^salt, ap); got != want {
				t.Errorf("backendHash(%s, %#x) = %#x, want %#x", s, salt, got, want)
			}
		}
	}
}

func TestNewErrors(t *testing.T) {
	a := netip.MustParseAddrPort("192.0.2.1:53")
	b := netip.MustParseAddrPort("192.0.2.2:53")
	tests := []struct {
		name     string
		backends []Backend
		err      error
	}{
		{"nil", nil, ErrNoBackends},
		{"empty", []Backend{}, ErrNoBackends},
		{"zero weight", []Backend{{Addr: a, Weight: 1}, {Addr: b}}, ErrZeroWeight},
		{"all zero weights", []Backend{{Addr: a}, {Addr: b}}, ErrZeroWeight},
		{"invalid address", []Backend{{Weight: 1}}, ErrInvalidAddr},
		{"duplicate", []Backend{{ID: 1, Addr: a, Weight: 1}, {ID: 2, Addr: a, Weight: 2}}, ErrDuplicateBackend},
		{"duplicate mapped", []Backend{{Addr: a, Weight: 1}, {Addr: netip.MustParseAddrPort("[::ffff:192.0.2.1]:53"), Weight: 1}}, ErrDuplicateBackend},
		{"too many", testBackends(MaxBackends+1, nil), ErrTooManyBackends},
		{"ok", []Backend{{Addr: a, Weight: 1}, {Addr: b, Weight: math.MaxUint32}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, alg := range []Algorithm{Maglev, HRW} {
				tab, err := New(alg, 1, tt.backends, 0)
				if !errors.Is(err, tt.err) {
					t.Fatalf("%v: err = %v, want %v", alg, err, tt.err)
				}
				if err == nil && tab.Len() != len(tt.backends) {
					t.Fatalf("%v: Len() = %d", alg, tab.Len())
				}
				if err != nil {
					t.Logf("%v: %v", alg, err)
				}
			}
		})
	}
	if _, err := New(0, 1, testBackends(1, nil), 0); err == nil {
		t.Error("New with no algorithm succeeded")
	}
}

func TestParseAlgorithm(t *testing.T) {
	for _, a := range []Algorithm{Maglev, HRW, RoundRobin, Random, P2C} {
		got, err := ParseAlgorithm(a.String())
		if err != nil || got != a {
			t.Errorf("ParseAlgorithm(%q) = %v, %v", a.String(), got, err)
		}
	}
	for _, s := range []string{"", "least", "algorithm(0)", "Maglev"} {
		if _, err := ParseAlgorithm(s); err == nil {
			t.Errorf("ParseAlgorithm(%q) succeeded", s)
		}
	}
	if got := Algorithm(0).String(); got != "algorithm(0)" {
		t.Errorf("Algorithm(0) = %q", got)
	}
}

func TestZeroTable(t *testing.T) {
	var tab Table
	if _, ok := tab.Lookup(1); ok {
		t.Error("Lookup on zero Table succeeded")
	}
	if _, ok := tab.LookupAvailable(1, nil); ok {
		t.Error("LookupAvailable on zero Table succeeded")
	}
	if _, ok := tab.IndexOf(netip.MustParseAddrPort("192.0.2.1:1")); ok {
		t.Error("IndexOf on zero Table succeeded")
	}
}

func TestIndexOf(t *testing.T) {
	bs := testBackends(50, nil)
	tab, err := NewHRW(1, bs)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bs {
		i, ok := tab.IndexOf(b.Addr)
		if !ok || tab.Backend(i) != b {
			t.Fatalf("IndexOf(%v) = %d, %v", b.Addr, i, ok)
		}
		mapped := netip.AddrPortFrom(netip.AddrFrom16(b.Addr.Addr().As16()), b.Addr.Port())
		if j, ok := tab.IndexOf(mapped); !ok || j != i {
			t.Fatalf("IndexOf(%v) = %d, %v; want %d", mapped, j, ok, i)
		}
	}
	if _, ok := tab.IndexOf(netip.MustParseAddrPort("192.0.2.1:53")); ok {
		t.Error("IndexOf found an absent address")
	}
	if !slices.IsSortedFunc(tab.Backends(), func(a, b Backend) int { return a.Addr.Compare(b.Addr) }) {
		t.Error("Backends() not in address order")
	}
}

func TestSet(t *testing.T) {
	s := NewSet(3)
	if s.Len() != 0 || s.Has(0) || s.Has(-1) || s.Has(1000) {
		t.Fatal("new set not empty")
	}
	s.Add(2)
	s.Add(130) // grows
	s.Remove(2000)
	s.Remove(-1)
	if !s.Has(2) || !s.Has(130) || s.Has(3) || s.Len() != 2 {
		t.Fatalf("set = %v", s.words)
	}
	s.Remove(2)
	if s.Has(2) || s.Len() != 1 {
		t.Fatal("Remove failed")
	}
	s.Clear()
	if s.Len() != 0 {
		t.Fatal("Clear failed")
	}
	var z Set
	if z.Has(0) || z.Len() != 0 {
		t.Fatal("zero Set not empty")
	}
}

// genBackends draws a backend set with distinct IPv4 and IPv6 addresses.
func genBackends(t *rapid.T, maxN int) []Backend {
	n := rapid.IntRange(1, maxN).Draw(t, "n")
	ids := rapid.SliceOfNDistinct(rapid.Uint32(), n, n, rapid.ID).Draw(t, "addrs")
	bs := make([]Backend, n)
	for i, id := range ids {
		var a netip.Addr
		if id&1 == 0 {
			a = netip.AddrFrom4([4]byte{byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)})
		} else {
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(id >> 24), 13: byte(id >> 16), 14: byte(id >> 8), 15: byte(id)})
		}
		bs[i] = Backend{
			ID:     0,
			Addr:   netip.AddrPortFrom(a, uint16(id>>7)),
			Weight: rapid.Uint32Range(1, 10).Draw(t, "w"),
		}
	}
	return bs
}

// TestPropertyOrderIndependent: two tables built independently from the same
// seed and backend set, listed in different orders and with different ids,
// answer every key the same way.
func TestPropertyOrderIndependent(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		bs := genBackends(t, 40)
		seed := rapid.Uint64().Draw(t, "seed")
		size := rapid.Uint32Range(0, 20000).Draw(t, "size")
		alg := rapid.SampledFrom([]Algorithm{Maglev, HRW}).Draw(t, "alg")
		shuffled := rapid.Permutation(bs).Draw(t, "perm")
		for i := range shuffled {
			shuffled[i].ID = 1000 + shuffled[i].ID // ids are not hashed
		}
		if uint64(size) > 0 && nextPrime(uint64(size)) < uint64(len(bs)) {
			size = 0
		}
		a, err := New(alg, seed, bs, size)
		if err != nil {
			t.Fatal(err)
		}
		b, err := New(alg, seed, shuffled, size)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(a.slots, b.slots) {
			t.Fatal("Maglev slots differ")
		}
		usable := a.All()
		for i := range a.Len() {
			if rapid.Bool().Draw(t, "up") {
				usable.Remove(i)
			}
		}
		for k := range 2000 {
			x, okx := a.LookupAvailable(key(k), usable)
			y, oky := b.LookupAvailable(key(k), usable)
			if okx != oky || x.Addr != y.Addr {
				t.Fatalf("key %d: %v/%v vs %v/%v", k, x.Addr, okx, y.Addr, oky)
			}
		}
	})
}

// TestPropertySkipStable: marking one more backend unusable moves only the
// keys that were on it, and every answer is usable; this holds for both
// algorithms, through Maglev's probes and its HRW fallback.
func TestPropertySkipStable(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		bs := genBackends(t, 30)
		alg := rapid.SampledFrom([]Algorithm{Maglev, HRW}).Draw(t, "alg")
		tab, err := New(alg, rapid.Uint64().Draw(t, "seed"), bs, 1009)
		if err != nil {
			t.Fatal(err)
		}
		before := tab.All()
		for i := range tab.Len() {
			if rapid.Float64Range(0, 1).Draw(t, "p") < 0.6 {
				before.Remove(i)
			}
		}
		y := rapid.IntRange(0, tab.Len()-1).Draw(t, "y")
		after := tab.All()
		after.Clear()
		for i := range tab.Len() {
			if before.Has(i) && i != y {
				after.Add(i)
			}
		}
		for k := range 3000 {
			i, j := tab.Pick(key(k), before), tab.Pick(key(k), after)
			if (i >= 0) != (before.Len() > 0) || (j >= 0) != (after.Len() > 0) {
				t.Fatalf("key %d: picks %d, %d with %d, %d usable", k, i, j, before.Len(), after.Len())
			}
			if i >= 0 && !before.Has(i) || j >= 0 && !after.Has(j) {
				t.Fatalf("key %d: picked an unusable backend", k)
			}
			if i != y && i != j {
				t.Fatalf("key %d moved %d -> %d though only %d left", k, i, j, y)
			}
			if tab.Pick(key(k), before) != i {
				t.Fatalf("key %d: answer not repeatable", k)
			}
		}
	})
}

func TestLookupAllocatesNothing(t *testing.T) {
	bs := testBackends(10, func(i int) uint32 { return uint32(i + 1) })
	for _, alg := range []Algorithm{Maglev, HRW} {
		tab, err := New(alg, 1, bs, 0)
		if err != nil {
			t.Fatal(err)
		}
		usable := tab.All()
		for i := range 9 {
			usable.Remove(i)
		}
		var k uint64
		allocs := testing.AllocsPerRun(1000, func() {
			k++
			_, _ = tab.Lookup(key(int(k)))
			_, _ = tab.LookupAvailable(key(int(k)), usable)
		})
		if allocs != 0 {
			t.Errorf("%v: %v allocations per lookup", alg, allocs)
		}
	}
}
