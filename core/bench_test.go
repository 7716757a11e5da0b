package core

import (
	"fmt"
	"math/bits"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// Benchmarks of the engine's hot paths. Results and the command that produced
// them are recorded in bench/RESULTS.md; `make bench` runs them.
//
// Every benchmark builds its flows before the timed loop, with batched Handle
// calls, then drives a single manager the way a shard loop would: one reused
// input slice, one reused output slice, and a clock that advances by
// benchStep per operation. Flows are picked at random across the live set, so
// at 1M flows the flow table, the flow slots and the timer heap miss the cache
// as they would under real traffic.

const (
	// benchListener routes to a cluster with timeouts long enough that no
	// benchmark flow ever expires, however long the loop runs.
	benchListener ListenerID = 0
	// benchDNSListener routes to a DNS-style cluster: one response per flow.
	benchDNSListener ListenerID = 1

	benchStep     = Time(time.Microsecond) // clock advance per operation
	benchLongIdle = 24 * time.Hour
	benchBatch    = 1024 // inputs per Handle call while building flows
)

var (
	benchLocal   = netip.MustParseAddrPort("192.0.2.1:443")
	benchBackend = Backend{ID: 1, Addr: netip.MustParseAddrPort("10.200.0.1:443")}
)

// benchClient returns the address of client i: a distinct IPv4 address per
// flow (10.0.0.0/8 holds 16M) and a port that varies with i.
func benchClient(i int) netip.AddrPort {
	return netip.AddrPortFrom(
		netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}),
		uint16(1024+i%60000))
}

// benchRand is a splitmix64 generator: deterministic, allocation-free and a
// few cycles per draw, so it does not dominate a 50 ns budget.
type benchRand uint64

func (r *benchRand) intn(n int) int {
	*r += 0x9e3779b97f4a7c15
	hi, _ := bits.Mul64(splitmix64(uint64(*r)), uint64(n))
	return int(hi)
}

// benchRig is a manager with n established flows on benchListener. Flow i's
// client is benchClient(i) and its id is makeFlowID(i, 1) (the rig checks
// this while building, so the return path can name a random flow without
// reading an id array that would add cache misses of its own).
type benchRig struct {
	m   *Manager
	n   int
	now Time
	in  []Input
	out []Output
}

// benchCluster is the default cluster of benchListener: no caps, long
// timeouts.
func benchCluster() ClusterConfig {
	return ClusterConfig{Cluster: 1, FrontTimeout: benchLongIdle, BackTimeout: benchLongIdle}
}

// benchDNSCluster is the cluster of benchDNSListener: one response closes the
// flow, DNS-like timeouts.
func benchDNSCluster() ClusterConfig {
	return ClusterConfig{Cluster: 2, Responses: 1, FrontTimeout: 5 * time.Second, BackTimeout: 5 * time.Second}
}

// newBenchRig returns a manager with n established flows under cc on
// benchListener (and benchDNSCluster on benchDNSListener).
func newBenchRig(tb testing.TB, n int, cc ClusterConfig) *benchRig {
	tb.Helper()
	m, err := NewManager(Config{Seed: 0x5eed, MaxFlows: max(DefaultMaxFlows, n+benchBatch)})
	if err != nil {
		tb.Fatal(err)
	}
	r := &benchRig{m: m, n: n, now: 1, in: make([]Input, 0, benchBatch), out: make([]Output, 0, 4*benchBatch)}
	r.out = m.Handle(r.now, []Input{
		ConfigInput(ConfigEvent{Kind: ConfigSetCluster, Listener: benchListener, Cluster: cc}),
		ConfigInput(ConfigEvent{Kind: ConfigSetCluster, Listener: benchDNSListener, Cluster: benchDNSCluster()}),
	}, r.out[:0])
	payload := []byte("benchmark flow setup")
	for base := 0; base < n; base += benchBatch {
		end := min(base+benchBatch, n)
		r.now += benchStep
		r.in = r.in[:0]
		for i := base; i < end; i++ {
			r.in = append(r.in, ClientDatagram(benchListener, benchClient(i), benchLocal, payload))
		}
		r.out = m.Handle(r.now, r.in, r.out[:0])
		r.in = r.in[:0]
		for j := range r.out {
			o := &r.out[j]
			switch o.Kind {
			case OutSelectBackend:
				i := base + len(r.in)
				if o.Flow != makeFlowID(uint32(i), 1) {
					tb.Fatalf("flow %d got id %v; the rig expects dense ids %d#1", i, o.Flow, i)
				}
				r.in = append(r.in, Resolved(o.Flow, benchBackend))
			case OutDrop:
				tb.Fatalf("setup drop: %v", o.DropReason)
			}
		}
		r.now += benchStep
		r.out = m.Handle(r.now, r.in, r.out[:0])
	}
	if m.FlowCount() != n {
		tb.Fatalf("built %d flows, want %d", m.FlowCount(), n)
	}
	r.in = r.in[:1]
	r.out = r.out[:0]
	return r
}

