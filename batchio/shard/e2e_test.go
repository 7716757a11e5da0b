package shard

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/core"
)

// End-to-end tests of the data plane: real sockets on loopback, a Group of
// shards, test backends and clients (testutil_test.go). Counters are
// published once per loop iteration, so tests poll them with deadlines.

func TestE2EForwardAndReturn(t *testing.T) {
	t.Parallel()
	be := newBackend(t, backendOpts{Prefix: "b0:"})
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}})
	o.Shards = 2
	g := startGroup(t, o)
	c1, c2 := newClient(t, g.addr()), newClient(t, g.addr())

	allBytes := make([]byte, 256) // every byte value, NULs included
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	payloads := []string{"one", "two", "three", string(allBytes), "five"}
	var rxBytes, txBytes uint64
	for _, p := range payloads {
		p1, p2 := "1"+p, "2"+p
		c1.send(p1)
		c2.send(p2)
		// Each reply reaches the socket that sent the query (expect checks
		// payload and source).
		c1.expect("b0:" + p1)
		c2.expect("b0:" + p2)
		rxBytes += uint64(len(p1) + len(p2))
		txBytes += uint64(len(p1) + len(p2) + 2*len("b0:"))
	}

	got := be.waitReceived(t, 2*len(payloads))
	if len(got) != 2*len(payloads) {
		t.Fatalf("backend received %d datagrams, want %d", len(got), 2*len(payloads))
	}
	// Payloads arrive verbatim, and each client's datagrams come from one
	// upstream socket (one flow), different from the other client's.
	src := map[byte]netip.AddrPort{}
	var want1, want2, got1, got2 []string
	for _, p := range payloads {
		want1, want2 = append(want1, "1"+p), append(want2, "2"+p)
	}
	for _, d := range got {
		if !d.From.Addr().IsLoopback() {
			t.Errorf("backend saw source %v, want a loopback address", d.From)
		}
		k := d.Payload[0]
		if s, ok := src[k]; ok && s != d.From {
			t.Errorf("client %c: datagrams from %v and %v, want one flow", k, s, d.From)
		}
		src[k] = d.From
		if k == '1' {
			got1 = append(got1, d.Payload)
		} else {
			got2 = append(got2, d.Payload)
		}
	}
	if !slices.Equal(got1, want1) || !slices.Equal(got2, want2) {
		t.Errorf("backend received %q and %q, want %q and %q", got1, got2, want1, want2)
	}
	if src['1'] == src['2'] {
		t.Errorf("both clients share upstream socket %v", src['1'])
	}

	n := uint64(2 * len(payloads))
	g.waitListener(t, "rx datagrams", ListenerRxDatagrams, n)
	g.waitListener(t, "tx datagrams", ListenerTxDatagrams, n)
	for _, c := range []struct {
		name string
		get  func() uint64
		want uint64
	}{
		{"listener rx bytes", func() uint64 { return g.listener(ListenerRxBytes) }, rxBytes},
		{"listener tx bytes", func() uint64 { return g.listener(ListenerTxBytes) }, txBytes},
		{"flows created", func() uint64 { return g.listener(ListenerFlowsCreated) }, 2},
		{"flows evicted", func() uint64 { return g.listener(ListenerFlowsEvicted) }, 0},
		{"shard rx datagrams", func() uint64 { return g.shard(ShardRxDatagrams) }, n},
		{"backend datagrams in", func() uint64 { return g.backend(0, BackendDatagramsIn) }, n},
		{"backend bytes in", func() uint64 { return g.backend(0, BackendBytesIn) }, rxBytes},
		{"backend datagrams out", func() uint64 { return g.backend(0, BackendDatagramsOut) }, n},
		{"backend bytes out", func() uint64 { return g.backend(0, BackendBytesOut) }, txBytes},
		{"upstream sockets opened", func() uint64 { return g.backend(0, BackendSocketsOpened) }, 2},
		{"upstream sockets closed", func() uint64 { return g.backend(0, BackendSocketsClosed) }, 0},
	} {
		waitValue(t, c.name, c.get, c.want)
	}
	for r := core.DropReason(1); int(r) < core.NumDropReasons; r++ {
		if v := g.drop(r); v != 0 {
			t.Errorf("drops %v = %d, want 0", r, v)
		}
	}
}

