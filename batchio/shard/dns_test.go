package shard

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/dns"
)

// dnsResponder is an in-test DNS backend: it answers each query by echoing
// it with QR set and, through hook, lets a test forge or withhold replies.
type dnsResponder struct {
	conn *net.UDPConn
	mu   sync.Mutex
	ids  map[uint16]int          // query IDs seen
	srcs map[netip.AddrPort]bool // source addresses seen
	hook func(q []byte) [][]byte // replies to send instead of the echo; nil: echo
	last netip.AddrPort          // source of the last query
	seen int
}

func newDNSResponder(t *testing.T) *dnsResponder {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &dnsResponder{conn: c, ids: map[uint16]int{}, srcs: map[netip.AddrPort]bool{}}
	t.Cleanup(func() { c.Close() })
	go r.serve()
	return r
}

func (r *dnsResponder) addr() netip.AddrPort { return r.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (r *dnsResponder) setHook(h func(q []byte) [][]byte) {
	r.mu.Lock()
	r.hook = h
	r.mu.Unlock()
}

func (r *dnsResponder) serve() {
	buf := make([]byte, 65536)
	for {
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		q := append([]byte(nil), buf[:n]...)
		r.mu.Lock()
		if len(q) >= 2 {
			r.ids[dns.ID(q)]++
		}
		r.srcs[from] = true
		r.last = from
		r.seen++
		hook := r.hook
		r.mu.Unlock()
		replies := [][]byte{echoAnswer(q)}
		if hook != nil {
			replies = hook(q)
		}
		for _, a := range replies {
			r.conn.WriteToUDPAddrPort(a, from)
		}
	}
}

func (r *dnsResponder) stats() (queries, sources int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen, len(r.srcs)
}

// echoAnswer turns a query into a response: the same bytes with QR set.
func echoAnswer(q []byte) []byte {
	a := append([]byte(nil), q...)
	if len(a) > 2 {
		a[2] |= 0x80
	}
	return a
}

func query(t testing.TB, id uint16, name string) []byte {
	t.Helper()
	q, err := dns.AppendQuery(nil, id, name, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func dnsGroup(t *testing.T, backend netip.AddrPort, o DNSListener) *testGroup {
	t.Helper()
	g := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: backend}})
	g.Listeners[0].DNS = &o
	return startGroup(t, g)
}