// markDown marks backends down (none of them the rig's benchBackend).
func (r *benchRig) markDown(ids ...BackendID) {
	for _, id := range ids {
		r.out = r.m.Handle(r.now, []Input{ConfigInput(ConfigEvent{Kind: ConfigBackendDown, Backend: id})}, r.out[:0])
	}
}

// id returns the FlowID of flow i.
func (r *benchRig) id(i int) FlowID { return makeFlowID(uint32(i), 1) }

// forwarding prepares r.in[0] as a client datagram carrying payload; forward
// then only rewrites the source, as a shell reusing its input slots would.
func (r *benchRig) forwarding(payload []byte) {
	r.in[0] = Input{Kind: InClientDatagram, Listener: benchListener, Src: benchClient(0), Dst: benchLocal, Payload: payload}
}

// forward sends one client datagram of flow i (after forwarding).
func (r *benchRig) forward(i int) {
	r.now += benchStep
	r.in[0].Src = benchClient(i)
	r.out = r.m.Handle(r.now, r.in[:1], r.out[:0])
}

// replying prepares r.in[0] as a backend datagram carrying payload.
func (r *benchRig) replying(payload []byte) {
	r.in[0] = Input{Kind: InBackendDatagram, Flow: r.id(0), Payload: payload}
}

// reply sends one backend datagram of flow i (after replying).
func (r *benchRig) reply(i int) {
	r.now += benchStep
	r.in[0].Flow = r.id(i)
	r.out = r.m.Handle(r.now, r.in[:1], r.out[:0])
}

// dnsQuery is the state of one DNS-style lifecycle.
type benchDNS struct {
	r      *benchRig
	client int // next client index, cycled so keys are reused only long after close
	query  []byte
	answer []byte
	ids    []FlowID
}

func newBenchDNS(r *benchRig) *benchDNS {
	return &benchDNS{r: r, query: make([]byte, 40), answer: make([]byte, 120), ids: make([]FlowID, 0, benchBatch)}
}

// lifecycle runs k DNS-style flows through their whole life in three Handle
// calls (query, resolution, answer), as a shard would: admit + SelectBackend,
// BackendResolved + OpenUpstream + forward of the held query, reply + close.
// It returns the outputs of the last call.
func (d *benchDNS) lifecycle(k int) []Output {
	r := d.r
	r.now += benchStep
	r.in = r.in[:0]
	for range k {
		// Clients 16M.. in 20.0.0.0/8 stay clear of the background flows.
		c := d.client
		d.client = (d.client + 1) % (1 << 20)
		r.in = append(r.in, Input{Kind: InClientDatagram, Listener: benchDNSListener,
			Src: netip.AddrPortFrom(netip.AddrFrom4([4]byte{20, byte(c >> 16), byte(c >> 8), byte(c)}), 33000+uint16(c&0x3ff)),
			Dst: benchLocal, Payload: d.query})
	}
	r.out = r.m.Handle(r.now, r.in, r.out[:0])
	d.ids = d.ids[:0]
	for j := range r.out {
		if r.out[j].Kind == OutSelectBackend {
			d.ids = append(d.ids, r.out[j].Flow)
		}
	}
	r.now += benchStep
	r.in = r.in[:0]
	for _, id := range d.ids {
		r.in = append(r.in, Resolved(id, benchBackend))
	}
	r.out = r.m.Handle(r.now, r.in, r.out[:0])
	r.now += benchStep
	r.in = r.in[:0]
	for _, id := range d.ids {
		r.in = append(r.in, BackendDatagram(id, d.answer))
	}
	r.out = r.m.Handle(r.now, r.in, r.out[:0])
	r.in = r.in[:max(1, len(r.in))]
	return r.out
}