// TestGroupEphemeralPortIsExclusive is a regression test: a listener with
// port 0 was bound straight to port 0 with SO_REUSEADDR and SO_REUSEPORT, and
// the kernel then picks among ports that other SO_REUSEADDR sockets hold
// (udp_lib_lport_inuse ignores pairs that both have it). The group could
// share the port, and the SO_REUSEPORT group, of another listener and serve
// part of its traffic; parallel tests lost replies that way. Not parallel: it
// holds thousands of ports. They are held on an address of its own, so that
// SO_REUSEPORT sockets of tests running in other processes cannot land on
// them and lose datagrams to them.
func TestGroupEphemeralPortIsExclusive(t *testing.T) {
	// With 5000 of the ~28k ephemeral ports held, each buggy bind collided
	// with a chance near 1/6; 30 groups missed the bug 0.3% of the time.
	const held, groups, addr = 5000, 30, "127.0.0.77:0"
	taken := map[uint16]bool{}
	for range held {
		fd, err := batchio.ListenUDP(netip.MustParseAddrPort(addr), batchio.ListenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		a, err := batchio.LocalAddr(fd)
		if err != nil {
			t.Fatal(err)
		}
		taken[a.Port()] = true
	}
	for range groups {
		g, err := NewGroup(oneListener(addr, core.ClusterConfig{}, fixedPicker{}))
		if err != nil {
			t.Fatal(err)
		}
		port := g.Addrs()[0].Port()
		g.close()
		if taken[port] {
			t.Fatalf("group listener got port %d, which another SO_REUSEPORT listener holds", port)
		}
	}
}

func TestE2EResponsesCap(t *testing.T) {
	t.Parallel()
	t.Run("responses=1", func(t *testing.T) {
		t.Parallel()
		be := newBackend(t, backendOpts{Prefix: "b:"})
		g := startGroup(t, oneListener("127.0.0.1:0", core.ClusterConfig{Responses: 1}, fixedPicker{{ID: 0, Addr: be.Addr}}))
		c := newClient(t, g.addr())
		const n = 5
		for i := range n {
			c.roundTrip("b:", fmt.Sprintf("q%d", i))
		}
		// Every query was a flow of its own, closed by its reply.
		g.waitListener(t, "flows created", ListenerFlowsCreated, n)
		g.waitListener(t, "flows evicted", ListenerFlowsEvicted, n)
		waitValue(t, "open upstream sockets", func() uint64 { return g.openSockets(0) }, 0)
	})
	t.Run("responses=2", func(t *testing.T) {
		t.Parallel()
		// The backend answers each query three times; only two answers
		// may reach the client.
		be := newBackend(t, backendOpts{Prefix: "b:", Answers: 3})
		g := startGroup(t, oneListener("127.0.0.1:0", core.ClusterConfig{Responses: 2}, fixedPicker{{ID: 0, Addr: be.Addr}}))
		c := newClient(t, g.addr())
		c.send("q")
		c.expect("b:q")
		c.expect("b:q")
		g.waitListener(t, "flows evicted", ListenerFlowsEvicted, 1)
		waitValue(t, "open upstream sockets", func() uint64 { return g.openSockets(0) }, 0)
		c.expectSilence() // the flow is closed: the third answer cannot follow
		if v := g.listener(ListenerTxDatagrams); v != 2 {
			t.Errorf("tx datagrams %d, want 2", v)
		}
		// The next query opens a new flow.
		c.send("r")
		c.expect("b:r")
		c.expect("b:r")
		g.waitListener(t, "flows created", ListenerFlowsCreated, 2)
		g.waitListener(t, "flows evicted", ListenerFlowsEvicted, 2)
	})
}

// TestE2ERequestsCap checks nginx's semantics for requests=N: the N-th
// request's reply still arrives (the seed closed the upstream socket after
// the N-th request and lost it), and the next request starts a new flow.
func TestE2ERequestsCap(t *testing.T) {
	t.Parallel()
	be := newBackend(t, backendOpts{Prefix: "b:", Delay: 100 * time.Millisecond})
	g := startGroup(t, oneListener("127.0.0.1:0", core.ClusterConfig{Requests: 2}, fixedPicker{{ID: 0, Addr: be.Addr}}))
	c := newClient(t, g.addr())
	// All three leave before the first reply comes back.
	for _, p := range []string{"r1", "r2", "r3"} {
		c.send(p)
	}
	var replies []string
	for range 3 {
		d, err := c.recv(replyTimeout)
		if err != nil {
			t.Fatalf("after %q: %v", replies, err)
		}
		if d.From != g.addr() {
			t.Errorf("reply %q from %v, want %v", d.Payload, d.From, g.addr())
		}
		replies = append(replies, d.Payload)
	}
	slices.Sort(replies)
	if want := []string{"b:r1", "b:r2", "b:r3"}; !slices.Equal(replies, want) {
		t.Fatalf("replies %q, want %q", replies, want)
	}
	got := be.waitReceived(t, 3)
	from := map[string]netip.AddrPort{}
	for _, d := range got {
		from[d.Payload] = d.From
	}
	if from["r1"] != from["r2"] {
		t.Errorf("r1 from %v, r2 from %v: want one flow", from["r1"], from["r2"])
	}
	if from["r3"] == from["r1"] {
		t.Errorf("r3 from %v like r1: want a new flow after requests=2", from["r3"])
	}
	g.waitListener(t, "flows created", ListenerFlowsCreated, 2)
	// The detached flow stays open for replies until its back timeout.
	if v := g.listener(ListenerFlowsEvicted); v != 0 {
		t.Errorf("flows evicted %d, want 0", v)
	}
	if v := g.openSockets(0); v != 2 {
		t.Errorf("open upstream sockets %d, want 2", v)
	}
}

func TestE2EIdleExpiry(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	be := newBackend(t, backendOpts{Prefix: "b:"})
	cc := core.ClusterConfig{FrontTimeout: timeout, BackTimeout: timeout}
	g := startGroup(t, oneListener("127.0.0.1:0", cc, fixedPicker{{ID: 0, Addr: be.Addr}}))
	c := newClient(t, g.addr())
	sent := time.Now()
	c.roundTrip("b:", "a")
	g.waitListener(t, "flows evicted", ListenerFlowsEvicted, 1)
	// The query and the reply, both read after sent, each set the deadline
	// to their arrival + a timeout. (How much later the flow closed depends
	// on the load; no upper bound is checked.)
	if d := time.Since(sent); d < timeout {
		t.Errorf("flow closed %v after the query, before the %v timeout", d, timeout)
	}
	waitValue(t, "open upstream sockets", func() uint64 { return g.openSockets(0) }, 0)
	c.roundTrip("b:", "b")
	g.waitListener(t, "flows created", ListenerFlowsCreated, 2)
	if v := g.backend(0, BackendSocketsOpened); v != 2 {
		t.Errorf("upstream sockets opened %d, want 2", v)
	}
}

func TestE2EMaxFlowsShedding(t *testing.T) {
	t.Parallel()
	be := newBackend(t, backendOpts{Prefix: "b:"})
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}})
	o.Core.MaxFlows = 2
	g := startGroup(t, o)
	a, b, c := newClient(t, g.addr()), newClient(t, g.addr()), newClient(t, g.addr())
	a.roundTrip("b:", "a1")
	b.roundTrip("b:", "b1")
	c.send("c1")
	g.waitDrop(t, core.DropShed, 1)
	c.expectSilence()
	// The live flows are unaffected.
	a.roundTrip("b:", "a2")
	b.roundTrip("b:", "b2")
	c.send("c2")
	g.waitDrop(t, core.DropShed, 2)
	if v := g.listener(ListenerFlowsCreated); v != 2 {
		t.Errorf("flows created %d, want 2", v)
	}
	for _, d := range be.received() {
		if strings.HasPrefix(d.Payload, "c") {
			t.Errorf("shed datagram %q reached the backend", d.Payload)
		}
	}
}