func dnsClient(t *testing.T, to netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readAnswer(c *net.UDPConn, timeout time.Duration) ([]byte, error) {
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(timeout))
	n, err := c.Read(buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// TestDNSModeSharesSocketsAndRestoresIDs sends queries with the same ID
// from many clients: the backend sees them on at most Sockets source
// addresses, each under an ID of the proxy's choosing, and every client gets
// its own answer under its own ID.
func TestDNSModeSharesSocketsAndRestoresIDs(t *testing.T) {
	r := newDNSResponder(t)
	g := dnsGroup(t, r.addr(), DNSListener{Sockets: 2, MaxInFlight: 100, Timeout: 5 * time.Second})
	const clients, rounds = 20, 5
	conns := make([]*net.UDPConn, clients)
	for i := range conns {
		conns[i] = dnsClient(t, g.addr())
	}
	for round := range rounds {
		for i, c := range conns {
			name := "c" + string(rune('a'+i)) + ".example.test."
			if _, err := c.Write(query(t, 0x4242, name)); err != nil {
				t.Fatal(err)
			}
			_ = round
		}
		for i, c := range conns {
			a, err := readAnswer(c, waitTimeout)
			if err != nil {
				t.Fatalf("client %d round %d: %v", i, round, err)
			}
			q, err := dns.ParseQuestion(a)
			if err != nil {
				t.Fatal(err)
			}
			want := "c" + string(rune('a'+i)) + ".example.test."
			if dns.ID(a) != 0x4242 || dns.NameString(q.Name) != want || a[2]&0x80 == 0 {
				t.Fatalf("client %d got id %#x name %s, want 0x4242 %s", i, dns.ID(a), dns.NameString(q.Name), want)
			}
		}
	}
	queries, sources := r.stats()
	if queries != clients*rounds || sources > 2 {
		t.Fatalf("backend saw %d queries from %d sources, want %d from at most 2", queries, sources, clients*rounds)
	}
	r.mu.Lock()
	if r.ids[0x4242] == clients*rounds {
		t.Error("IDs were not rewritten")
	}
	r.mu.Unlock()
	waitValue(t, "answers", func() uint64 { return g.backend(0, BackendDNSAnswers) }, clients*rounds)
	if n := g.openSockets(0); n != 2 {
		t.Fatalf("%d upstream sockets, want 2", n)
	}
	// Every query and answer went through a recvmmsg and a sendmmsg; batches
	// mean at most one call per datagram each way.
	recvs, sends := g.shard(ShardRecvmmsg), g.shard(ShardSendmmsg)
	if recvs == 0 || sends == 0 || sends > 2*clients*rounds {
		t.Fatalf("%d recvmmsg and %d sendmmsg calls for %d queries", recvs, sends, clients*rounds)
	}
}

// TestDNSModeDropsForgedReplies: a reply with the right ID but another
// question, and one with an ID not outstanding, are dropped and counted; the
// real answer still reaches the client, once.
func TestDNSModeDropsForgedReplies(t *testing.T) {
	r := newDNSResponder(t)
	r.setHook(func(q []byte) [][]byte {
		forged := echoAnswer(query(t, dns.ID(q), "evil.example.test."))
		unknown := echoAnswer(q)
		dns.SetID(unknown, dns.ID(q)+1)
		return [][]byte{forged, unknown, echoAnswer(q), echoAnswer(q)}
	})
	g := dnsGroup(t, r.addr(), DNSListener{Sockets: 1, MaxInFlight: 10, Timeout: 5 * time.Second})
	c := dnsClient(t, g.addr())
	if _, err := c.Write(query(t, 7, "good.example.test.")); err != nil {
		t.Fatal(err)
	}
	a, err := readAnswer(c, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := dns.ParseQuestion(a)
	if dns.ID(a) != 7 || dns.NameString(q.Name) != "good.example.test." {
		t.Fatalf("got %#x %s", dns.ID(a), dns.NameString(q.Name))
	}
	if _, err := readAnswer(c, 300*time.Millisecond); err == nil {
		t.Fatal("a second answer reached the client")
	}
	waitValue(t, "mismatched", func() uint64 { return g.backend(0, BackendDNSMismatched) }, 1)
	// The unknown ID and the duplicate answer.
	waitValue(t, "unknown", func() uint64 { return g.backend(0, BackendDNSUnknown) }, 2)
	waitValue(t, "answers", func() uint64 { return g.backend(0, BackendDNSAnswers) }, 1)
}

// TestDNSModeSpoofedSourceIgnored: a reply from another address than the
// backend's never reaches the proxy's connected socket.
func TestDNSModeSpoofedSourceIgnored(t *testing.T) {
	r := newDNSResponder(t)
	r.setHook(func(q []byte) [][]byte { return nil }) // the backend never answers
	g := dnsGroup(t, r.addr(), DNSListener{Sockets: 1, MaxInFlight: 10, Timeout: 5 * time.Second})
	c := dnsClient(t, g.addr())
	q := query(t, 9, "x.example.test.")
	if _, err := c.Write(q); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, waitTimeout, "query at the backend", func() bool { n, _ := r.stats(); return n == 1 })
	r.mu.Lock()
	proxySock := r.last
	r.mu.Unlock()
	// An attacker answering from another port, with every ID.
	evil, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer evil.Close()
	for id := range 1 << 16 {
		a := echoAnswer(q)
		dns.SetID(a, uint16(id))
		if _, err := evil.WriteToUDPAddrPort(a, proxySock); err != nil {
			t.Fatal(err)
		}
		if id%4096 == 4095 {
			time.Sleep(time.Millisecond) // keep the socket buffer from overflowing
		}
	}
	if a, err := readAnswer(c, 500*time.Millisecond); err == nil {
		t.Fatalf("a forged answer reached the client: %x", a)
	}
	if n := g.backend(0, BackendDNSAnswers) + g.backend(0, BackendDNSUnknown); n != 0 {
		t.Fatalf("the proxy read %d forged replies", n)
	}
}

// TestDNSModeIDExhaustionSheds: with one socket of 4 IDs and a silent
// backend, the 5th to 10th queries are shed and counted; after the timeout
// the 4 outstanding ones count as timeouts and their IDs are free again.
func TestDNSModeIDExhaustionSheds(t *testing.T) {
	r := newDNSResponder(t)
	r.setHook(func(q []byte) [][]byte { return nil })
	g := dnsGroup(t, r.addr(), DNSListener{Sockets: 1, MaxInFlight: 4, Timeout: 300 * time.Millisecond})
	c := dnsClient(t, g.addr())
	for i := range 10 {
		if _, err := c.Write(query(t, uint16(i), "s.example.test.")); err != nil {
			t.Fatal(err)
		}
	}
	waitValue(t, "shed", func() uint64 { return g.backend(0, BackendDNSShed) }, 6)
	waitValue(t, "timeouts", func() uint64 { return g.backend(0, BackendDNSTimeouts) }, 4)
	if n, _ := r.stats(); n != 4 {
		t.Fatalf("backend got %d queries, want 4", n)
	}
	if n, ok := g.Shards()[0].DNSInUse(0, 0); !ok || n != 0 {
		t.Fatalf("ids in use %d (socket open %v), want 0", n, ok)
	}
	r.setHook(nil)
	if _, err := c.Write(query(t, 99, "again.example.test.")); err != nil {
		t.Fatal(err)
	}
	if a, err := readAnswer(c, waitTimeout); err != nil || dns.ID(a) != 99 {
		t.Fatalf("after the timeouts: %v", err)
	}
}

// TestDNSModeMalformedQueries: each kind of bad query is a counted drop and
// never reaches the backend.
func TestDNSModeMalformedQueries(t *testing.T) {
	r := newDNSResponder(t)
	g := dnsGroup(t, r.addr(), DNSListener{Sockets: 1, MaxInFlight: 10, Timeout: time.Second})
	c := dnsClient(t, g.addr())
	good := query(t, 1, "ok.example.test.")
	twoQ := append([]byte(nil), good...)
	twoQ[5] = 2
	response := echoAnswer(good)
	cut := good[:len(good)-1]
	bad := [][]byte{{}, {1, 2, 3}, good[:dns.HeaderLen], twoQ, response, cut, make([]byte, 5000)}
	for _, b := range bad {
		if _, err := c.Write(b); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Fatal(err)
		}
	}
	waitValue(t, "malformed", func() uint64 { return g.listener(ListenerDNSMalformed) }, uint64(len(bad)))
	if n, _ := r.stats(); n != 0 {
		t.Fatalf("backend got %d malformed queries", n)
	}
	if _, err := c.Write(good); err != nil {
		t.Fatal(err)
	}
	if a, err := readAnswer(c, waitTimeout); err != nil || dns.ID(a) != 1 {
		t.Fatalf("good query after bad ones: %v", err)
	}
}

// TestDNSModeGSORunOfQueries: a client sends 32 equal-size queries as one
// UDP_SEGMENT send. DNS listeners do not turn UDP_GRO on (group option GRO
// set), so the kernel hands them over one by one and no GRO run is read;
// every query is answered on its own.
func TestDNSModeGSORunOfQueries(t *testing.T) {
	r := newDNSResponder(t)
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: r.addr()}})
	o.Listeners[0].DNS = &DNSListener{Sockets: 1, MaxInFlight: 100, Timeout: 5 * time.Second}
	o.GRO = true
	g := startGroup(t, o)
	c := dnsClient(t, g.addr())
	const n = 32
	var run []byte
	seg := 0
	for i := range n {
		q := query(t, uint16(1000+i), "gro.example.test.")
		seg = len(q)
		run = append(run, q...)
	}
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(seg))
	if _, _, err := c.WriteMsgUDP(run, oob, nil); err != nil {
		t.Fatalf("GSO send of %d queries: %v", n, err)
	}
	got := map[uint16]bool{}
	for range n {
		a, err := readAnswer(c, waitTimeout)
		if err != nil {
			t.Fatalf("after %d answers: %v", len(got), err)
		}
		got[dns.ID(a)] = true
	}
	for i := range n {
		if !got[uint16(1000+i)] {
			t.Fatalf("no answer for query %d", 1000+i)
		}
	}
	waitValue(t, "queries", func() uint64 { return g.listener(ListenerDNSQueries) }, n)
	if v := g.shard(ShardGRORuns); v != 0 {
		t.Fatalf("%d GRO runs read on a DNS listener", v)
	}
}

