package shard

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/dns"
)

// dnsLimitGroup starts a one-shard DNS-mode group with the per-source limit
// ac.
func dnsLimitGroup(t *testing.T, backend netip.AddrPort, o DNSListener, ac core.AdmissionConfig) *testGroup {
	t.Helper()
	g := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: backend}})
	g.Listeners[0].DNS = &o
	g.Core.Admission = ac
	return startGroup(t, g)
}

// dnsClientFrom is dnsClient bound to source address src.
func dnsClientFrom(t *testing.T, src string, to netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(src)), net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sendQueries sends n queries with IDs first, first+1, ... and returns the
// IDs answered, reading until quiet.
func sendQueries(t *testing.T, c *net.UDPConn, first uint16, n int) map[uint16]bool {
	t.Helper()
	for i := range n {
		if _, err := c.Write(query(t, first+uint16(i), "limit.example.test.")); err != nil {
			t.Fatal(err)
		}
	}
	got := map[uint16]bool{}
	for {
		a, err := readAnswer(c, 300*time.Millisecond)
		if err != nil {
			return got
		}
		got[dns.ID(a)] = true
	}
}

// applied returns once every shard has applied the control messages sent
// before it (the shards answer a flows request after them, in order).
func applied(t *testing.T, g *testGroup) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := g.Flows(ctx, 0); err != nil {
		t.Fatal(err)
	}
}

// dnsRateLimitedMetric reads fastudp_dns_rate_limited_total of listener 0.
func dnsRateLimitedMetric(t *testing.T, g *testGroup) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewDNSCollector(g.Shards(), []ListenerLabels{{Listener: "l", Cluster: "c"}},
		func() []BackendLabels { return nil }, []bool{true}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "fastudp_dns_rate_limited_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("fastudp_dns_rate_limited_total not exported")
	return 0
}

// TestDNSModeSourceRateLimit: with a burst of 3 and a rate of one an hour,
// a source's first 3 queries are answered and the rest dropped as
// rate_limited without reaching the backend; another source has its own
// bucket; the drop counter and fastudp_dns_rate_limited_total equal the
// refused count; a ConfigSetAdmission turns the limit off and on again.
func TestDNSModeSourceRateLimit(t *testing.T) {
	r := newDNSResponder(t)
	g := dnsLimitGroup(t, r.addr(), DNSListener{Sockets: 1, MaxInFlight: 100, Timeout: time.Second},
		core.AdmissionConfig{Interval: time.Hour, Burst: 3})
	c1 := dnsClientFrom(t, "127.0.0.1:0", g.addr())
	got := sendQueries(t, c1, 100, 10)
	if len(got) != 3 || !got[100] || !got[101] || !got[102] {
		t.Fatalf("flooding source: answers %v, want IDs 100..102", got)
	}
	waitValue(t, "rate_limited drops", func() uint64 { return g.drop(core.DropRateLimited) }, 7)
	if n, _ := r.stats(); n != 3 {
		t.Fatalf("backend got %d queries, want 3", n)
	}
	// Another source (127.0.0.2) has a bucket of its own; another port of
	// the flooding address shares its bucket (a source is an address).
	c2 := dnsClientFrom(t, "127.0.0.2:0", g.addr())
	if got := sendQueries(t, c2, 200, 3); len(got) != 3 {
		t.Fatalf("other source: %d answers, want 3", len(got))
	}
	c1b := dnsClientFrom(t, "127.0.0.1:0", g.addr())
	if got := sendQueries(t, c1b, 300, 2); len(got) != 0 {
		t.Fatalf("flooding source's second port: %d answers, want 0", len(got))
	}
	waitValue(t, "rate_limited drops", func() uint64 { return g.drop(core.DropRateLimited) }, 9)
	if v := dnsRateLimitedMetric(t, g); v != 9 {
		t.Fatalf("fastudp_dns_rate_limited_total = %v, want 9", v)
	}
	if q := g.listener(ListenerDNSQueries); q != 15 {
		t.Fatalf("queries %d, want 15", q)
	}

	// Reload: off, then on again with a burst of 1 (a fresh table).
	g.Broadcast(core.ConfigEvent{Kind: core.ConfigSetAdmission})
	applied(t, g)
	if got := sendQueries(t, c1, 400, 5); len(got) != 5 {
		t.Fatalf("limit off: %d answers, want 5", len(got))
	}
	g.Broadcast(core.ConfigEvent{Kind: core.ConfigSetAdmission, Admission: core.AdmissionConfig{Interval: time.Hour, Burst: 1}})
	applied(t, g)
	if got := sendQueries(t, c1, 500, 4); len(got) != 1 || !got[500] {
		t.Fatalf("limit on again, burst 1: answers %v, want ID 500", got)
	}
	waitValue(t, "rate_limited drops", func() uint64 { return g.drop(core.DropRateLimited) }, 12)
	if n, _ := r.stats(); n != 3+3+5+1 {
		t.Fatalf("backend got %d queries, want 12", n)
	}
}
