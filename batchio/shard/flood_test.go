package shard

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/bench/loadgen"
	"github.com/fastudp/fastudp/core"
)

// TestE2ENewFlowFlood floods a shard whose max_flows is small with
// datagrams from ever-new (address, port) pairs across 127.0.0.0/8, far
// more new flows than max_flows but far below what a shard can shed, while
// 20 established flows do request/echo through it. The established flows
// must lose nothing, and every flood datagram must be accounted for: it
// either opened one of the few free flow slots or was shed (drop reason
// shed), none lost in the kernel.
func TestE2ENewFlowFlood(t *testing.T) {
	t.Parallel()
	const (
		maxFlows = 64
		live     = 20
		liveRate = 1000 // requests per second, all live flows together
	)
	floodRate, floodFor := 5000.0, 3*time.Second
	if raceEnabled() {
		floodRate = 2000 // the race detector makes every datagram ~10x dearer
	}
	echo, err := loadgen.StartEcho(loadgen.EchoConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	o := oneListener("127.0.0.1:0", core.ClusterConfig{FrontTimeout: time.Minute, BackTimeout: time.Minute},
		fixedPicker{{ID: 0, Addr: echo.Addr()}})
	o.Core.MaxFlows = maxFlows
	o.Listen = batchio.ListenOptions{RecvBuffer: 4 << 20}
	g := startGroup(t, o)

	// The live flows: phase 0 establishes them, phase 1 is measured.
	gen, err := loadgen.New(loadgen.Config{Target: g.addr(), Conns: live, Size: 64, Rate: liveRate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gen.Close() })
	gen.Start()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			gen.Stop(0)
		}
	})
	waitValue(t, "live flows created", func() uint64 { return g.listener(ListenerFlowsCreated) }, live)

	count := uint64(floodRate * floodFor.Seconds())
	sp, err := loadgen.NewSprayer(loadgen.SprayConfig{Target: g.addr(), Sockets: 64,
		Sources: loadgen.LoopbackSources(4096), Rate: floodRate, Count: count})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	if uint64(sp.Flows()) < count {
		t.Fatalf("sprayer has %d distinct sources, need %d", sp.Flows(), count)
	}
	created0, shed0 := g.listener(ListenerFlowsCreated), g.drop(core.DropShed)
	kernel0 := g.listener(ListenerKernelDrops)
	gen.SetPhase(1)
	sp.SetPhase(1)
	sp.Start()
	select {
	case <-sp.Done():
	case <-time.After(floodFor + waitTimeout):
		t.Fatal("the sprayer did not finish sending")
	}
	sp.Stop(time.Second)
	gen.SetPhase(2)
	time.Sleep(100 * time.Millisecond) // phase 2 traffic proves the live flows still answer after the flood
	gen.Stop(2 * time.Second)
	stopped = true

	fl := sp.Stats(1)
	if fl.Sent != count || fl.SendErrors != 0 {
		t.Fatalf("flood sent %d (%d errors), want %d", fl.Sent, fl.SendErrors, count)
	}
	// Every flood datagram either opened a flow (up to max_flows) or was
	// shed: wait for the shard to have read them all.
	created := func() uint64 { return g.listener(ListenerFlowsCreated) - created0 }
	shed := func() uint64 { return g.drop(core.DropShed) - shed0 }
	waitUntil(t, waitTimeout, "every flood datagram to be admitted or shed", func() bool { return created()+shed() >= count })
	if c, s := created(), shed(); c+s != count || c > maxFlows-live {
		t.Errorf("flood of %d: %d new flows, %d shed; want at most %d new flows and the rest shed", count, c, s, maxFlows-live)
	}
	if fl.Received != created() {
		t.Errorf("flood got %d replies, want one per admitted flood flow (%d)", fl.Received, created())
	}
	if k := g.listener(ListenerKernelDrops) - kernel0; k != 0 {
		t.Errorf("the kernel dropped %d datagrams on the listener's receive queue", k)
	}
	for p := 1; p <= 2; p++ {
		st := gen.Stats(p)
		if st.Sent == 0 || st.SendErrors != 0 || st.Received != st.Sent {
			t.Errorf("live flows, phase %d: sent %d (%d errors), %d answered; want every one answered", p, st.Sent, st.SendErrors, st.Received)
		}
		if p == 1 {
			t.Logf("live flows during a flood of %.0f new flows/s: %d requests, RTT p50 %v p99 %v max %v; flood: %d sent, %d shed, %d admitted",
				floodRate, st.Sent, st.RTT.Quantile(0.5), st.RTT.Quantile(0.99), st.RTT.Max(), fl.Sent, shed(), created())
		}
	}
	if v := g.listener(ListenerFlowsCreated); v > maxFlows {
		t.Errorf("%d flows created, more than max_flows %d (no flow closed)", v, maxFlows)
	}
}