func TestE2EProxyProtocol(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		mode   core.ProxyMode
		addr   string
		family byte
		len    int
	}{
		{"first/ipv4", core.ProxyFirst, "127.0.0.1:0", 0x12, core.ProxyHeaderLenIPv4},
		{"every/ipv4", core.ProxyEvery, "127.0.0.1:0", 0x12, core.ProxyHeaderLenIPv4},
		{"first/ipv6", core.ProxyFirst, "[::1]:0", 0x22, core.ProxyHeaderLenIPv6},
		{"every/ipv6", core.ProxyEvery, "[::1]:0", 0x22, core.ProxyHeaderLenIPv6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			be := newBackend(t, backendOpts{Addr: tc.addr, Prefix: "b:", Proxy: true})
			cc := core.ClusterConfig{ProxyProtocol: tc.mode}
			g := startGroup(t, oneListener(tc.addr, cc, fixedPicker{{ID: 0, Addr: be.Addr}}))
			c := newClient(t, g.addr())
			payloads := []string{"p1", "p2\x00\xff", "p3"}
			for _, p := range payloads {
				c.roundTrip("b:", p) // the backend echoes the payload after the header
			}
			got := be.waitReceived(t, len(payloads))
			for i, d := range got {
				if d.Payload != payloads[i] {
					t.Errorf("datagram %d: payload %q, want %q", i, d.Payload, payloads[i])
				}
				wantHeader := i == 0 || tc.mode == core.ProxyEvery
				if (d.Header != nil) != wantHeader {
					t.Errorf("datagram %d: header %+v, want one: %v", i, d.Header, wantHeader)
					continue
				}
				if d.Header == nil {
					continue
				}
				h := *d.Header
				if h.Len != tc.len || h.Family != tc.family {
					t.Errorf("datagram %d: header of %d bytes, family %#x; want %d, %#x", i, h.Len, h.Family, tc.len, tc.family)
				}
				if h.Src != c.Addr() || h.Dst != g.addr() {
					t.Errorf("datagram %d: header %v -> %v, want client %v -> listener %v", i, h.Src, h.Dst, c.Addr(), g.addr())
				}
			}
		})
	}
}