// TestDNSReceiveBuffers: a shard serving only DNS listeners has no 64 KiB
// GRO buffers even with GRO on (batch × max_rx, 64 × 4 KiB = 256 KiB per
// array, instead of 32 × 64 KiB = 2 MiB); next to a flow listener with GRO,
// DNS reads use an array of their own of that size, 64 per call.
func TestDNSReceiveBuffers(t *testing.T) {
	r := newDNSResponder(t)
	dnsL := Listener{Name: "dns", Addr: netip.MustParseAddrPort("127.0.0.1:0"),
		DNS: &DNSListener{Sockets: 1, MaxInFlight: 100, Timeout: 5 * time.Second}}
	flowL := Listener{Name: "flow", Addr: netip.MustParseAddrPort("127.0.0.1:0")}
	for _, tc := range []struct {
		name         string
		listeners    []Listener
		rxBuf, rxN   int
		dnsBuf, dnsN int
	}{
		{"dns only", []Listener{dnsL}, 0, batchio.DefaultBatchSize, 0, batchio.DefaultBatchSize},
		{"dns and flows", []Listener{flowL, dnsL}, batchio.GROBufferSize, groRecvBatch, 0, batchio.DefaultBatchSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: r.addr()}})
			o.Listeners = tc.listeners
			o.GRO = true
			g := startGroup(t, o)
			s := g.shards[0]
			want := func(b int) int {
				if b == 0 {
					return s.mgr.MaxRxDatagramSize() + 1
				}
				return b
			}
			if len(s.rxMsgs) != tc.rxN || cap(s.rxMsgs[0].Buf) != want(tc.rxBuf) {
				t.Errorf("listener array: %d × %d B, want %d × %d", len(s.rxMsgs), cap(s.rxMsgs[0].Buf), tc.rxN, want(tc.rxBuf))
			}
			if len(s.dns.rx) != tc.dnsN || cap(s.dns.rx[0].Buf) != want(tc.dnsBuf) {
				t.Errorf("DNS array: %d × %d B, want %d × %d", len(s.dns.rx), cap(s.dns.rx[0].Buf), tc.dnsN, want(tc.dnsBuf))
			}
			// DNS still answers.
			c := dnsClient(t, g.Addrs()[len(tc.listeners)-1])
			if _, err := c.Write(query(t, 7, "buf.example.test.")); err != nil {
				t.Fatal(err)
			}
			if a, err := readAnswer(c, waitTimeout); err != nil || dns.ID(a) != 7 {
				t.Fatalf("answer: %v", err)
			}
		})
	}
}