type benchSize struct {
	name  string
	flows int
	big   bool // skipped under -short
}

var benchFlowSizes = []benchSize{
	{"flows=1k", 1_000, false},
	{"flows=1M", 1_000_000, true},
}

func runSizes(b *testing.B, sizes []benchSize, fn func(b *testing.B, n int)) {
	for _, s := range sizes {
		b.Run(s.name, func(b *testing.B) {
			if s.big && testing.Short() {
				b.Skip("1M flows: skipped under -short")
			}
			fn(b, s.flows)
		})
	}
}

// expectOut fails b unless the last call produced exactly one output of kind k.
func expectOut(b *testing.B, out []Output, k OutputKind) {
	if len(out) != 1 || out[0].Kind != k {
		b.Fatalf("outputs %+v, want one %v", out, k)
	}
}

// BenchmarkForward: one client datagram on an established flow, one Handle
// call per datagram, random flow each time. Goal: ≤ 50 ns/op, 0 allocs/op.
func BenchmarkForward(b *testing.B) {
	runSizes(b, benchFlowSizes, func(b *testing.B, n int) {
		r := newBenchRig(b, n, benchCluster())
		payload := make([]byte, 100)
		rng := benchRand(1)
		r.forwarding(payload)
		r.forward(0)
		expectOut(b, r.out, OutSendToBackend)
		b.ReportAllocs()
		for b.Loop() {
			r.forward(rng.intn(n))
		}
		expectOut(b, r.out, OutSendToBackend)
	})
}

// BenchmarkForwardBackendsDown: as BenchmarkForward, with the close policy
// and other backends than the flows' marked down, so every datagram looks its
// backend up in the down set. Goal: within noise of BenchmarkForward.
func BenchmarkForwardBackendsDown(b *testing.B) {
	runSizes(b, benchFlowSizes, func(b *testing.B, n int) {
		cc := benchCluster()
		cc.CloseOnBackendDown = true
		r := newBenchRig(b, n, cc)
		r.markDown(2, 3, 700)
		payload := make([]byte, 100)
		rng := benchRand(1)
		r.forwarding(payload)
		r.forward(0)
		expectOut(b, r.out, OutSendToBackend)
		b.ReportAllocs()
		for b.Loop() {
			r.forward(rng.intn(n))
		}
		expectOut(b, r.out, OutSendToBackend)
	})
}

// BenchmarkReturn: one backend datagram returned to the client of an
// established flow, random flow each time. Goal as forward.
func BenchmarkReturn(b *testing.B) {
	runSizes(b, benchFlowSizes, func(b *testing.B, n int) {
		r := newBenchRig(b, n, benchCluster())
		payload := make([]byte, 100)
		rng := benchRand(2)
		r.replying(payload)
		r.reply(0)
		expectOut(b, r.out, OutSendToClient)
		b.ReportAllocs()
		for b.Loop() {
			r.reply(rng.intn(n))
		}
		expectOut(b, r.out, OutSendToClient)
	})
}

// BenchmarkForwardBatch compares one datagram per Handle call with 64: the op
// is one batch; ns/datagram is the figure to compare with BenchmarkForward.
func BenchmarkForwardBatch(b *testing.B) {
	runSizes(b, benchFlowSizes, func(b *testing.B, n int) {
		r := newBenchRig(b, n, benchCluster())
		for _, batch := range []int{1, 64} {
			b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
				payload := make([]byte, 100)
				rng := benchRand(3)
				in := make([]Input, batch)
				for j := range in {
					in[j] = Input{Kind: InClientDatagram, Listener: benchListener, Dst: benchLocal, Payload: payload}
				}
				b.ReportAllocs()
				for b.Loop() {
					r.now += benchStep
					for j := range in {
						in[j].Src = benchClient(rng.intn(n))
					}
					r.out = r.m.Handle(r.now, in, r.out[:0])
				}
				if len(r.out) != batch {
					b.Fatalf("%d outputs for %d inputs", len(r.out), batch)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/datagram")
			})
		}
	})
}