// gatePicker picks its one backend; while a gate is set, Pick first tells
// entered and then blocks until the gate is closed, holding the shard
// goroutine still so a test can queue datagrams behind it.
type gatePicker struct {
	be      core.Backend
	mu      sync.Mutex
	gate    chan struct{}
	entered chan struct{}
	// PickPayload records each new flow's first datagram as it sees it
	// (the core only lends it until its next Handle call).
	payloads []string
}

func (p *gatePicker) PickPayload(c core.ClusterID, key uint64, payload []byte) (core.Backend, bool) {
	p.mu.Lock()
	p.payloads = append(p.payloads, string(payload))
	p.mu.Unlock()
	return p.Pick(c, key)
}

func (p *gatePicker) Pick(core.ClusterID, uint64) (core.Backend, bool) {
	p.mu.Lock()
	gate, entered := p.gate, p.entered
	p.gate, p.entered = nil, nil
	p.mu.Unlock()
	if gate != nil {
		close(entered)
		<-gate
	}
	return p.be, true
}

// TestE2ENewFlowBurstPaced holds the shard still while a burst of new
// flows, ten times what a loop iteration resolves (newFlowBudget), and
// then a datagram of an established client queue on its listener. Let go,
// the shard reads them all in one wake-up and resolves only a budget of the
// new flows before it forwards the established client's datagram: the
// backend sees at most about one budget of the burst before it, where
// without the budget it would see the whole burst (each new flow's socket
// set-up, ~30 µs, done first). Every flow, deferred or not, then gets its
// backend and its reply.
func TestE2ENewFlowBurstPaced(t *testing.T) {
	t.Parallel()
	const burst = 10 * newFlowBudget
	be := newBackend(t, backendOpts{})
	if err := be.conn.SetReadBuffer(4 << 20); err != nil { // the burst reaches it at once
		t.Fatal(err)
	}
	p := &gatePicker{be: core.Backend{ID: 0, Addr: be.Addr}}
	o := GroupOptions{Listeners: []Listener{{Name: "l", Addr: netip.MustParseAddrPort("127.0.0.1:0")}}, Backends: 1, Picker: p,
		Listen: batchio.ListenOptions{RecvBuffer: 4 << 20}}
	g := startGroup(t, o)
	est := newClient(t, g.addr())
	est.roundTrip("", "established-1")

	gate, entered := make(chan struct{}), make(chan struct{})
	p.mu.Lock()
	p.gate, p.entered = gate, entered
	p.mu.Unlock()
	opened := false
	t.Cleanup(func() {
		if !opened {
			close(gate)
		}
	})
	newClient(t, g.addr()).send("blocker") // a new flow: the shard blocks in Pick
	select {
	case <-entered:
	case <-time.After(waitTimeout):
		t.Fatal("the shard did not pick a backend for the blocker")
	}
	sp, err := loadgen.NewSprayer(loadgen.SprayConfig{Target: g.addr(), Sockets: 4,
		Sources: loadgen.LoopbackSources(burst), Rate: 1e6, Count: burst})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	sp.Start()
	t.Cleanup(func() { sp.Stop(0) })
	select {
	case <-sp.Done():
	case <-time.After(waitTimeout):
		t.Fatal("the sprayer did not finish sending")
	}
	est.send("established-2")
	time.Sleep(20 * time.Millisecond) // loopback delivery is synchronous; this is margin
	close(gate)
	opened = true

	est.expect("established-2")
	for deadline := time.Now().Add(waitTimeout); sp.Stats(0).Received < burst; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: burst %+v, backend received %d datagrams, want a reply to each of %d new flows",
				waitTimeout, sp.Stats(0), be.count(), burst)
		}
	}
	if v := g.listener(ListenerKernelDrops); v != 0 {
		t.Fatalf("the kernel dropped %d datagrams of the burst", v)
	}
	got := be.waitReceived(t, burst+3)
	pos, flood := -1, 0
	for i, d := range got {
		switch d.Payload {
		case "established-2":
			pos = i
		case "established-1", "blocker":
		default:
			if pos < 0 {
				flood++
			}
		}
	}
	if pos < 0 {
		t.Fatal("the established client's second datagram never reached the backend")
	}
	t.Logf("%d of the burst's %d new flows reached the backend before the established client's datagram", flood, burst)
	if flood > 2*newFlowBudget {
		t.Errorf("%d new flows of the burst were forwarded before the established client's datagram queued behind them; want at most %d (one budget per loop iteration)",
			flood, 2*newFlowBudget)
	}
	waitValue(t, "flows created", func() uint64 { return g.listener(ListenerFlowsCreated) }, burst+2)
	// Every flow, deferred or not, was picked with its own first datagram
	// (a payload router such as QUIC-LB reads it).
	p.mu.Lock()
	seen := map[uint32]bool{}
	for _, pl := range p.payloads {
		if pl == "established-1" || pl == "blocker" {
			continue
		}
		h, err := loadgen.ParseHeader([]byte(pl))
		if err != nil || seen[h.Conn] {
			t.Errorf("picked with payload %q (%v, seen before: %v)", pl, err, seen[h.Conn])
			continue
		}
		seen[h.Conn] = true
	}
	p.mu.Unlock()
	if len(seen) != burst {
		t.Errorf("%d distinct burst flows picked with their datagram, want %d", len(seen), burst)
	}
	// The burst was read in one wake-up: all but about one budget waited.
	if d := g.shard(ShardFlowsDeferred); d < burst-2*newFlowBudget || d > burst {
		t.Errorf("%d new flows deferred, want %d to %d of a burst of %d", d, burst-2*newFlowBudget, burst, burst)
	}
}