func TestE2EIPv6(t *testing.T) {
	t.Parallel()
	be := newBackend(t, backendOpts{Addr: "[::1]:0", Prefix: "b6:"})
	g := startGroup(t, oneListener("[::1]:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}}))
	if !g.addr().Addr().Is6() {
		t.Fatalf("listener bound to %v", g.addr())
	}
	c := newClient(t, g.addr())
	for i := range 3 {
		c.roundTrip("b6:", fmt.Sprintf("v6-%d", i))
	}
	for _, d := range be.waitReceived(t, 3) {
		if d.From.Addr() != netip.IPv6Loopback() {
			t.Errorf("backend saw source %v, want [::1]", d.From)
		}
	}
	g.waitListener(t, "flows created", ListenerFlowsCreated, 1)
	g.waitListener(t, "tx datagrams", ListenerTxDatagrams, 3)
}

func TestE2EManyShards(t *testing.T) {
	t.Parallel()
	const shards, clients = 4, 40
	be := newBackend(t, backendOpts{Prefix: "b:"})
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}})
	o.Shards = shards
	g := startGroup(t, o)
	cs := make([]*testClient, clients)
	for i := range cs {
		cs[i] = newClient(t, g.addr())
	}
	for i, c := range cs {
		c.send(fmt.Sprintf("c%02d", i))
	}
	for i, c := range cs {
		c.expect(fmt.Sprintf("b:c%02d", i))
	}
	g.waitListener(t, "rx datagrams", ListenerRxDatagrams, clients)
	g.waitListener(t, "flows created", ListenerFlowsCreated, clients)
	var sum uint64
	busy := 0
	for i, s := range g.Shards() {
		v := s.Counters().Shard(ShardRxDatagrams)
		t.Logf("shard %d: %d datagrams", i, v)
		sum += v
		if v > 0 {
			busy++
		}
	}
	if sum != clients {
		t.Errorf("per-shard rx datagrams sum to %d, want %d", sum, clients)
	}
	// SO_REUSEPORT hashes the 4-tuple; 40 clients on one of 4 shards
	// would be a 4^-39 chance.
	if busy < 2 {
		t.Errorf("%d shard(s) received datagrams, want the load spread", busy)
	}
}

func TestE2EOneClientManyPorts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		affinity core.Affinity
	}{
		{"ip", core.AffinityIP},
		{"ip-port", core.AffinityIPPort},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const ports = 20
			b0 := newBackend(t, backendOpts{Prefix: "b0:"})
			b1 := newBackend(t, backendOpts{Prefix: "b1:"})
			p := fixedPicker{{ID: 0, Addr: b0.Addr}, {ID: 1, Addr: b1.Addr}}
			g := startGroup(t, oneListener("127.0.0.1:0", core.ClusterConfig{Affinity: tc.affinity}, p))
			cs := make([]*testClient, ports)
			for i := range cs {
				cs[i] = newClient(t, g.addr())
				cs[i].send(fmt.Sprintf("p%02d", i))
			}
			used := map[string]int{}
			for i, c := range cs {
				d, err := c.recv(replyTimeout)
				if err != nil {
					t.Fatalf("port %v: %v", c.Addr(), err)
				}
				name, payload, _ := strings.Cut(d.Payload, ":")
				if want := fmt.Sprintf("p%02d", i); payload != want || d.From != g.addr() {
					t.Fatalf("port %v: got %q from %v, want its own %q from %v", c.Addr(), d.Payload, d.From, want, g.addr())
				}
				used[name]++
			}
			g.waitListener(t, "flows created", ListenerFlowsCreated, ports) // a flow per port
			switch tc.affinity {
			case core.AffinityIP:
				// One key for every port: one backend.
				if len(used) != 1 {
					t.Errorf("replies by backend %v, want all from one", used)
				}
			case core.AffinityIPPort:
				// 20 keys on 2 backends: all on one would be a 2^-19 chance.
				if len(used) != 2 {
					t.Errorf("replies by backend %v, want both used", used)
				}
			}
		})
	}
}

