package core

import (
	"net/netip"
	"testing"
	"time"
)

// TestSourceLimiter: the exported limiter is the manager's algorithm: off
// allows everything; on, a source gets exactly Burst at once and one per
// Interval, a /24 prefix groups ports and hosts, an IPv4-mapped client is its
// IPv4 source, another source is unaffected, reconfiguring keeps the buckets
// and turning it off allows again.
func TestSourceLimiter(t *testing.T) {
	var l SourceLimiter
	a := netip.MustParseAddrPort("192.0.2.1:1000")
	for range 1000 {
		if !l.Allow(0, a) {
			t.Fatal("zero limiter refused")
		}
	}
	if l.On() {
		t.Fatal("zero limiter on")
	}
	c := AdmissionConfig{Interval: 100 * time.Millisecond, Burst: 3, PrefixV4: 24}
	l.Configure(c, 7)
	if !l.On() {
		t.Fatal("configured limiter off")
	}
	count := func(now Time, src string, tries int) (n int) {
		ap := netip.MustParseAddrPort(src)
		for range tries {
			if l.Allow(now, ap) {
				n++
			}
		}
		return n
	}
	if n := count(0, "192.0.2.1:1000", 10) + count(0, "192.0.2.9:53", 10) + count(0, "[::ffff:192.0.2.7]:5", 10); n != 3 {
		t.Fatalf("one /24 at t=0: %d allowed, want 3", n)
	}
	if n := count(0, "198.51.100.1:1000", 10); n != 3 {
		t.Fatalf("another source at t=0: %d allowed, want 3", n)
	}
	if n := count(Time(99*time.Millisecond), "192.0.2.1:1", 10); n != 0 {
		t.Fatalf("at 99ms: %d allowed, want 0", n)
	}
	l.Configure(c, 7) // same size: buckets carry over
	if n := count(Time(100*time.Millisecond), "192.0.2.1:1", 10); n != 1 {
		t.Fatalf("at 100ms after reconfigure: %d allowed, want 1", n)
	}
	if l.Evictions() != 0 {
		t.Fatalf("evictions %d, want 0", l.Evictions())
	}
	l.Configure(AdmissionConfig{}, 7)
	if n := count(Time(100*time.Millisecond), "192.0.2.1:1", 10); n != 10 || l.On() {
		t.Fatalf("off: %d allowed, want 10", n)
	}
}

// TestSourceLimiterAllocs: Allow allocates nothing, for IPv4 and IPv6.
func TestSourceLimiterAllocs(t *testing.T) {
	var l SourceLimiter
	l.Configure(AdmissionConfig{Interval: time.Millisecond, Burst: 2}, 1)
	v4, v6 := netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("[2001:db8::1]:1")
	now := Time(0)
	if n := testing.AllocsPerRun(1000, func() {
		now += 10
		l.Allow(now, v4)
		l.Allow(now, v6)
	}); n != 0 {
		t.Fatalf("%v allocations per Allow pair, want 0", n)
	}
}

// BenchmarkSourceLimiterAllow: one Allow per op over 1024 sources, under a
// limit that admits them all (the DNS-mode query path's added cost).
func BenchmarkSourceLimiterAllow(b *testing.B) {
	var l SourceLimiter
	l.Configure(AdmissionConfig{Interval: time.Nanosecond, Burst: 1000}, 1)
	srcs := make([]netip.AddrPort, 1024)
	for i := range srcs {
		srcs[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 53)
	}
	now := Time(0)
	for i := 0; b.Loop(); i++ {
		now += 10
		l.Allow(now, srcs[i&1023])
	}
}
