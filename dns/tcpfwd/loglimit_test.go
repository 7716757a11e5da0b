package tcpfwd

import (
	"net/netip"
	"testing"
	"time"
)

func Test_logLimiter(t *testing.T) {
	a := netip.MustParseAddrPort("192.0.2.1:53")
	b := netip.MustParseAddrPort("192.0.2.2:53")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		name string
		key  netip.AddrPort
		at   time.Duration
		want bool
	}{
		{name: "first a", key: a, at: 0, want: true},
		{name: "a again at once", key: a, at: time.Second, want: false},
		{name: "b is separate", key: b, at: time.Second, want: true},
		{name: "a just inside the minute", key: a, at: time.Minute - 1, want: false},
		{name: "a after a minute", key: a, at: time.Minute, want: true},
		{name: "a counted from the last log", key: a, at: time.Minute + 30*time.Second, want: false},
	}
	l := newLogLimiter(time.Minute)
	for _, st := range steps {
		if got := l.allow(st.key, t0.Add(st.at)); got != st.want {
			t.Errorf("%s: allow = %v, want %v", st.name, got, st.want)
		}
	}
}

// Test_logLimiter_bounded checks that distinct keys cannot grow the map
// past maxLimiterKeys.
func Test_logLimiter_bounded(t *testing.T) {
	l := newLogLimiter(time.Minute)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 3 * maxLimiterKeys {
		key := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(i+1))
		if !l.allow(key, now) {
			t.Fatalf("key %d refused on first use", i)
		}
		if len(l.last) > maxLimiterKeys {
			t.Fatalf("map grew to %d keys", len(l.last))
		}
	}
}