// TestPacingResolveAll drives a shard that is not running by hand: a burst
// of new flows read in one go leaves all but a budget waiting for their
// upstream, and resolveAllWaiting (what a handover does before exporting
// the core's state) opens every one of them, so no flow is handed over
// still waiting for an answer only this process holds.
func TestPacingResolveAll(t *testing.T) {
	const burst = 4 * newFlowBudget
	be := newBackend(t, backendOpts{NoRecord: true})
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}})
	o.Listen = batchio.ListenOptions{RecvBuffer: 4 << 20}
	g, err := NewGroup(o)
	if err != nil {
		t.Fatal(err)
	}
	s := g.Shards()[0]
	t.Cleanup(s.closeAll)
	sp, err := loadgen.NewSprayer(loadgen.SprayConfig{Target: g.Addrs()[0], Sockets: 2,
		Sources: loadgen.LoopbackSources(burst), Rate: 1e6, Count: burst})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	sp.Start()
	<-sp.Done()
	sp.Stop(0)

	// What Run does before its loop, then one wake-up's read.
	s.start = time.Now()
	s.oneReply = make([]bool, len(s.opts.Listeners))
	for i, l := range s.opts.Listeners {
		s.inputs = append(s.inputs, core.ConfigInput(core.ConfigEvent{Kind: core.ConfigSetCluster, Listener: core.ListenerID(i), Cluster: l.Cluster}))
	}
	s.process(s.now())
	s.readListener(0, s.now())
	if got := len(s.admit.waiting) - s.admit.head; got != burst-newFlowBudget {
		t.Fatalf("%d flows waiting after reading a burst of %d, want %d", got, burst, burst-newFlowBudget)
	}
	s.resolveAllWaiting(s.now())
	if s.admit.pending() {
		t.Fatalf("%d flows still waiting", len(s.admit.waiting)-s.admit.head)
	}
	established := 0
	s.mgr.Flows(func(f core.FlowInfo) bool {
		if f.Established {
			established++
		}
		return true
	})
	if established != burst || s.mgr.FlowCount() != burst {
		t.Errorf("%d of %d flows established, want all %d", established, s.mgr.FlowCount(), burst)
	}
	if s.counters.local[ShardFlowsDeferred] != burst-newFlowBudget {
		t.Errorf("deferred counter %d, want %d", s.counters.local[ShardFlowsDeferred], burst-newFlowBudget)
	}
}
