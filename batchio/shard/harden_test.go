package shard

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fastudp/fastudp/core"
)

// Hardening tests: per-source admission, the amplification guard and bad
// input on real sockets. Each bad input must be a counted drop (or filtered
// by the kernel), never a crash, and the shard must serve on afterwards.

// manualBackend is a UDP socket the test drives by hand: it reads what the
// proxy forwards and answers whatever the test says, from wherever.
type manualBackend struct {
	t    testing.TB
	conn *net.UDPConn
	buf  []byte
}

func newManualBackend(t testing.TB, bind string) *manualBackend {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(bind)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &manualBackend{t: t, conn: c, buf: make([]byte, 70000)}
}

func (b *manualBackend) addr() netip.AddrPort { return b.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// recv reads one forwarded datagram and the upstream socket it came from.
func (b *manualBackend) recv() ([]byte, netip.AddrPort) {
	b.t.Helper()
	_ = b.conn.SetReadDeadline(time.Now().Add(replyTimeout))
	n, from, err := b.conn.ReadFromUDPAddrPort(b.buf)
	if err != nil {
		b.t.Fatalf("backend: %v", err)
	}
	return bytes.Clone(b.buf[:n]), from
}

func (b *manualBackend) send(p []byte, to netip.AddrPort) {
	b.t.Helper()
	if _, err := b.conn.WriteToUDPAddrPort(p, to); err != nil {
		b.t.Fatalf("backend: send to %v: %v", to, err)
	}
}

// TestE2ESourceRateLimit: a source may open Burst flows, its further new
// flows are dropped as rate_limited and never reach the backend, its live
// flows go on, and another source is not affected.
func TestE2ESourceRateLimit(t *testing.T) {
	t.Parallel()
	be := newBackend(t, backendOpts{Prefix: "b:"})
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}})
	o.Core.Admission = core.AdmissionConfig{Interval: time.Hour, Burst: 2}
	g := startGroup(t, o)
	c1, c2, c3 := newClient(t, g.addr()), newClient(t, g.addr()), newClient(t, g.addr())
	c1.roundTrip("b:", "one")
	c2.roundTrip("b:", "two")
	c3.send("three")
	g.waitDrop(t, core.DropRateLimited, 1)
	c3.expectSilence()
	// The first two flows of the source still forward.
	c1.roundTrip("b:", "one-more")
	c2.roundTrip("b:", "two-more")
	// Another source (127.0.0.2) has a bucket of its own.
	other, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	c4 := &testClient{t: t, conn: other, to: g.addr(), buf: make([]byte, 70000), oob: make([]byte, 128)}
	c4.roundTrip("b:", "four")
	if got := be.count(); got != 5 {
		t.Errorf("backend received %d datagrams, want 5", got)
	}
	if v := g.listener(ListenerFlowsCreated); v != 3 {
		t.Errorf("flows created %d, want 3", v)
	}
}

// TestE2EAmplificationGuard: a backend that answers 50 times the request's
// size; with max_amplification 10 and a 600-byte allowance the first reply
// passes (500 of a 700-byte budget) and the next is dropped and counted,
// while a cluster without the guard forwards every reply.
func TestE2EAmplificationGuard(t *testing.T) {
	t.Parallel()
	const req = 10
	prefix := strings.Repeat("A", 49*req) // reply = 50 × request
	be := newBackend(t, backendOpts{Prefix: prefix})
	picker := fixedPicker{{ID: 0, Addr: be.Addr}}
	guarded := core.ClusterConfig{MaxAmplification: 10, AmplificationAllowance: 600}
	o := GroupOptions{
		Shards: 1,
		Listeners: []Listener{
			{Name: "guarded", Addr: netip.MustParseAddrPort("127.0.0.1:0"), Cluster: guarded},
			{Name: "open", Addr: netip.MustParseAddrPort("127.0.0.1:0"), Cluster: core.ClusterConfig{Cluster: 1}},
		},
		Backends: 1,
		Picker:   picker,
	}
	g := startGroup(t, o)
	q := strings.Repeat("q", req)
	c := newClient(t, g.Addrs()[0])
	c.roundTrip(prefix, q)
	c.send(q)
	g.waitDrop(t, core.DropAmplification, 1)
	c.expectSilence()
	// The flow is still open: the request reached the backend, and a
	// third request (budget 900 against 1000 sent) is refused again.
	c.send(q)
	g.waitDrop(t, core.DropAmplification, 2)
	c.expectSilence()
	if v := g.listener(ListenerFlowsCreated); v != 1 {
		t.Errorf("flows created %d, want 1", v)
	}
	if n := be.count(); n != 3 {
		t.Errorf("backend received %d requests, want 3", n)
	}
	open := newClient(t, g.Addrs()[1])
	for range 3 {
		open.roundTrip(prefix, q)
	}
}