func TestE2EOversizeAndEmpty(t *testing.T) {
	t.Parallel()
	const maxRx = 100
	be := newBackend(t, backendOpts{Prefix: "b:"})
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}})
	o.Core.MaxRxDatagramSize = maxRx
	g := startGroup(t, o)
	c := newClient(t, g.addr())
	c.roundTrip("b:", "ok")
	// sendCounted sends p and waits until the shard has read it.
	rx := uint64(1)
	sendCounted := func(p []byte) {
		t.Helper()
		c.sendTo(g.addr(), p)
		rx++
		g.waitListener(t, "rx datagrams", ListenerRxDatagrams, rx)
	}
	// checkDrops checks the two counters an oversize datagram may move:
	// each such datagram must be counted by exactly one of them.
	checkDrops := func(what string, truncated, oversize uint64) {
		t.Helper()
		waitUntil(t, waitTimeout, what+" to be counted", func() bool {
			return g.listener(ListenerTruncated)+g.drop(core.DropOversize) >= truncated+oversize
		})
		if tr, ov := g.listener(ListenerTruncated), g.drop(core.DropOversize); tr != truncated || ov != oversize {
			t.Errorf("after %s: truncated %d, oversize %d; want %d, %d", what, tr, ov, truncated, oversize)
		}
	}

	// The shell reads into max_rx+1 bytes: a longer datagram comes back
	// truncated (MSG_TRUNC) to max_rx+1 bytes, which the core drops as
	// oversize; it is never forwarded cut, nor counted twice.
	sendCounted(make([]byte, 2*maxRx))
	checkDrops("a 200-byte query", 0, 1)
	sendCounted(make([]byte, maxRx+1))
	checkDrops("a 101-byte query", 0, 2)
	// Replies are held to the same limit: exactly max_rx goes through,
	// one or two bytes more are dropped.
	reply100 := strings.Repeat("x", maxRx-2)
	c.roundTrip("b:", reply100)
	rx++
	sendCounted([]byte(strings.Repeat("y", maxRx-1)))
	checkDrops("a 101-byte reply", 0, 3)
	sendCounted([]byte(strings.Repeat("z", maxRx)))
	checkDrops("a 102-byte reply", 0, 4)
	// An empty datagram is invalid, even on a live flow.
	sendCounted(nil)
	g.waitDrop(t, core.DropInvalid, 1)
	c.roundTrip("b:", "ok2")

	got := be.waitReceived(t, 5)
	var payloads []string
	for _, d := range got {
		payloads = append(payloads, d.Payload)
	}
	if want := []string{"ok", reply100, strings.Repeat("y", maxRx-1), strings.Repeat("z", maxRx), "ok2"}; !slices.Equal(payloads, want) {
		t.Errorf("backend received %q, want %q", payloads, want)
	}
	c.expectSilence()
	if v := g.backend(0, BackendDatagramsIn); v != 5 {
		t.Errorf("backend datagrams in %d, want 5", v)
	}
	if v := g.listener(ListenerTxDatagrams); v != 3 {
		t.Errorf("tx datagrams %d, want 3", v)
	}
	if v := g.listener(ListenerFlowsCreated); v != 1 {
		t.Errorf("flows created %d, want 1", v)
	}
}

