package balance

import (
	"net/netip"
	"slices"
	"testing"
)

// TestFingerprint: the fingerprint ignores what does not change a pick
// (backend order, IDs, an IPv4-mapped spelling) and tables that agree on it
// pick alike; every input that changes picks (algorithm, seed, Maglev size,
// an address, a weight, a tier, a backend more or less) changes it.
func TestFingerprint(t *testing.T) {
	bs := []Backend{
		{ID: 0, Addr: netip.MustParseAddrPort("192.0.2.1:53"), Weight: 100},
		{ID: 1, Addr: netip.MustParseAddrPort("192.0.2.2:53"), Weight: 100},
		{ID: 2, Addr: netip.MustParseAddrPort("[2001:db8::3]:53"), Weight: 100},
	}
	build := func(alg Algorithm, seed uint64, bs []Backend, size uint32) *Table {
		t.Helper()
		tab, err := New(alg, seed, bs, size)
		if err != nil {
			t.Fatal(err)
		}
		return tab
	}
	base := build(Maglev, 7, bs, 0)

	same := slices.Clone(bs)
	slices.Reverse(same)
	for i := range same {
		same[i].ID += 10
	}
	same[2].Addr = netip.MustParseAddrPort("[::ffff:192.0.2.1]:53") // bs[0], mapped
	alike := build(Maglev, 7, same, 0)
	if alike.Fingerprint() != base.Fingerprint() {
		t.Fatalf("reordered, renumbered backends: fingerprint %#x, want %#x", alike.Fingerprint(), base.Fingerprint())
	}
	for i := range 10000 {
		if a, b := base.Pick(key(i), nil), alike.Pick(key(i), nil); base.Backend(a).Addr.Addr().Unmap() != alike.Backend(b).Addr.Addr().Unmap() {
			t.Fatalf("key %d: %v and %v picked by tables of one fingerprint", i, base.Backend(a).Addr, alike.Backend(b).Addr)
		}
	}

	change := func(f func(bs []Backend) []Backend) []Backend { return f(slices.Clone(bs)) }
	variants := map[string]*Table{
		"base":      base,
		"hrw":       build(HRW, 7, bs, 0),
		"seed":      build(Maglev, 8, bs, 0),
		"size":      build(Maglev, 7, bs, 1009),
		"address":   build(Maglev, 7, change(func(b []Backend) []Backend { b[1].Addr = netip.MustParseAddrPort("192.0.2.2:54"); return b }), 0),
		"weight":    build(Maglev, 7, change(func(b []Backend) []Backend { b[1].Weight = 101; return b }), 0),
		"backup":    build(Maglev, 7, change(func(b []Backend) []Backend { b[1].Backup = true; return b }), 0),
		"removed":   build(Maglev, 7, bs[:2], 0),
		"added":     build(Maglev, 7, append(slices.Clone(bs), Backend{ID: 3, Addr: netip.MustParseAddrPort("192.0.2.4:53"), Weight: 100}), 0),
		"rr":        build(RoundRobin, 7, bs, 0),
		"rr seed 8": build(RoundRobin, 8, bs, 0),
	}
	seen := map[uint64]string{}
	for name, tab := range variants {
		fp := tab.Fingerprint()
		if other, dup := seen[fp]; dup {
			t.Errorf("%s and %s share fingerprint %#x", name, other, fp)
		}
		seen[fp] = name
	}
}