// TestE2ELargestDatagrams: with max_rx_datagram_size at its largest, a
// 65,507-byte IPv4 datagram (the IPv4 maximum) goes through whole both ways,
// with GRO on and off. On IPv6 a 65,527-byte datagram (the IPv6 maximum) is
// larger than max_rx_datagram_size and is counted, never forwarded cut; a
// 65,507-byte one is accepted but cannot leave: fastudp never fragments
// (PMTUDISC_PROBE) and with its 48 bytes of headers it exceeds loopback's
// 65,536-byte MTU, so the send fails and is counted; 65,488 bytes, the
// largest that fits, go through.
func TestE2ELargestDatagrams(t *testing.T) {
	t.Parallel()
	pattern := func(n int) []byte { return bytes.Repeat([]byte("0123456789abcdef"), n/16+1)[:n] }
	expectBytes := func(t *testing.T, c *testClient, want []byte) {
		t.Helper()
		d, err := c.recv(replyTimeout)
		if err != nil {
			t.Fatalf("waiting for a %d-byte reply: %v", len(want), err)
		}
		if d.Payload != string(want) || d.From != c.to {
			t.Fatalf("got %d bytes from %v, want %d bytes (the same) from %v", len(d.Payload), d.From, len(want), c.to)
		}
	}
	for _, gro := range []bool{false, true} {
		name := "gro-off"
		if gro {
			name = "gro-on"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			be := newBackend(t, backendOpts{})
			o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}})
			o.Core.MaxRxDatagramSize = core.MaxDatagramSize
			o.GRO = gro
			g := startGroup(t, o)
			c := newClient(t, g.addr())
			big := pattern(core.MaxDatagramSize)
			c.sendTo(g.addr(), big)
			expectBytes(t, c, big)
			if got := be.waitReceived(t, 1); len(got[0].Payload) != len(big) {
				t.Fatalf("backend got %d bytes, want %d", len(got[0].Payload), len(big))
			}

			be6 := newBackend(t, backendOpts{Addr: "[::1]:0"})
			o6 := oneListener("[::1]:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be6.Addr}})
			o6.Core.MaxRxDatagramSize = core.MaxDatagramSize
			o6.GRO = gro
			g6 := startGroup(t, o6)
			c6 := newClient(t, g6.addr())
			c6.sendTo(g6.addr(), make([]byte, 65527))
			waitUntil(t, waitTimeout, "the 65527-byte datagram to be counted", func() bool {
				return g6.listener(ListenerTruncated)+g6.drop(core.DropOversize) == 1
			})
			c6.sendTo(g6.addr(), big)
			waitValue(t, "upstream send errors", func() uint64 { return g6.backend(0, BackendSendErrors) }, 1)
			c6.expectSilence()
			if n := be6.count(); n != 0 {
				t.Fatalf("backend received %d datagrams, want 0", n)
			}
			fits := pattern(65536 - 40 - 8)
			c6.sendTo(g6.addr(), fits)
			expectBytes(t, c6, fits)
		})
	}
}