func TestE2ERefusingBackend(t *testing.T) {
	t.Parallel()
	dead := closedPort(t)
	cc := core.ClusterConfig{FrontTimeout: 500 * time.Millisecond, BackTimeout: 500 * time.Millisecond}
	g := startGroup(t, oneListener("127.0.0.1:0", cc, fixedPicker{{ID: 0, Addr: dead}}))
	c := newClient(t, g.addr())
	// The ICMP port-unreachable of one datagram surfaces as ECONNREFUSED on
	// the upstream socket's next receive (EPOLLERR) or send; keep sending
	// on the flow until it is counted.
	deadline := time.Now().Add(waitTimeout)
	sent := uint64(0)
	for g.backend(0, BackendRefused) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal counted after %d datagrams (forwarded %d)", sent, g.backend(0, BackendDatagramsIn))
		}
		c.send("x")
		sent++
		waitUntil(t, waitTimeout, "the datagram to be read", func() bool { return g.listener(ListenerRxDatagrams) >= sent })
		time.Sleep(20 * time.Millisecond)
	}
	if v := g.backend(0, BackendDatagramsIn); v == 0 {
		t.Errorf("no datagram forwarded to the backend")
	}
	// The flow idles out and its socket closes.
	waitUntil(t, waitTimeout, "the flow to idle out", func() bool {
		created := g.listener(ListenerFlowsCreated)
		return created > 0 && g.listener(ListenerFlowsEvicted) == created && g.openSockets(0) == 0
	})
	// The shard still serves: a new flow is created and forwarded.
	before := g.backend(0, BackendDatagramsIn)
	created := g.listener(ListenerFlowsCreated)
	c.send("y")
	g.waitListener(t, "flows created", ListenerFlowsCreated, created+1)
	waitValue(t, "backend datagrams in", func() uint64 { return g.backend(0, BackendDatagramsIn) }, before+1)
	c.expectSilence()
}

func TestE2EWildcardListener(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		listen  string
		targets []string // addresses clients send to
	}{
		{"ipv4", "0.0.0.0:0", []string{"127.0.0.2", "127.0.0.1"}},
		{"dual-stack", "[::]:0", []string{"127.0.0.2", "::1", "127.0.0.1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			be := newBackend(t, backendOpts{Prefix: "b:", Proxy: true})
			cc := core.ClusterConfig{ProxyProtocol: core.ProxyFirst}
			g := startGroup(t, oneListener(tc.listen, cc, fixedPicker{{ID: 0, Addr: be.Addr}}))
			port := g.addr().Port()
			for i, target := range tc.targets {
				to := netip.AddrPortFrom(netip.MustParseAddr(target), port)
				c := newClient(t, to)
				p := fmt.Sprintf("w%d", i)
				c.send(p)
				// expect checks the reply's source is to: the address the
				// client sent to, not the wildcard or the primary address.
				c.expect("b:" + p)
				got := be.waitReceived(t, i+1)
				d := got[i]
				if d.Payload != p {
					t.Fatalf("backend got %q, want %q", d.Payload, p)
				}
				if d.Header == nil {
					t.Fatalf("%s: no PROXY header", p)
				}
				// The destination is the address the client sent to.
				if d.Header.Dst != to || d.Header.Src != c.Addr() {
					t.Errorf("%s: PROXY %v -> %v, want %v -> %v", p, d.Header.Src, d.Header.Dst, c.Addr(), to)
				}
			}
			g.waitListener(t, "flows created", ListenerFlowsCreated, uint64(len(tc.targets)))
		})
	}
}

func TestE2ETOS(t *testing.T) {
	t.Parallel()
	const ect0, ect1 = 0x02, 0x01
	for _, tc := range []struct{ name, addr string }{
		{"ipv4", "127.0.0.1:0"},
		{"ipv6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			be := newBackend(t, backendOpts{Addr: tc.addr, Prefix: "b:", RecvTOS: true, ReplyTOS: ect1})
			g := startGroup(t, oneListener(tc.addr, core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}}))
			c := newClient(t, g.addr())
			is6 := g.addr().Addr().Is6()
			setSockopt(t, c.conn, is6, unix.IP_TOS, unix.IPV6_TCLASS, ect0)
			setSockopt(t, c.conn, is6, unix.IP_RECVTOS, unix.IPV6_RECVTCLASS, 1)
			c.send("ecn")
			r := c.expect("b:ecn")
			d := be.waitReceived(t, 1)[0]
			if d.TOS != ect0 {
				t.Errorf("backend got TOS %#x, want %#x", d.TOS, ect0)
			}
			if r.TOS != ect1 {
				t.Errorf("client got TOS %#x, want %#x", r.TOS, ect1)
			}
		})
	}
}