// TestGroupFlows lists live flows through the control channel.
func TestGroupFlows(t *testing.T) {
	r := newDNSResponder(t) // any responder: the generic mode echoes it
	g := startGroup(t, oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: r.addr()}}))
	var clients []*net.UDPConn
	for i := range 3 {
		c := dnsClient(t, g.addr())
		if _, err := c.Write(query(t, uint16(i), "f.example.test.")); err != nil {
			t.Fatal(err)
		}
		if _, err := readAnswer(c, waitTimeout); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	lists, err := g.Flows(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(lists) != 1 || lists[0].Total != 3 || len(lists[0].Flows) != 2 {
		t.Fatalf("flows %+v, want 2 of 3 listed", lists)
	}
	seen := map[netip.AddrPort]bool{}
	for _, c := range clients {
		seen[c.LocalAddr().(*net.UDPAddr).AddrPort()] = true
	}
	for _, f := range lists[0].Flows {
		if !seen[f.Client] || !f.Established || f.Stats.DatagramsIn != 1 || f.Stats.DatagramsOut != 1 {
			t.Fatalf("flow %+v", f)
		}
	}
}

// rawResponder answers DNS queries with batchio's allocation-free calls,
// so an allocation count over the whole process sees only the proxy.
func rawResponder(t *testing.T) (netip.AddrPort, func()) {
	t.Helper()
	fd, err := batchio.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), batchio.ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := batchio.LocalAddr(fd)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := batchio.NewBatch(16)
		msgs := make([]batchio.Message, 16)
		for i := range msgs {
			msgs[i].Buf = make([]byte, 2048)
		}
		out := make([]batchio.Message, 0, 16)
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = unix.Poll(pfd, 50)
			n, _ := b.Recv(fd, msgs)
			out = out[:0]
			for i := range n {
				m := &msgs[i]
				m.Buf[2] |= 0x80
				out = append(out, batchio.Message{Buf: m.Buf[:m.N], Addr: m.Addr})
			}
			if len(out) > 0 {
				_, _ = b.Send(fd, out)
			}
			for i := range n {
				msgs[i].Buf = msgs[i].Buf[:cap(msgs[i].Buf)]
			}
		}
	}()
	return addr, func() { close(stop); <-done; unix.Close(fd) }
}

// TestDNSModeAllocatesNothing: queries and answers through a live DNS-mode
// shard, client and backend on allocation-free raw sockets, measured by
// testing.AllocsPerRun over the whole process: the query and answer paths,
// per-source limit check included, allocate nothing.
func TestDNSModeAllocatesNothing(t *testing.T) {
	if raceEnabled() {
		t.Skip("the race detector allocates")
	}
	backend, stop := rawResponder(t)
	defer stop()
	// The per-source limit is on, generous enough to admit every query:
	// its check runs on every query and allocates nothing either.
	g := dnsLimitGroup(t, backend, DNSListener{Sockets: 1, MaxInFlight: 100, Timeout: 5 * time.Second},
		core.AdmissionConfig{Interval: time.Nanosecond, Burst: 1000})
	fd, err := batchio.DialUpstream(netip.AddrPort{}, g.addr(), batchio.DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	roundTrip := rawRoundTrip(t, fd, query(t, 77, "alloc.example.test."), func(reply []byte) {
		if dns.ID(reply) != 77 {
			t.Fatal("wrong answer")
		}
	})
	for range 200 { // warm up: sockets, tables, buffers
		roundTrip()
	}
	if allocs := testing.AllocsPerRun(2000, roundTrip); allocs > 0.01 {
		t.Fatalf("%.3f allocations per query round trip", allocs)
	}
	if !g.Shards()[0].dns.limit.On() {
		t.Fatal("the per-source limit was not on")
	}
}