// TestE2EBadBackendInput: what a backend (or anyone) sends to upstream
// sockets. An empty reply is a counted drop; a datagram from another address
// to an upstream socket's port is filtered by the kernel (the socket is
// connected) and never reaches the client; a reply to the socket of a closed
// flow reaches no one. The shard serves on.
func TestE2EBadBackendInput(t *testing.T) {
	t.Parallel()
	be := newManualBackend(t, "127.0.0.1:0")
	cc := core.ClusterConfig{Responses: 1}
	g := startGroup(t, oneListener("127.0.0.1:0", cc, fixedPicker{{ID: 0, Addr: be.addr()}}))
	c := newClient(t, g.addr())

	c.send("q1")
	p, upstream := be.recv()
	if string(p) != "q1" {
		t.Fatalf("backend got %q", p)
	}
	// An empty reply: counted invalid, nothing to the client, the flow
	// stays (it is not an answer).
	be.send(nil, upstream)
	g.waitDrop(t, core.DropInvalid, 1)
	c.expectSilence()
	// Another address sends to the upstream socket's port: the connected
	// socket never sees it.
	stranger := newManualBackend(t, "127.0.0.1:0")
	for range 3 {
		stranger.send([]byte("spoofed answer"), upstream)
	}
	time.Sleep(quietPeriod)
	if v := g.backend(0, BackendDatagramsOut); v != 0 {
		t.Fatalf("backend datagrams out %d after a stranger's datagrams, want 0", v)
	}
	c.expectSilence()
	// The real answer closes the flow (responses = 1) and reaches the client.
	be.send([]byte("a1"), upstream)
	c.expect("a1")
	waitValue(t, "open upstream sockets", func() uint64 { return g.openSockets(0) }, 0)
	// A late reply to the closed flow's socket: the port is closed (the
	// kernel answers port-unreachable), nothing reaches the client.
	be.send([]byte("late"), upstream)
	c.expectSilence()
	if v := g.backend(0, BackendDatagramsOut); v != 1 {
		t.Fatalf("backend datagrams out %d, want 1", v)
	}
	// The shard serves on.
	c.send("q2")
	p, upstream = be.recv()
	be.send(append(p, '!'), upstream)
	c.expect("q2!")
}

// TestE2EProxyHeaderLookalikes: fastudp writes PROXY v2 headers but never
// parses them. A client datagram that starts like one (the signature alone,
// a header cut short, a header with a bogus length) is opaque payload:
// forwarded whole, after fastudp's own header when the cluster sends one.
func TestE2EProxyHeaderLookalikes(t *testing.T) {
	t.Parallel()
	be := newBackend(t, backendOpts{Proxy: true})
	g := startGroup(t, oneListener("127.0.0.1:0", core.ClusterConfig{ProxyProtocol: core.ProxyEvery}, fixedPicker{{ID: 0, Addr: be.Addr}}))
	c := newClient(t, g.addr())
	bogusLen := append(append([]byte{}, proxySig...), 0x21, 0x12, 0xff, 0xff, 1, 2, 3)
	for _, p := range [][]byte{proxySig, proxySig[:7], append(append([]byte{}, proxySig...), 0x21), bogusLen} {
		c.sendTo(g.addr(), p)
		c.expect(string(p))
	}
	got := be.waitReceived(t, 4)
	for i, d := range got {
		if d.Header == nil || d.Header.Src != c.Addr() || d.Payload != string([][]byte{proxySig, proxySig[:7], append(append([]byte{}, proxySig...), 0x21), bogusLen}[i]) {
			t.Errorf("datagram %d: %+v, want fastudp's header from %v and the payload whole", i, d, c.Addr())
		}
	}
}

// TestE2ESourceEvictionsCounted: more sources refilling at once than a
// 64-entry table holds (16 sets of 4) make the core forget some; the shard
// publishes the count, and the collector exports it.
func TestE2ESourceEvictionsCounted(t *testing.T) {
	t.Parallel()
	be := newBackend(t, backendOpts{Prefix: "b:"})
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}})
	o.Core.Admission = core.AdmissionConfig{Interval: time.Hour, Burst: 1, TableSize: core.MinAdmissionTableSize}
	g := startGroup(t, o)
	const sources = 80
	for i := range sources {
		conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 1, byte(i+1))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		c := &testClient{t: t, conn: conn, to: g.addr(), buf: make([]byte, 2048), oob: make([]byte, 128)}
		c.roundTrip("b:", "hello")
	}
	// 80 sources in 16 sets of 4: at least 16 found their set full.
	waitUntil(t, waitTimeout, "source evictions to be published", func() bool { return g.shard(ShardSourceEvictions) >= sources-64 })
	if v := g.drop(core.DropRateLimited); v != 0 {
		t.Errorf("rate_limited drops %d, want 0 (each source opened one flow)", v)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(g.Shards(), []ListenerLabels{{Listener: "l", Cluster: "c"}}, []BackendLabels{{Cluster: "c", Backend: "b0"}}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "fastudp_source_evictions_total" {
			found = mf.GetMetric()[0].GetCounter().GetValue() >= sources-64
		}
	}
	if !found {
		t.Error("fastudp_source_evictions_total missing or too low")
	}
}