func TestE2EGracefulStop(t *testing.T) {
	t.Parallel()
	t.Run("flow finishes", func(t *testing.T) {
		t.Parallel()
		gate := make(chan struct{})
		be := newBackend(t, backendOpts{Prefix: "b:", Gate: gate})
		defer func() {
			select {
			case <-gate:
			default:
				close(gate)
			}
		}()
		g := startGroup(t, oneListener("127.0.0.1:0", core.ClusterConfig{Responses: 1}, fixedPicker{{ID: 0, Addr: be.Addr}}))
		a, b := newClient(t, g.addr()), newClient(t, g.addr())
		a.send("a")
		be.waitReceived(t, 1)
		// A grace far beyond the test's wait: Wait must return because the
		// last flow closed, not because the grace ran out.
		g.Stop(time.Hour)
		waitValue(t, "control messages applied", func() uint64 { return g.shard(ShardControl) }, 1)
		b.send("b")
		g.waitDrop(t, core.DropDraining, 1)
		b.expectSilence()
		close(gate)
		a.expect("b:a")
		if err := g.wait(waitTimeout); err != nil {
			t.Fatal(err)
		}
		if v := g.listener(ListenerFlowsCreated); v != 1 {
			t.Errorf("flows created %d, want 1", v)
		}
		if v := g.openSockets(0); v != 0 {
			t.Errorf("open upstream sockets %d after stop, want 0", v)
		}
	})
	t.Run("grace runs out", func(t *testing.T) {
		t.Parallel()
		const grace = 300 * time.Millisecond
		be := newBackend(t, backendOpts{Silent: true})
		g := startGroup(t, oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}}))
		c := newClient(t, g.addr())
		c.send("a")
		be.waitReceived(t, 1)
		start := time.Now()
		g.Stop(grace)
		if err := g.wait(waitTimeout); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < grace {
			t.Errorf("stopped after %v, before the %v grace", d, grace)
		}
		if e, o := g.listener(ListenerFlowsEvicted), g.openSockets(0); e != 1 || o != 0 {
			t.Errorf("after stop: %d flows evicted, %d upstream sockets open; want 1, 0", e, o)
		}
	})
}

// TestE2EForwardAllocs checks that forwarding on established flows allocates
// nothing per datagram, across the whole process: the test's clients and
// backend use ReadFromUDPAddrPort / WriteToUDPAddrPort with fixed buffers,
// which do not allocate either. It is not parallel: the count is global.
func TestE2EForwardAllocs(t *testing.T) {
	if raceEnabled() {
		t.Skip("the race detector allocates")
	}
	const flows, rounds, warmup = 10, 200, 20
	be := newBackend(t, backendOpts{Prefix: "e:", NoRecord: true})
	g := startGroup(t, oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}}))
	to := g.addr()
	cs := make([]*testClient, flows)
	for i := range cs {
		cs[i] = newClient(t, to)
		_ = cs[i].conn.SetReadDeadline(time.Now().Add(time.Minute))
	}
	payload := []byte(strings.Repeat("0123456789abcdef", 4))
	buf := make([]byte, 2048)
	errShort := errors.New("short or misdirected reply")
	exchange := func(rounds int) error {
		for range rounds {
			for _, c := range cs {
				if _, err := c.conn.WriteToUDPAddrPort(payload, to); err != nil {
					return err
				}
			}
			for _, c := range cs {
				n, from, err := c.conn.ReadFromUDPAddrPort(buf)
				if err != nil {
					return err
				}
				if n != len(payload)+2 || from != to {
					return errShort
				}
			}
		}
		return nil
	}
	if err := exchange(warmup); err != nil {
		t.Fatal(err)
	}
	// allocs:objects leaves out tiny objects; tiny blocks count in the
	// second metric. A GC before each read flushes the per-P caches, whose
	// counts are otherwise published late. The first read is not used: the
	// process's first GC cycle allocates for itself (about 50 objects).
	samples := []metrics.Sample{{Name: "/gc/heap/allocs:objects"}, {Name: "/gc/heap/tiny/allocs:objects"}}
	read := func() uint64 {
		runtime.GC()
		metrics.Read(samples)
		return samples[0].Value.Uint64() + samples[1].Value.Uint64()
	}
	read()
	before := read()
	if err := exchange(rounds); err != nil {
		t.Fatal(err)
	}
	objects := read() - before
	perDatagram := float64(objects) / float64(flows*rounds)
	t.Logf("%d objects for %d datagrams forwarded and %d returned: %.4f per datagram", objects, flows*rounds, flows*rounds, perDatagram)
	if perDatagram >= 0.05 {
		t.Errorf("%.4f allocations per datagram, want ~0", perDatagram)
	}
	waitValue(t, "flows created", func() uint64 { return g.listener(ListenerFlowsCreated) }, flows)
}