// BenchmarkForwardGRO: a GRO run of 16 segments of 1200 bytes forwarded as one
// GSO output, without and with a PROXY v2 header on every datagram (still one
// output, its header preceding every segment).
func BenchmarkForwardGRO(b *testing.B) {
	const n, segs, segSize = 1_000, 16, 1200
	for _, pm := range []ProxyMode{ProxyOff, ProxyEvery} {
		b.Run(fmt.Sprintf("flows=1k/segments=%d/proxy=%v", segs, pm), func(b *testing.B) {
			cc := benchCluster()
			cc.ProxyProtocol = pm
			r := newBenchRig(b, n, cc)
			payload := make([]byte, segs*segSize)
			rng := benchRand(4)
			want := 1
			r.forwarding(payload)
			r.in[0].SegmentSize = segSize
			b.ReportAllocs()
			for b.Loop() {
				r.now += benchStep
				r.in[0].Src = benchClient(rng.intn(n))
				r.out = r.m.Handle(r.now, r.in[:1], r.out[:0])
			}
			if len(r.out) != want {
				b.Fatalf("%d outputs, want %d", len(r.out), want)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*segs), "ns/segment")
		})
	}
}

// BenchmarkForwardProxyV2: forward with a PROXY v2 header on every datagram,
// IPv4 client (28-byte header written into the call's arena).
func BenchmarkForwardProxyV2(b *testing.B) {
	runSizes(b, benchFlowSizes, func(b *testing.B, n int) {
		cc := benchCluster()
		cc.ProxyProtocol = ProxyEvery
		r := newBenchRig(b, n, cc)
		payload := make([]byte, 100)
		rng := benchRand(5)
		r.forwarding(payload)
		b.ReportAllocs()
		for b.Loop() {
			r.forward(rng.intn(n))
		}
		expectOut(b, r.out, OutSendToBackend)
		if len(r.out[0].Header) != ProxyHeaderLenIPv4 {
			b.Fatalf("header of %d bytes", len(r.out[0].Header))
		}
	})
}

// BenchmarkDNSLifecycle: a whole DNS-style flow (admit + SelectBackend,
// BackendResolved + OpenUpstream + forward, reply + close) with 10k live
// background flows. batch=1 is three Handle calls per flow; batch=64 runs 64
// flows through the same three calls. Goal: ≤ 300 ns/flow, 0 allocs.
func BenchmarkDNSLifecycle(b *testing.B) {
	for _, batch := range []int{1, 64} {
		b.Run(fmt.Sprintf("background=10k/batch=%d", batch), func(b *testing.B) {
			r := newBenchRig(b, 10_000, benchCluster())
			d := newBenchDNS(r)
			for range 2 * benchBatch { // warm-up: pool, release list, free lists
				d.lifecycle(batch)
			}
			b.ReportAllocs()
			for b.Loop() {
				d.lifecycle(batch)
			}
			if st := r.m.Stats(); st.Active != 10_000 || st.Closes[CloseResponses] == 0 {
				b.Fatalf("stats %+v", st)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/flow")
		})
	}
}

// benchHeapPerFlow builds a manager with n established flows and returns it
// with the live heap it holds, divided by n. The rig's scratch slices belong to
// the caller, not the manager, and are dropped before measuring.
func benchHeapPerFlow(tb testing.TB, n int) (*benchRig, float64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r := newBenchRig(tb, n, benchCluster())
	r.in, r.out = nil, nil
	runtime.GC()
	runtime.ReadMemStats(&after)
	return r, float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
}

// BenchmarkMemoryPerFlow reports the live heap per established flow (B/flow,
// goal ≤ 200) and the cost of building them (ns/flow: admit, resolve and
// forward of the first datagram, in batches of 1024; it includes the two
// forced GCs of the measurement). One op builds all n flows.
func BenchmarkMemoryPerFlow(b *testing.B) {
	runSizes(b, benchFlowSizes[1:], func(b *testing.B, n int) {
		var perFlow float64
		for b.Loop() {
			var r *benchRig
			r, perFlow = benchHeapPerFlow(b, n)
			runtime.KeepAlive(r)
		}
		b.ReportMetric(perFlow, "B/flow")
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/flow")
	})
}