func TestE2ECollector(t *testing.T) {
	t.Parallel()
	const clients = 6
	be := newBackend(t, backendOpts{Prefix: "b:"})
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}})
	o.Shards = 2
	g := startGroup(t, o)
	for i := range clients {
		newClient(t, g.addr()).roundTrip("b:", fmt.Sprintf("m%d", i))
	}
	c := newClient(t, g.addr())
	c.sendTo(g.addr(), nil)
	g.waitDrop(t, core.DropInvalid, 1)
	g.cancel() // closes every flow at once
	if err := g.wait(waitTimeout); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(g.Shards(), []ListenerLabels{{Listener: "l", Cluster: "c"}}, []BackendLabels{{Cluster: "c", Backend: "b0"}}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var shardSum float64
	for i, s := range g.Shards() {
		want := float64(s.Counters().Shard(ShardRxDatagrams))
		got := gatheredValue(t, mfs, "fastudp_shard_rx_datagrams_total", "shard", fmt.Sprint(i))
		if got != want {
			t.Errorf("shard %d: rx datagrams %v, want %v", i, got, want)
		}
		shardSum += got
	}
	if shardSum != clients+1 {
		t.Errorf("shard rx datagrams sum to %v, want %d", shardSum, clients+1)
	}
	l := []string{"listener", "l", "cluster", "c"}
	b := []string{"cluster", "c", "backend", "b0"}
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"fastudp_listener_rx_datagrams_total", l, clients + 1},
		{"fastudp_listener_tx_datagrams_total", l, clients},
		{"fastudp_listener_tx_bytes_total", l, clients * float64(len("b:m0"))},
		{"fastudp_flows_created_total", l, clients},
		{"fastudp_flows_evicted_total", l, clients},
		{"fastudp_flows_active", l, 0},
		{"fastudp_flows_shed_total", l, 0},
		{"fastudp_drops_total", append(l, "reason", "invalid"), 1},
		{"fastudp_drops_total", append(l, "reason", "oversize"), 0},
		{"fastudp_drops_total", append(l, "reason", "truncated"), 0},
		{"fastudp_backend_tx_datagrams_total", b, clients},
		{"fastudp_backend_rx_datagrams_total", b, clients},
		{"fastudp_upstream_sockets", b, 0},
		{"fastudp_upstream_refused_total", b, 0},
	} {
		if got := gatheredValue(t, mfs, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}

// gatheredValue returns the value of the metric name whose labels include
// the given name/value pairs, failing the test if there is none.
func gatheredValue(t *testing.T, mfs []*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no metric %s%v", name, labels)
	return 0
}

// TestCollectorGaugesConsistent is a regression test: the collector computed
// flows_active as created - evicted (and upstream_sockets as opened - closed)
// reading created first, so a shard publishing between the two reads could
// make the difference negative, which wrapped around to about 1.8e19. Many
// idle shards widen the gap between the two reads of the busy one, which
// opens and closes a flow per publish. Not parallel: it needs both CPUs.
func TestCollectorGaugesConsistent(t *testing.T) {
	const idle = 500
	shards := make([]*Shard, 1+idle)
	for i := range shards {
		shards[i] = &Shard{counters: newCounters(1, 1)}
	}
	busy := shards[0].counters
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() { // the busy shard's loop
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			busy.addListener(0, ListenerFlowsCreated, 1)
			busy.addBackend(0, BackendSocketsOpened, 1)
			busy.publish()
			busy.addListener(0, ListenerFlowsEvicted, 1)
			busy.addBackend(0, BackendSocketsClosed, 1)
			busy.publish()
		}
	}()
	defer func() { close(stop); <-stopped }()
	col := NewCollector(shards, []ListenerLabels{{Listener: "l", Cluster: "c"}}, []BackendLabels{{Cluster: "c", Backend: "b"}})
	gauges := map[string]bool{"fastudp_flows_active": true, "fastudp_upstream_sockets": true}
	for end := time.Now().Add(200 * time.Millisecond); time.Now().Before(end); {
		ch := make(chan prometheus.Metric, 256)
		go func() { col.Collect(ch); close(ch) }()
		for m := range ch {
			if !gauges[descName(m.Desc())] {
				continue
			}
			var d dto.Metric
			if err := m.Write(&d); err != nil {
				t.Fatal(err)
			}
			// A live count read apart from its partner may run ahead
			// (the shard went on), never below zero.
			if v := d.GetGauge().GetValue(); v < 0 || v > 1e15 {
				t.Fatalf("%v = %v", m.Desc(), v)
			}
		}
	}
}

// descName extracts fqName from a Desc's String form.
func descName(d *prometheus.Desc) string {
	s := d.String()
	_, s, _ = strings.Cut(s, `fqName: "`)
	s, _, _ = strings.Cut(s, `"`)
	return s
}
