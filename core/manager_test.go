package core

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/fastudp/fastudp/quiclb"
)

// Addresses shared by the manager tests.
var (
	cliA  = netip.MustParseAddrPort("192.0.2.10:5000")
	cliA2 = netip.MustParseAddrPort("192.0.2.10:5001") // cliA's IP, another port
	cliB  = netip.MustParseAddrPort("192.0.2.20:6000")
	cliC  = netip.MustParseAddrPort("192.0.2.30:7000")
	cli6  = netip.MustParseAddrPort("[2001:db8::10]:5000")
	cliM  = netip.MustParseAddrPort("[::ffff:192.0.2.10]:5000") // cliA, IPv4-mapped
	lcl   = netip.MustParseAddrPort("198.51.100.1:53")
	lcl2  = netip.MustParseAddrPort("198.51.100.2:53")
	lcl6  = netip.MustParseAddrPort("[2001:db8:1::1]:53")
	be1   = Backend{ID: 1, Addr: netip.MustParseAddrPort("10.0.0.1:53")}
	be2   = Backend{ID: 2, Addr: netip.MustParseAddrPort("10.0.0.2:53")}
)

// testPool is a BufferPool that tracks every buffer it hands out, so tests can
// tell pool buffers from the caller's, and catch leaks and double Puts.
type testPool struct {
	inner       *SlicePool
	limit       int // most buffers out at once; 0 = unlimited
	outstanding map[*byte]bool
	gets, puts  int
	err         error
}

var _ BufferPool = (*testPool)(nil)

func newTestPool(limit int) *testPool {
	return &testPool{inner: NewSlicePool(64), limit: limit, outstanding: map[*byte]bool{}}
}

func (p *testPool) Get(n int) []byte {
	if p.limit > 0 && len(p.outstanding) >= p.limit {
		return nil
	}
	b := p.inner.Get(n)
	if b == nil {
		return nil
	}
	p.gets++
	p.outstanding[unsafe.SliceData(b)] = true
	return b
}

func (p *testPool) Put(b []byte) {
	p.puts++
	k := unsafe.SliceData(b)
	if !p.outstanding[k] {
		if p.err == nil {
			p.err = fmt.Errorf("Put of a buffer not out of the pool (double Put?)")
		}
		return
	}
	delete(p.outstanding, k)
	p.inner.Put(b)
}

// owns reports whether b lies in a buffer the pool has handed out (and not yet
// been given back).
func (p *testPool) owns(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	for base := range p.outstanding {
		// Buffers from SlicePool are at least 256 bytes; a payload starts
		// inside one of them.
		if s := uintptr(unsafe.Pointer(base)); start >= s && start < s+1<<17 {
			return true
		}
	}
	return false
}

// harness drives one manager at a settable clock and checks its invariants
// after every call.
type harness struct {
	tb   testing.TB
	m    *Manager
	pool *testPool
	now  Time
}

func newHarness(tb testing.TB, cfg Config, clusters ...ClusterConfig) *harness {
	tb.Helper()
	h := &harness{tb: tb}
	if cfg.Pool == nil {
		h.pool = newTestPool(0)
		cfg.Pool = h.pool
	} else if p, ok := cfg.Pool.(*testPool); ok {
		h.pool = p
	}
	m, err := NewManager(cfg)
	if err != nil {
		tb.Fatalf("NewManager: %v", err)
	}
	h.m = m
	for i, c := range clusters {
		if out := h.handle(setCluster(ListenerID(i), c)); len(out) != 0 {
			tb.Fatalf("set cluster emitted %s", fmtOutputs(out))
		}
	}
	return h
}

// handle runs one batch at h.now. The outputs are valid until the next call.
func (h *harness) handle(in ...Input) []Output {
	h.tb.Helper()
	out := h.m.Handle(h.now, in, nil)
	if err := h.m.CheckInvariants(); err != nil {
		h.tb.Fatalf("invariants after %v at %v: %v\noutputs:\n%s", inputKinds(in), h.now, err, fmtOutputs(out))
	}
	if h.pool != nil && h.pool.err != nil {
		h.tb.Fatalf("pool: %v", h.pool.err)
	}
	return out
}

// at sets the clock to d after the epoch.
func (h *harness) at(d time.Duration) *harness { h.now = Time(d); return h }

// open sends a first datagram from src to dst on listener l and returns the
// new flow.
func (h *harness) open(l ListenerID, src, dst netip.AddrPort, payload string) FlowID {
	h.tb.Helper()
	out := h.handle(ClientDatagram(l, src, dst, []byte(payload)))
	sel := pick(out, OutSelectBackend)
	if len(sel) != 1 {
		h.tb.Fatalf("open %v: want one select, got\n%s", src, fmtOutputs(out))
	}
	return sel[0].Flow
}

// establish opens a flow and resolves it to be1.
func (h *harness) establish(l ListenerID, src, dst netip.AddrPort, payload string) FlowID {
	h.tb.Helper()
	id := h.open(l, src, dst, payload)
	out := h.handle(Resolved(id, be1))
	if len(pick(out, OutOpenUpstream)) != 1 {
		h.tb.Fatalf("resolve %v: %s", id, fmtOutputs(out))
	}
	return id
}

func setCluster(l ListenerID, c ClusterConfig) Input {
	return ConfigInput(ConfigEvent{Kind: ConfigSetCluster, Listener: l, Cluster: c})
}

func configEvent(k ConfigKind, value int) Input {
	return ConfigInput(ConfigEvent{Kind: k, Value: value})
}

// groClient returns a client datagram that is a GRO run of seg-byte segments;
// groBackend the same from a backend.
func groClient(l ListenerID, src, dst netip.AddrPort, payload []byte, seg int) Input {
	in := ClientDatagram(l, src, dst, payload)
	in.SegmentSize = seg
	return in
}

func groBackend(id FlowID, payload []byte, seg int) Input {
	in := BackendDatagram(id, payload)
	in.SegmentSize = seg
	return in
}

func kinds(out []Output) []OutputKind {
	k := make([]OutputKind, len(out))
	for i := range out {
		k[i] = out[i].Kind
	}
	return k
}

func inputKinds(in []Input) []InputKind {
	k := make([]InputKind, len(in))
	for i := range in {
		k[i] = in[i].Kind
	}
	return k
}

func pick(out []Output, k OutputKind) []Output {
	var r []Output
	for _, o := range out {
		if o.Kind == k {
			r = append(r, o)
		}
	}
	return r
}

func wantKinds(tb testing.TB, out []Output, want ...OutputKind) {
	tb.Helper()
	if !slices.Equal(kinds(out), want) {
		tb.Fatalf("outputs %v, want %v\n%s", kinds(out), want, fmtOutputs(out))
	}
}

// fmtOutput formats every field of o that its kind uses; determinism tests
// compare these strings.
func fmtOutput(o *Output) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v", o.Kind)
	switch o.Kind {
	case OutSelectBackend:
		fmt.Fprintf(&b, " flow=%v l=%d cluster=%d key=%#x client=%v local=%v", o.Flow, o.Listener, o.Cluster, o.Key, o.Client, o.Local)
	case OutOpenUpstream:
		fmt.Fprintf(&b, " flow=%v l=%d cluster=%d backend=%d@%v client=%v local=%v", o.Flow, o.Listener, o.Cluster, o.Backend.ID, o.Backend.Addr, o.Client, o.Local)
	case OutSendToBackend:
		fmt.Fprintf(&b, " flow=%v l=%d cluster=%d backend=%d tos=%d seg=%d hdr=%x payload=%x", o.Flow, o.Listener, o.Cluster, o.Backend.ID, o.TOS, o.SegmentSize, o.Header, o.Payload)
	case OutSendToClient:
		fmt.Fprintf(&b, " flow=%v l=%d cluster=%d backend=%d tos=%d client=%v local=%v seg=%d payload=%x", o.Flow, o.Listener, o.Cluster, o.Backend.ID, o.TOS, o.Client, o.Local, o.SegmentSize, o.Payload)
	case OutArmTimer:
		fmt.Fprintf(&b, " deadline=%d", o.Deadline)
	case OutMetric:
		fmt.Fprintf(&b, " %v flow=%v l=%d cluster=%d", o.Metric, o.Flow, o.Listener, o.Cluster)
	case OutCloseFlow:
		fmt.Fprintf(&b, " %v flow=%v l=%d cluster=%d backend=%d client=%v local=%v stats=%+v", o.CloseReason, o.Flow, o.Listener, o.Cluster, o.Backend.ID, o.Client, o.Local, o.Stats)
	case OutDrop:
		fmt.Fprintf(&b, " %v l=%d flow=%v n=%d bytes=%d", o.DropReason, o.Listener, o.Flow, o.Datagrams, o.Bytes)
	default:
		fmt.Fprintf(&b, " %+v", *o)
	}
	return b.String()
}

func fmtOutputs(out []Output) string {
	var b strings.Builder
	for i := range out {
		b.WriteString("  ")
		b.WriteString(fmtOutput(&out[i]))
		b.WriteByte('\n')
	}
	return b.String()
}

// snapshot is the state a dropped datagram must leave untouched.
type snapshot struct {
	active, slots, table, timers, held int
	created                            uint64
}

func snap(m *Manager) snapshot {
	return snapshot{m.stats.Active, m.flows.len(), m.table.count, m.timers.len(), len(m.held), m.stats.Created}
}

// TestDNSLifecycle is the canonical output sequence of a DNS flow
// (responses=1): admit, resolve, forward, reply, close.
func TestDNSLifecycle(t *testing.T) {
	h := newHarness(t, Config{Seed: 1}, ClusterConfig{Cluster: 7, Responses: 1})
	h.at(time.Millisecond)
	out := h.handle(ClientDatagram(0, cliA, lcl, []byte("query")))
	wantKinds(t, out, OutMetric, OutSelectBackend, OutArmTimer)
	if out[0].Metric != MetricFlowCreated || out[0].Flow != out[1].Flow || out[1].Cluster != 7 {
		t.Fatalf("admission: %s", fmtOutputs(out))
	}
	if out[1].Key != AffinityHash(1, cliA, AffinityIP) || out[1].Client != cliA || out[1].Local != lcl {
		t.Fatalf("select: %s", fmtOutput(&out[1]))
	}
	id := out[1].Flow
	if out[2].Deadline != h.now.Add(DefaultTimeout) {
		t.Fatalf("deadline %d", out[2].Deadline)
	}
	h.at(2 * time.Millisecond)
	out = h.handle(Resolved(id, be1))
	wantKinds(t, out, OutOpenUpstream, OutSendToBackend)
	if out[0].Backend != be1 || out[0].Client != cliA || out[0].Local != lcl || string(out[1].Payload) != "query" || out[1].Header != nil {
		t.Fatalf("resolve: %s", fmtOutputs(out))
	}
	h.at(3 * time.Millisecond)
	out = h.handle(BackendDatagram(id, []byte("answer")))
	wantKinds(t, out, OutSendToClient, OutCloseFlow, OutArmTimer)
	if out[0].Client != cliA || out[0].Local != lcl || string(out[0].Payload) != "answer" {
		t.Fatalf("reply: %s", fmtOutput(&out[0]))
	}
	if out[1].CloseReason != CloseResponses || out[1].Flow != id || out[2].Deadline != Never {
		t.Fatalf("close: %s", fmtOutputs(out))
	}
	if m := h.m; m.FlowCount() != 0 || m.NextDeadline() != Never {
		t.Fatalf("flows %d, deadline %d", m.FlowCount(), m.NextDeadline())
	}
}

func TestAdmissionOrder(t *testing.T) {
	big := make([]byte, 101)
	tests := []struct {
		name  string
		setup func(h *harness)
		in    Input
		want  DropReason // 0: no drop
		kinds []OutputKind
	}{
		{name: "oversize before no cluster and invalid",
			in: ClientDatagram(9, netip.AddrPort{}, lcl, big), want: DropOversize},
		{name: "oversize applies to an existing flow",
			setup: func(h *harness) { h.establish(0, cliA, lcl, "x") },
			in:    ClientDatagram(0, cliA, lcl, big), want: DropOversize},
		{name: "no cluster before invalid",
			in: ClientDatagram(9, netip.AddrPort{}, lcl, nil), want: DropNoCluster},
		{name: "no cluster for an existing flow after remove",
			setup: func(h *harness) {
				h.establish(0, cliA, lcl, "x")
				h.handle(ConfigInput(ConfigEvent{Kind: ConfigRemoveCluster, Listener: 0}))
			},
			in: ClientDatagram(0, cliA, lcl, []byte("y")), want: DropNoCluster},
		{name: "invalid: empty payload", in: ClientDatagram(0, cliA, lcl, nil), want: DropInvalid},
		{name: "invalid: empty non-nil payload", in: ClientDatagram(0, cliA, lcl, []byte{}), want: DropInvalid},
		{name: "invalid: zero source", in: ClientDatagram(0, netip.AddrPort{}, lcl, []byte("x")), want: DropInvalid},
		{name: "invalid: source port 0", in: ClientDatagram(0, netip.MustParseAddrPort("192.0.2.1:0"), lcl, []byte("x")), want: DropInvalid},
		{name: "invalid: unspecified v4 source", in: ClientDatagram(0, netip.MustParseAddrPort("0.0.0.0:53"), lcl, []byte("x")), want: DropInvalid},
		{name: "invalid: unspecified v6 source", in: ClientDatagram(0, netip.MustParseAddrPort("[::]:53"), lcl, []byte("x")), want: DropInvalid},
		{name: "invalid: multicast v4 source", in: ClientDatagram(0, netip.MustParseAddrPort("224.0.0.1:53"), lcl, []byte("x")), want: DropInvalid},
		{name: "invalid: multicast v6 source", in: ClientDatagram(0, netip.MustParseAddrPort("[ff02::1]:53"), lcl, []byte("x")), want: DropInvalid},
		{name: "invalid before draining",
			setup: func(h *harness) { h.handle(configEvent(ConfigDrain, 0)) },
			in:    ClientDatagram(0, cliA, lcl, nil), want: DropInvalid},
		{name: "invalid before shed",
			setup: func(h *harness) { h.open(0, cliA, lcl, "a"); h.open(0, cliB, lcl, "b") },
			in:    ClientDatagram(0, netip.AddrPort{}, lcl, []byte("x")), want: DropInvalid},
		{name: "existing flow before draining",
			setup: func(h *harness) { h.establish(0, cliA, lcl, "a"); h.handle(configEvent(ConfigDrain, 0)) },
			in:    ClientDatagram(0, cliA, lcl, []byte("x")), kinds: []OutputKind{OutSendToBackend}},
		{name: "existing flow before max flows",
			setup: func(h *harness) { h.establish(0, cliA, lcl, "a"); h.establish(0, cliB, lcl, "b") },
			in:    ClientDatagram(0, cliA, lcl, []byte("x")), kinds: []OutputKind{OutSendToBackend}},
		{name: "awaiting flow holds instead of admitting",
			setup: func(h *harness) { h.open(0, cliA, lcl, "a") },
			in:    ClientDatagram(0, cliA, lcl, []byte("x")), kinds: []OutputKind{}},
		{name: "draining before max flows",
			setup: func(h *harness) {
				h.open(0, cliA, lcl, "a")
				h.open(0, cliB, lcl, "b")
				h.handle(configEvent(ConfigDrain, 0))
			},
			in: ClientDatagram(0, cliC, lcl, []byte("x")), want: DropDraining},
		{name: "at max flows",
			setup: func(h *harness) { h.open(0, cliA, lcl, "a"); h.open(0, cliB, lcl, "b") },
			in:    ClientDatagram(0, cliC, lcl, []byte("x")), want: DropShed},
		{name: "max flows 0 sheds",
			setup: func(h *harness) { h.handle(configEvent(ConfigSetMaxFlows, 0)) },
			in:    ClientDatagram(0, cliC, lcl, []byte("x")), want: DropShed},
		{name: "admit",
			in: ClientDatagram(0, cliC, lcl, []byte("x")), kinds: []OutputKind{OutMetric, OutSelectBackend, OutArmTimer}},
		{name: "admit beside a live flow arms nothing new",
			setup: func(h *harness) { h.open(0, cliA, lcl, "a") },
			in:    ClientDatagram(0, cliC, lcl, []byte("x")), kinds: []OutputKind{OutMetric, OutSelectBackend}},
		{name: "admit after undrain",
			setup: func(h *harness) { h.handle(configEvent(ConfigDrain, 0)); h.handle(configEvent(ConfigUndrain, 0)) },
			in:    ClientDatagram(0, cliC, lcl, []byte("x")), kinds: []OutputKind{OutMetric, OutSelectBackend, OutArmTimer}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{MaxFlows: 2, MaxRxDatagramSize: 100}, ClusterConfig{Cluster: 1})
			if tc.setup != nil {
				tc.setup(h)
			}
			before, drops := snap(h.m), h.m.Stats().Drops
			out := h.handle(tc.in)
			if tc.want == 0 {
				wantKinds(t, out, tc.kinds...)
				return
			}
			wantKinds(t, out, OutDrop)
			if d := out[0]; d.DropReason != tc.want || d.Datagrams != 1 || d.Bytes != len(tc.in.Payload) {
				t.Fatalf("drop %s, want %v of 1 datagram, %d bytes", fmtOutput(&d), tc.want, len(tc.in.Payload))
			}
			if out[0].Flow != 0 {
				t.Errorf("client drop names flow %v", out[0].Flow)
			}
			if after := snap(h.m); after != before {
				t.Fatalf("drop changed state: %+v -> %+v", before, after)
			}
			drops[tc.want]++
			if got := h.m.Stats().Drops; got != drops {
				t.Fatalf("drop counters %v, want %v", got, drops)
			}
		})
	}
}

// TestGROSizeLimit checks that the receive-size limit applies to each segment
// of a coalesced run, on both paths, and that a run counts its segments.
func TestGROSizeLimit(t *testing.T) {
	tests := []struct {
		name     string
		size     int
		seg      int
		drop     bool
		segments int // datagrams the run carries
		outSeg   int // SegmentSize of the send
	}{
		{name: "single at the limit", size: 100, seg: 0, segments: 1},
		{name: "single over the limit", size: 101, seg: 0, drop: true, segments: 1},
		{name: "run of full segments at the limit", size: 300, seg: 100, segments: 3, outSeg: 100},
		{name: "run with short last segment", size: 250, seg: 100, segments: 3, outSeg: 100},
		{name: "run longer than the limit, small segments", size: 1000, seg: 50, segments: 20, outSeg: 50},
		{name: "run with segments over the limit", size: 303, seg: 101, drop: true, segments: 3},
		{name: "segment size equal to payload is one datagram", size: 100, seg: 100, segments: 1},
		{name: "segment size beyond payload is one datagram", size: 99, seg: 1 << 30, segments: 1},
		{name: "oversize single with huge segment size", size: 150, seg: 1 << 30, drop: true, segments: 1},
		{name: "negative segment size is one datagram", size: 80, seg: -7, segments: 1},
		{name: "segment size 1", size: 64, seg: 1, segments: 64, outSeg: 1},
	}
	for _, tc := range tests {
		for _, dir := range []string{"client", "backend"} {
			t.Run(tc.name+"/"+dir, func(t *testing.T) {
				h := newHarness(t, Config{MaxRxDatagramSize: 100}, ClusterConfig{})
				id := h.establish(0, cliA, lcl, "x")
				payload := bytes.Repeat([]byte{'p'}, tc.size)
				var in Input
				sendKind := OutSendToBackend
				if dir == "client" {
					in = groClient(0, cliA, lcl, payload, tc.seg)
				} else {
					in = groBackend(id, payload, tc.seg)
					sendKind = OutSendToClient
				}
				out := h.handle(in)
				if tc.drop {
					wantKinds(t, out, OutDrop)
					if out[0].DropReason != DropOversize || out[0].Datagrams != tc.segments || out[0].Bytes != tc.size {
						t.Fatalf("drop %s", fmtOutput(&out[0]))
					}
					return
				}
				wantKinds(t, out, sendKind)
				if o := out[0]; len(o.Payload) != tc.size || o.SegmentSize != tc.outSeg || o.Segments() != tc.segments {
					t.Fatalf("send %d bytes seg %d (%d segments), want %d seg %d (%d)", len(o.Payload), o.SegmentSize, o.Segments(), tc.size, tc.outSeg, tc.segments)
				}
				info, _ := h.m.Flow(id)
				if dir == "client" && info.Requests != uint32(1+tc.segments) {
					t.Fatalf("requests %d, want %d", info.Requests, 1+tc.segments)
				}
				if dir == "backend" && info.Responses != uint32(tc.segments) {
					t.Fatalf("responses %d, want %d", info.Responses, tc.segments)
				}
			})
		}
	}
}

// TestFlowKey checks that flows are keyed by listener, full client address and
// local address, whatever the affinity mode, and that affinity only chooses
// the selection key.
func TestFlowKey(t *testing.T) {
	type send struct {
		l        ListenerID
		src, dst netip.AddrPort
	}
	tests := []struct {
		name     string
		affinity Affinity
		a, b     send
		sameKey  bool
	}{
		{name: "two ports, affinity ip", affinity: AffinityIP, a: send{0, cliA, lcl}, b: send{0, cliA2, lcl}, sameKey: true},
		{name: "two ports, affinity ip-port", affinity: AffinityIPPort, a: send{0, cliA, lcl}, b: send{0, cliA2, lcl}, sameKey: false},
		{name: "two local addresses", affinity: AffinityIPPort, a: send{0, cliA, lcl}, b: send{0, cliA, lcl2}, sameKey: true},
		{name: "two listeners", affinity: AffinityIPPort, a: send{0, cliA, lcl}, b: send{1, cliA, lcl}, sameKey: true},
		{name: "two clients", affinity: AffinityIP, a: send{0, cliA, lcl}, b: send{0, cliB, lcl}, sameKey: false},
		{name: "IPv4 and IPv4-mapped, affinity ip-port", affinity: AffinityIPPort, a: send{0, cliA, lcl}, b: send{0, cliM, lcl6}, sameKey: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc := ClusterConfig{Affinity: tc.affinity}
			h := newHarness(t, Config{Seed: 42}, cc, cc)
			var ids [2]FlowID
			var keys [2]uint64
			for i, s := range []send{tc.a, tc.b} {
				out := h.handle(ClientDatagram(s.l, s.src, s.dst, []byte{'q', byte(i)}))
				sel := pick(out, OutSelectBackend)
				if len(sel) != 1 {
					t.Fatalf("datagram %d did not open a flow:\n%s", i, fmtOutputs(out))
				}
				ids[i], keys[i] = sel[0].Flow, sel[0].Key
				if sel[0].Client != s.src || sel[0].Local != s.dst || sel[0].Listener != s.l {
					t.Fatalf("select %s", fmtOutput(&sel[0]))
				}
				if want := AffinityHash(42, s.src, tc.affinity); keys[i] != want {
					t.Fatalf("key %#x, want %#x", keys[i], want)
				}
				wantKinds(t, h.handle(Resolved(ids[i], be1)), OutOpenUpstream, OutSendToBackend)
			}
			if ids[0] == ids[1] || h.m.FlowCount() != 2 {
				t.Fatalf("flows %v, count %d", ids, h.m.FlowCount())
			}
			if (keys[0] == keys[1]) != tc.sameKey {
				t.Fatalf("keys %#x %#x, same want %v", keys[0], keys[1], tc.sameKey)
			}
			// Each flow's next client datagram reaches it, and each reply goes
			// to its own client and from its own local address.
			for i, s := range []send{tc.a, tc.b} {
				out := h.handle(ClientDatagram(s.l, s.src, s.dst, []byte("again")))
				wantKinds(t, out, OutSendToBackend)
				if out[0].Flow != ids[i] {
					t.Fatalf("datagram of %v reached %v", ids[i], out[0].Flow)
				}
				out = h.handle(BackendDatagram(ids[i], []byte("reply")))
				wantKinds(t, out, OutSendToClient)
				if out[0].Client != s.src || out[0].Local != s.dst || out[0].Listener != s.l || out[0].Flow != ids[i] {
					t.Fatalf("reply of %v: %s", ids[i], fmtOutput(&out[0]))
				}
			}
		})
	}
}

// TestStaleFlowID checks that a FlowID outliving its flow never reaches the
// flow that reuses its slot.
func TestStaleFlowID(t *testing.T) {
	tests := []struct {
		name   string
		in     func(stale FlowID) Input
		want   OutputKind
		reason DropReason
	}{
		{name: "backend datagram", in: func(id FlowID) Input { return BackendDatagram(id, []byte("late")) }, want: OutDrop, reason: DropUnknownFlow},
		{name: "backend run", in: func(id FlowID) Input { return groBackend(id, []byte("late-late"), 4) }, want: OutDrop, reason: DropUnknownFlow},
		{name: "resolve", in: func(id FlowID) Input { return Resolved(id, be2) }, want: OutMetric},
		{name: "resolve failure", in: func(id FlowID) Input { return ResolveFailed(id) }, want: OutMetric},
		{name: "abort", in: func(id FlowID) Input { return AbortFlow(id) }, want: OutMetric},
	}
	for _, tc := range tests {
		for _, newEstablished := range []bool{false, true} {
			name := tc.name + "/new flow awaiting"
			if newEstablished {
				name = tc.name + "/new flow established"
			}
			t.Run(name, func(t *testing.T) {
				h := newHarness(t, Config{}, ClusterConfig{})
				old := h.establish(0, cliA, lcl, "a")
				wantKinds(t, h.handle(AbortFlow(old)), OutCloseFlow, OutArmTimer)
				var id FlowID
				if newEstablished {
					id = h.establish(0, cliB, lcl, "b")
				} else {
					id = h.open(0, cliB, lcl, "b")
				}
				if id.Index() != old.Index() || id.Gen() == old.Gen() || id == old {
					t.Fatalf("slot not reused: old %v new %v", old, id)
				}
				before, _ := h.m.Flow(id)
				out := h.handle(tc.in(old))
				wantKinds(t, out, tc.want)
				if tc.want == OutMetric && (out[0].Metric != MetricStaleInput || out[0].Flow != old) {
					t.Fatalf("metric %s", fmtOutput(&out[0]))
				}
				if tc.want == OutDrop && (out[0].DropReason != tc.reason || out[0].Flow != old) {
					t.Fatalf("drop %s", fmtOutput(&out[0]))
				}
				after, ok := h.m.Flow(id)
				if !ok || after != before {
					t.Fatalf("new flow changed: %+v -> %+v (live %v)", before, after, ok)
				}
				if _, ok := h.m.Flow(old); ok {
					t.Fatalf("stale id %v still names a flow", old)
				}
			})
		}
	}
	t.Run("invalid ids", func(t *testing.T) {
		h := newHarness(t, Config{}, ClusterConfig{})
		id := h.establish(0, cliA, lcl, "a")
		for _, bad := range []FlowID{0, makeFlowID(id.Index(), 0), makeFlowID(id.Index(), id.Gen()+1), makeFlowID(1000, 1), ^FlowID(0)} {
			wantKinds(t, h.handle(BackendDatagram(bad, []byte("x"))), OutDrop)
			wantKinds(t, h.handle(Resolved(bad, be1)), OutMetric)
			wantKinds(t, h.handle(AbortFlow(bad)), OutMetric)
		}
		if h.m.FlowCount() != 1 {
			t.Fatal("flow lost")
		}
	})
	t.Run("duplicate resolve", func(t *testing.T) {
		h := newHarness(t, Config{}, ClusterConfig{})
		id := h.establish(0, cliA, lcl, "a")
		out := h.handle(Resolved(id, be2))
		wantKinds(t, out, OutMetric)
		if out[0].Metric != MetricStaleInput {
			t.Fatal(fmtOutputs(out))
		}
		wantKinds(t, h.handle(ResolveFailed(id)), OutMetric)
		if info, _ := h.m.Flow(id); info.Backend != be1.ID {
			t.Fatalf("backend changed to %d", info.Backend)
		}
	})
	t.Run("backend datagram before resolve", func(t *testing.T) {
		h := newHarness(t, Config{}, ClusterConfig{})
		id := h.open(0, cliA, lcl, "a")
		out := h.handle(BackendDatagram(id, []byte("early")))
		wantKinds(t, out, OutDrop)
		if out[0].DropReason != DropUnknownFlow || out[0].Flow != id {
			t.Fatal(fmtOutputs(out))
		}
	})
}

// TestPendingQueue checks the datagrams held while a flow waits for its
// backend: bounded, in order, copied into pool buffers.
func TestPendingQueue(t *testing.T) {
	tests := []struct {
		name      string
		limit     int // Config.PendingLimit
		poolLimit int // buffers the pool may hand out
		sends     int
		wantHeld  int
	}{
		{name: "one", sends: 1, wantHeld: 1},
		{name: "default limit", sends: 4, wantHeld: 4},
		{name: "default limit overflow", sends: 7, wantHeld: 4},
		{name: "limit 1", limit: 1, sends: 3, wantHeld: 1},
		{name: "limit 2", limit: 2, sends: 2, wantHeld: 2},
		{name: "empty pool", poolLimit: 2, sends: 4, wantHeld: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := newTestPool(tc.poolLimit)
			h := newHarness(t, Config{PendingLimit: tc.limit, Pool: pool}, ClusterConfig{})
			buf := make([]byte, 2) // the shell's receive buffer, reused
			var id FlowID
			drops := 0
			for i := 0; i < tc.sends; i++ {
				buf[0], buf[1] = 'd', '0'+byte(i)
				out := h.handle(ClientDatagram(0, cliA, lcl, buf))
				buf[0], buf[1] = 'X', 'X' // the shell reuses its buffer at once
				switch {
				case i == 0:
					wantKinds(t, out, OutMetric, OutSelectBackend, OutArmTimer)
					id = out[1].Flow
				case i < tc.wantHeld:
					wantKinds(t, out, []OutputKind{}...)
				default:
					wantKinds(t, out, OutDrop)
					if out[0].DropReason != DropPendingOverflow || out[0].Datagrams != 1 || out[0].Bytes != 2 {
						t.Fatal(fmtOutputs(out))
					}
					drops++
				}
			}
			if got := h.m.Stats().Drops[DropPendingOverflow]; got != uint64(drops) {
				t.Fatalf("overflow counter %d, want %d", got, drops)
			}
			info, _ := h.m.Flow(id)
			if info.Requests != uint32(tc.wantHeld) {
				t.Fatalf("requests %d, want %d (dropped datagrams must not count)", info.Requests, tc.wantHeld)
			}
			out := h.handle(Resolved(id, be1))
			want := []OutputKind{OutOpenUpstream}
			for i := 0; i < tc.wantHeld; i++ {
				want = append(want, OutSendToBackend)
			}
			wantKinds(t, out, want...)
			for i, o := range out[1:] {
				if string(o.Payload) != fmt.Sprintf("d%d", i) {
					t.Fatalf("flushed #%d = %q (order or aliasing)", i, o.Payload)
				}
				if !pool.owns(o.Payload) {
					t.Fatalf("flushed #%d is not in a pool buffer", i)
				}
				if unsafe.SliceData(o.Payload) == unsafe.SliceData(buf) {
					t.Fatalf("flushed #%d aliases the input buffer", i)
				}
			}
			if len(pool.outstanding) != tc.wantHeld {
				t.Fatalf("%d pool buffers out during the call, want %d", len(pool.outstanding), tc.wantHeld)
			}
			h.handle() // the next call gives the buffers back
			if len(pool.outstanding) != 0 {
				t.Fatalf("%d pool buffers leaked", len(pool.outstanding))
			}
			// Established: datagrams go straight out, borrowed.
			buf[0], buf[1] = 'd', 'z'
			out = h.handle(ClientDatagram(0, cliA, lcl, buf))
			wantKinds(t, out, OutSendToBackend)
			if unsafe.SliceData(out[0].Payload) != unsafe.SliceData(buf) {
				t.Fatal("forward path copied the payload")
			}
		})
	}
	// The limit counts held messages: a GRO run is kept whole. (It used to
	// count segments, and a client's first GSO burst lost its tail.)
	t.Run("run held whole: the limit counts messages, not segments", func(t *testing.T) {
		h := newHarness(t, Config{PendingLimit: 2}, ClusterConfig{})
		id := h.open(0, cliA, lcl, "s0")
		wantKinds(t, h.handle(groClient(0, cliA, lcl, []byte("s1s2s3s4s5"), 2)), []OutputKind{}...)
		out := h.handle(groClient(0, cliA, lcl, []byte("x1x2"), 2))
		wantKinds(t, out, OutDrop)
		if out[0].DropReason != DropPendingOverflow || out[0].Datagrams != 2 || out[0].Bytes != 4 {
			t.Fatal(fmtOutputs(out))
		}
		out = h.handle(Resolved(id, be1))
		wantKinds(t, out, OutOpenUpstream, OutSendToBackend, OutSendToBackend)
		if string(out[1].Payload) != "s0" || string(out[2].Payload) != "s1s2s3s4s5" || out[2].SegmentSize != 2 {
			t.Fatal(fmtOutputs(out))
		}
		if info, _ := h.m.Flow(id); info.Requests != 6 {
			t.Fatalf("requests %d, want 6 (one plus a run of five)", info.Requests)
		}
	})
	t.Run("pool buffers return when a waiting flow closes", func(t *testing.T) {
		pool := newTestPool(0)
		h := newHarness(t, Config{Pool: pool}, ClusterConfig{})
		id := h.open(0, cliA, lcl, "a")
		h.handle(ClientDatagram(0, cliA, lcl, []byte("b")))
		if len(pool.outstanding) != 2 {
			t.Fatalf("%d buffers held", len(pool.outstanding))
		}
		h.handle(AbortFlow(id))
		if len(pool.outstanding) != 0 {
			t.Fatalf("%d buffers leaked", len(pool.outstanding))
		}
	})
}

// TestCloseWithHeldDatagrams checks that a flow closing before its backend is
// resolved drops what it holds, with a reason that says why, and closes.
func TestCloseWithHeldDatagrams(t *testing.T) {
	tests := []struct {
		name   string
		held   int
		in     func(FlowID) Input
		drop   DropReason
		reason CloseReason
	}{
		{name: "resolve failed, one held", held: 1, in: ResolveFailed, drop: DropNoBackend, reason: CloseNoBackend},
		{name: "resolve failed, three held", held: 3, in: ResolveFailed, drop: DropNoBackend, reason: CloseNoBackend},
		{name: "resolved to an invalid address", held: 2, in: func(id FlowID) Input { return Resolved(id, Backend{ID: 9}) }, drop: DropNoBackend, reason: CloseNoBackend},
		{name: "aborted", held: 2, in: AbortFlow, drop: DropFlowClosed, reason: CloseAborted},
		{name: "close all", held: 4, in: func(FlowID) Input { return configEvent(ConfigCloseAll, 0) }, drop: DropFlowClosed, reason: CloseShutdown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{}, ClusterConfig{Cluster: 3})
			id := h.open(0, cliA, lcl, "abc")
			for i := 1; i < tc.held; i++ {
				h.handle(ClientDatagram(0, cliA, lcl, []byte("abc")))
			}
			out := h.handle(tc.in(id))
			wantKinds(t, out, OutDrop, OutCloseFlow, OutArmTimer)
			if d := out[0]; d.DropReason != tc.drop || d.Datagrams != tc.held || d.Bytes != 3*tc.held || d.Flow != id {
				t.Fatalf("drop %s", fmtOutput(&d))
			}
			if c := out[1]; c.CloseReason != tc.reason || c.Flow != id || c.Cluster != 3 || c.Client != cliA || c.Local != lcl {
				t.Fatalf("close %s", fmtOutput(&c))
			}
			if out[2].Deadline != Never {
				t.Fatalf("timer %d", out[2].Deadline)
			}
			if len(h.pool.outstanding) != 0 {
				t.Fatalf("%d buffers leaked", len(h.pool.outstanding))
			}
			// The client's next datagram starts a new flow.
			if nid := h.open(0, cliA, lcl, "again"); nid == id {
				t.Fatal("closed id reused")
			}
		})
	}
}

func TestResponsesCap(t *testing.T) {
	tests := []struct {
		name      string
		responses uint32
		replies   int
	}{
		{name: "unlimited", responses: 0, replies: 5},
		{name: "one", responses: 1, replies: 3},
		{name: "two", responses: 2, replies: 3},
		{name: "three", responses: 3, replies: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{}, ClusterConfig{Responses: tc.responses})
			id := h.establish(0, cliA, lcl, "q")
			for i := 1; i <= tc.replies; i++ {
				out := h.handle(BackendDatagram(id, []byte{'r', byte(i)}))
				switch {
				case tc.responses == 0 || uint32(i) < tc.responses:
					wantKinds(t, out, OutSendToClient)
				case uint32(i) == tc.responses:
					wantKinds(t, out, OutSendToClient, OutCloseFlow, OutArmTimer)
					if out[1].CloseReason != CloseResponses || out[1].Stats.DatagramsOut != uint64(i) {
						t.Fatal(fmtOutputs(out))
					}
				default:
					wantKinds(t, out, OutDrop)
					if out[0].DropReason != DropUnknownFlow {
						t.Fatal(fmtOutputs(out))
					}
				}
			}
		})
	}
}

// TestRequestsCap checks nginx-style proxy_requests: after the N-th client
// datagram the flow leaves the table (the next datagram opens a new flow) but
// still returns replies until its responses or back timeout. The seed closed
// the flow at once and lost the N-th reply.
func TestRequestsCap(t *testing.T) {
	tests := []struct {
		name      string
		requests  uint32
		responses uint32
		replies   int
		closeAt   time.Duration // when the detached flow closes; 0: on its last reply
	}{
		{name: "one request, reply then back timeout", requests: 1, replies: 1, closeAt: 4 * time.Second},
		{name: "two requests, two replies then back timeout", requests: 2, replies: 2, closeAt: 4 * time.Second},
		{name: "two requests, responses 1 closes on the second reply", requests: 2, responses: 1, replies: 2},
		{name: "two requests, responses 2 closes on the fourth reply", requests: 2, responses: 2, replies: 4},
		{name: "one request, no reply: back timeout", requests: 1, replies: 0, closeAt: 3 * time.Second},
	}
	for _, tc := range tests {
		for _, awaiting := range []bool{false, true} {
			name := tc.name
			if awaiting {
				name += "/reached while waiting for the backend"
			}
			t.Run(name, func(t *testing.T) {
				h := newHarness(t, Config{}, ClusterConfig{Requests: tc.requests, Responses: tc.responses,
					FrontTimeout: 10 * time.Second, BackTimeout: 3 * time.Second})
				old := h.open(0, cliA, lcl, "r1")
				if !awaiting {
					wantKinds(t, h.handle(Resolved(old, be1)), OutOpenUpstream, OutSendToBackend)
				}
				for i := 2; i <= int(tc.requests); i++ {
					out := h.handle(ClientDatagram(0, cliA, lcl, []byte(fmt.Sprintf("r%d", i))))
					if awaiting {
						if len(pick(out, OutSendToBackend)) != 0 {
							t.Fatal(fmtOutputs(out))
						}
					} else if s := pick(out, OutSendToBackend); len(s) != 1 || s[0].Flow != old {
						t.Fatal(fmtOutputs(out))
					}
				}
				info, _ := h.m.Flow(old)
				if info.Attached || info.Requests != tc.requests {
					t.Fatalf("after %d requests: %+v", tc.requests, info)
				}
				if info.Deadline != h.now.Add(3*time.Second) {
					t.Fatalf("detached deadline %d, want back timeout", info.Deadline)
				}
				// The client's next datagram opens a new flow.
				h.at(time.Second)
				out := h.handle(ClientDatagram(0, cliA, lcl, []byte("next")))
				sel := pick(out, OutSelectBackend)
				if len(sel) != 1 || sel[0].Flow == old {
					t.Fatalf("next datagram: %s", fmtOutputs(out))
				}
				if awaiting {
					out = h.handle(Resolved(old, be1))
					if s := pick(out, OutSendToBackend); len(s) != int(tc.requests) {
						t.Fatalf("flush of the detached flow: %s", fmtOutputs(out))
					}
				}
				// Replies still reach the client, the N-th one included.
				for i := 1; i <= tc.replies; i++ {
					out = h.handle(BackendDatagram(old, []byte(fmt.Sprintf("a%d", i))))
					if s := pick(out, OutSendToClient); len(s) != 1 || s[0].Client != cliA || s[0].Flow != old {
						t.Fatalf("reply %d: %s", i, fmtOutputs(out))
					}
					// Responses counts per forwarded request.
					if tc.responses > 0 && uint32(i) == tc.responses*tc.requests {
						if c := pick(out, OutCloseFlow); len(c) != 1 || c[0].CloseReason != CloseResponses {
							t.Fatalf("reply %d: %s", i, fmtOutputs(out))
						}
						return
					}
				}
				// Otherwise the back timeout closes it.
				for h.m.FlowCount() > 1 {
					if d := h.m.NextDeadline(); d != Never && d > h.now {
						h.now = d
					}
					out = h.handle(TimerFired())
					if c := pick(out, OutCloseFlow); len(c) == 1 {
						if c[0].Flow != old || c[0].CloseReason != CloseIdle || h.now != Time(tc.closeAt) {
							t.Fatalf("close at %d (want %d): %s", h.now, tc.closeAt, fmtOutputs(out))
						}
					}
				}
			})
		}
	}
	t.Run("metric", func(t *testing.T) {
		h := newHarness(t, Config{}, ClusterConfig{Requests: 2})
		id := h.establish(0, cliA, lcl, "1")
		out := h.handle(ClientDatagram(0, cliA, lcl, []byte("2")))
		wantKinds(t, out, OutSendToBackend, OutMetric)
		if out[1].Metric != MetricRequestsReached || out[1].Flow != id {
			t.Fatal(fmtOutputs(out))
		}
	})
}

// TestIdleTimeouts checks the single idle deadline: a client datagram sets it
// to now+front, a backend datagram to now+back, the last event wins.
func TestIdleTimeouts(t *testing.T) {
	type event struct {
		at      time.Duration
		backend bool
		drop    bool // an oversize datagram: dropped, must not refresh
	}
	tests := []struct {
		name    string
		events  []event
		closeAt time.Duration
	}{
		{name: "front timeout after admission", closeAt: 10 * time.Second},
		{name: "client datagram extends", events: []event{{at: 4 * time.Second}}, closeAt: 14 * time.Second},
		{name: "backend datagram shortens", events: []event{{at: time.Second, backend: true}}, closeAt: 4 * time.Second},
		{name: "client after backend", events: []event{{at: time.Second, backend: true}, {at: 2 * time.Second}}, closeAt: 12 * time.Second},
		{name: "backend after client", events: []event{{at: 5 * time.Second}, {at: 6 * time.Second, backend: true}}, closeAt: 9 * time.Second},
		{name: "dropped client datagram does not refresh", events: []event{{at: 5 * time.Second, drop: true}}, closeAt: 10 * time.Second},
		{name: "dropped backend datagram does not refresh", events: []event{{at: 5 * time.Second, drop: true, backend: true}}, closeAt: 10 * time.Second},
		{name: "many backend datagrams", events: []event{{at: time.Second, backend: true}, {at: 3 * time.Second, backend: true}, {at: 5 * time.Second, backend: true}}, closeAt: 8 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{MaxRxDatagramSize: 10}, ClusterConfig{FrontTimeout: 10 * time.Second, BackTimeout: 3 * time.Second})
			id := h.establish(0, cliA, lcl, "q")
			for _, e := range tc.events {
				h.at(e.at)
				payload := []byte("x")
				if e.drop {
					payload = make([]byte, 11)
				}
				var out []Output
				if e.backend {
					out = h.handle(BackendDatagram(id, payload))
				} else {
					out = h.handle(ClientDatagram(0, cliA, lcl, payload))
				}
				if len(pick(out, OutDrop)) != 0 != e.drop {
					t.Fatalf("at %v: %s", e.at, fmtOutputs(out))
				}
			}
			closed := fireUntilClosed(t, h, id)
			if closed.CloseReason != CloseIdle || h.now != Time(tc.closeAt) || closed.Stats.Closed != h.now {
				t.Fatalf("closed at %v (want %v): %s", time.Duration(h.now), tc.closeAt, fmtOutput(&closed))
			}
		})
	}
}

// fireUntilClosed plays the shell's timer: it fires InTimer at each armed
// deadline until flow id closes, and returns its close output.
func fireUntilClosed(tb testing.TB, h *harness, id FlowID) Output {
	tb.Helper()
	for i := 0; i < 100; i++ {
		d := h.m.NextDeadline()
		if d == Never {
			tb.Fatalf("flow %v open with no timer armed", id)
		}
		if d > h.now {
			h.now = d
		}
		out := h.handle(TimerFired())
		arms := pick(out, OutArmTimer)
		if len(arms) != 1 || out[len(out)-1].Kind != OutArmTimer {
			tb.Fatalf("timer firing did not re-arm last: %s", fmtOutputs(out))
		}
		for _, o := range pick(out, OutCloseFlow) {
			if o.Flow == id {
				return o
			}
		}
	}
	tb.Fatalf("flow %v never closed", id)
	return Output{}
}

func TestLifetime(t *testing.T) {
	tests := []struct {
		name     string
		lifetime time.Duration
		events   []time.Duration // client datagrams
		closeAt  time.Duration
		reason   CloseReason
	}{
		{name: "busy flow ends at its lifetime", lifetime: 15 * time.Second, events: []time.Duration{8 * time.Second, 14 * time.Second}, closeAt: 15 * time.Second, reason: CloseLifetime},
		{name: "idle before lifetime", lifetime: 15 * time.Second, closeAt: 10 * time.Second, reason: CloseIdle},
		{name: "lifetime shorter than front timeout", lifetime: 2 * time.Second, closeAt: 2 * time.Second, reason: CloseLifetime},
		{name: "no lifetime", lifetime: 0, events: []time.Duration{8 * time.Second, 16 * time.Second}, closeAt: 26 * time.Second, reason: CloseIdle},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{}, ClusterConfig{FrontTimeout: 10 * time.Second, Lifetime: tc.lifetime})
			id := h.establish(0, cliA, lcl, "q")
			for _, e := range tc.events {
				h.at(e)
				wantKinds(t, h.handle(ClientDatagram(0, cliA, lcl, []byte("x"))), OutSendToBackend)
			}
			closed := fireUntilClosed(t, h, id)
			if closed.CloseReason != tc.reason || h.now != Time(tc.closeAt) {
				t.Fatalf("closed at %v (want %v): %s", time.Duration(h.now), tc.closeAt, fmtOutput(&closed))
			}
		})
	}
	t.Run("datagram after the lifetime starts a new flow", func(t *testing.T) {
		h := newHarness(t, Config{}, ClusterConfig{FrontTimeout: 10 * time.Second, Lifetime: 5 * time.Second})
		id := h.establish(0, cliA, lcl, "q")
		h.at(4 * time.Second)
		h.handle(ClientDatagram(0, cliA, lcl, []byte("x")))
		h.at(5 * time.Second)
		out := h.handle(ClientDatagram(0, cliA, lcl, []byte("y")))
		wantKinds(t, out, OutCloseFlow, OutMetric, OutSelectBackend, OutArmTimer)
		if out[0].Flow != id || out[0].CloseReason != CloseLifetime || out[2].Flow == id {
			t.Fatal(fmtOutputs(out))
		}
	})
}

// TestTimer checks the manager-wide timer: re-armed after every firing (the
// seed could fire early and never re-arm), and never revives an expired flow.
func TestTimer(t *testing.T) {
	cc := ClusterConfig{FrontTimeout: 10 * time.Second, BackTimeout: 10 * time.Second}
	tests := []struct {
		name string
		run  func(t *testing.T, h *harness)
	}{
		{name: "firing with no flows arms Never", run: func(t *testing.T, h *harness) {
			out := h.handle(TimerFired())
			wantKinds(t, out, OutArmTimer)
			if out[0].Deadline != Never {
				t.Fatal(fmtOutputs(out))
			}
		}},
		{name: "early firing re-arms the same deadline", run: func(t *testing.T, h *harness) {
			h.establish(0, cliA, lcl, "q")
			for _, at := range []time.Duration{time.Second, 9 * time.Second, 9 * time.Second} {
				h.at(at)
				out := h.handle(TimerFired())
				wantKinds(t, out, OutArmTimer)
				if out[0].Deadline != Time(10*time.Second) {
					t.Fatal(fmtOutputs(out))
				}
			}
		}},
		{name: "firing after traffic moved the deadline re-arms the new one", run: func(t *testing.T, h *harness) {
			h.establish(0, cliA, lcl, "q")
			h.at(5 * time.Second)
			wantKinds(t, h.handle(ClientDatagram(0, cliA, lcl, []byte("x"))), OutSendToBackend)
			h.at(10 * time.Second)
			out := h.handle(TimerFired())
			wantKinds(t, out, OutArmTimer)
			if out[0].Deadline != Time(15*time.Second) {
				t.Fatal(fmtOutputs(out))
			}
		}},
		{name: "several firings in one batch arm once", run: func(t *testing.T, h *harness) {
			h.establish(0, cliA, lcl, "q")
			out := h.handle(TimerFired(), TimerFired(), TimerFired())
			wantKinds(t, out, OutArmTimer)
		}},
		{name: "an expired flow seen by a client datagram is closed, not revived", run: func(t *testing.T, h *harness) {
			id := h.establish(0, cliA, lcl, "q")
			h.at(10 * time.Second)
			out := h.handle(ClientDatagram(0, cliA, lcl, []byte("late")))
			wantKinds(t, out, OutCloseFlow, OutMetric, OutSelectBackend, OutArmTimer)
			if out[0].Flow != id || out[0].CloseReason != CloseIdle || out[2].Flow == id || out[3].Deadline != Time(20*time.Second) {
				t.Fatal(fmtOutputs(out))
			}
		}},
		{name: "an expired flow seen by a backend datagram is closed, the datagram dropped", run: func(t *testing.T, h *harness) {
			id := h.establish(0, cliA, lcl, "q")
			h.at(11 * time.Second)
			out := h.handle(BackendDatagram(id, []byte("late")))
			wantKinds(t, out, OutCloseFlow, OutDrop, OutArmTimer)
			if out[0].CloseReason != CloseIdle || out[1].DropReason != DropUnknownFlow || out[2].Deadline != Never {
				t.Fatal(fmtOutputs(out))
			}
		}},
		// Regression: the drop of the held datagram set the drop attribution
		// to the closed flow, and the draining drop of the same input that
		// followed named that closed flow too.
		{name: "an expired waiting flow seen by a datagram drops what it held", run: func(t *testing.T, h *harness) {
			id := h.open(0, cliA, lcl, "q")
			h.handle(configEvent(ConfigDrain, 0))
			h.at(10 * time.Second)
			out := h.handle(ClientDatagram(0, cliA, lcl, []byte("late")))
			wantKinds(t, out, OutDrop, OutCloseFlow, OutDrop, OutArmTimer)
			if out[0].DropReason != DropFlowClosed || out[0].Flow != id || out[1].Flow != id {
				t.Fatal(fmtOutputs(out))
			}
			if out[2].DropReason != DropDraining || out[2].Flow != 0 {
				t.Fatalf("the draining drop must not name the closed flow: %s", fmtOutputs(out))
			}
		}},
		// Regression: a resolution that arrived after the flow's deadline (its
		// timer not yet fired) opened an upstream and sent the held datagrams
		// for a dead flow, whose replies were then dropped as unknown_flow.
		{name: "a resolution after the deadline closes the flow", run: func(t *testing.T, h *harness) {
			id := h.open(0, cliA, lcl, "q")
			h.at(10 * time.Second)
			out := h.handle(Resolved(id, be1))
			wantKinds(t, out, OutDrop, OutCloseFlow, OutArmTimer)
			if out[0].DropReason != DropFlowClosed || out[1].Flow != id || out[1].CloseReason != CloseIdle || out[2].Deadline != Never {
				t.Fatal(fmtOutputs(out))
			}
			if len(h.pool.outstanding) != 0 {
				t.Fatal("held buffer leaked")
			}
		}},
		{name: "a resolution just before the deadline establishes the flow", run: func(t *testing.T, h *harness) {
			id := h.open(0, cliA, lcl, "q")
			h.at(10*time.Second - 1)
			wantKinds(t, h.handle(Resolved(id, be1)), OutOpenUpstream, OutSendToBackend)
		}},
		{name: "unchanged deadline arms nothing outside a firing", run: func(t *testing.T, h *harness) {
			h.establish(0, cliA, lcl, "q")
			wantKinds(t, h.handle(ClientDatagram(0, cliA, lcl, []byte("x"))), OutSendToBackend)
			wantKinds(t, h.handle())
		}},
		{name: "a shorter back timeout re-arms earlier", run: func(t *testing.T, h *harness) {
			h2 := newHarness(t, Config{}, ClusterConfig{FrontTimeout: 10 * time.Second, BackTimeout: 2 * time.Second})
			id := h2.establish(0, cliA, lcl, "q")
			h2.at(time.Second)
			out := h2.handle(BackendDatagram(id, []byte("a")))
			wantKinds(t, out, OutSendToClient, OutArmTimer)
			if out[1].Deadline != Time(3*time.Second) {
				t.Fatal(fmtOutputs(out))
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, newHarness(t, Config{}, cc))
		})
	}
}

// TestExpiryBudget checks that one InTimer does bounded work, and asks to be
// called again at once (a deadline not after now) while work remains.
func TestExpiryBudget(t *testing.T) {
	tests := []struct {
		name   string
		budget int
		flows  int
		rounds []int // closes per firing
	}{
		{name: "budget 2, 5 flows", budget: 2, flows: 5, rounds: []int{2, 2, 1}},
		{name: "budget 1, 3 flows", budget: 1, flows: 3, rounds: []int{1, 1, 1}},
		{name: "budget larger than work", budget: 10, flows: 5, rounds: []int{5}},
		{name: "default budget", budget: 0, flows: 50, rounds: []int{50}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{ExpiryBudget: tc.budget}, ClusterConfig{FrontTimeout: 10 * time.Second})
			for i := 0; i < tc.flows; i++ {
				h.at(time.Duration(i) * time.Millisecond)
				h.open(0, netip.AddrPortFrom(cliA.Addr(), uint16(1000+i)), lcl, "q")
			}
			h.at(time.Minute)
			for r, want := range tc.rounds {
				out := h.handle(TimerFired())
				if got := len(pick(out, OutCloseFlow)); got != want {
					t.Fatalf("round %d closed %d, want %d", r, got, want)
				}
				arm := out[len(out)-1]
				if arm.Kind != OutArmTimer {
					t.Fatal(fmtOutputs(out))
				}
				if r < len(tc.rounds)-1 && arm.Deadline > h.now {
					t.Fatalf("round %d: work left but deadline %d after now %d", r, arm.Deadline, h.now)
				}
				if r == len(tc.rounds)-1 && arm.Deadline != Never {
					t.Fatalf("last round armed %d", arm.Deadline)
				}
			}
		})
	}
	t.Run("lazily re-queued entries count against the budget", func(t *testing.T) {
		h := newHarness(t, Config{ExpiryBudget: 2}, ClusterConfig{FrontTimeout: 10 * time.Second})
		for i := 0; i < 4; i++ {
			h.open(0, netip.AddrPortFrom(cliA.Addr(), uint16(1000+i)), lcl, "q")
		}
		h.at(5 * time.Second)
		for i := 0; i < 4; i++ {
			h.handle(ClientDatagram(0, netip.AddrPortFrom(cliA.Addr(), uint16(1000+i)), lcl, []byte("x")))
		}
		h.at(10 * time.Second)
		out := h.handle(TimerFired())
		wantKinds(t, out, OutArmTimer)
		if out[0].Deadline > h.now {
			t.Fatalf("work left but armed %d", out[0].Deadline)
		}
		out = h.handle(TimerFired())
		wantKinds(t, out, OutArmTimer)
		if out[0].Deadline != Time(15*time.Second) {
			t.Fatal(fmtOutputs(out))
		}
	})
}

// TestSegmentCaps checks that a coalesced run counts as its segments against
// the caps, and that a cap falling inside a run splits it.
func TestSegmentCaps(t *testing.T) {
	// Regression (d below): the single segment left of a split run was sent
	// with SegmentSize equal to its length instead of 0.
	t.Run("requests cap inside a run: the rest starts new flows", func(t *testing.T) {
		h := newHarness(t, Config{}, ClusterConfig{Requests: 2})
		a := h.establish(0, cliA, lcl, "s0") // one request used
		out := h.handle(groClient(0, cliA, lcl, []byte("s1s2s3s4s5s6"), 2))
		// a takes s1 (its 2nd request); b takes s2 s3; c takes s4 s5; d takes s6.
		wantKinds(t, out,
			OutSendToBackend, OutMetric,
			OutMetric, OutSelectBackend, OutMetric,
			OutMetric, OutSelectBackend, OutMetric,
			OutMetric, OutSelectBackend)
		if string(out[0].Payload) != "s1" || out[0].SegmentSize != 0 || out[0].Flow != a || out[1].Metric != MetricRequestsReached {
			t.Fatal(fmtOutputs(out))
		}
		b, c, d := out[3].Flow, out[6].Flow, out[9].Flow
		if out[4].Metric != MetricRequestsReached || out[4].Flow != b || out[7].Flow != c {
			t.Fatal(fmtOutputs(out))
		}
		for _, tc := range []struct {
			id      FlowID
			payload string
			seg     int
		}{{b, "s2s3", 2}, {c, "s4s5", 2}, {d, "s6", 0}} {
			out = h.handle(Resolved(tc.id, be1))
			wantKinds(t, out, OutOpenUpstream, OutSendToBackend)
			if string(out[1].Payload) != tc.payload || out[1].SegmentSize != tc.seg {
				t.Fatalf("flow %v: %s", tc.id, fmtOutputs(out))
			}
		}
		out = h.handle(ClientDatagram(0, cliA, lcl, []byte("s7")))
		wantKinds(t, out, OutSendToBackend, OutMetric)
		if out[0].Flow != d {
			t.Fatal(fmtOutputs(out))
		}
	})
	t.Run("requests cap inside a run while draining: the rest is dropped", func(t *testing.T) {
		h := newHarness(t, Config{}, ClusterConfig{Requests: 2})
		h.establish(0, cliA, lcl, "s0")
		h.handle(configEvent(ConfigDrain, 0))
		out := h.handle(groClient(0, cliA, lcl, []byte("s1s2s3s4"), 2))
		wantKinds(t, out, OutSendToBackend, OutMetric, OutDrop)
		if d := out[2]; d.DropReason != DropDraining || d.Datagrams != 3 || d.Bytes != 6 {
			t.Fatal(fmtOutputs(out))
		}
	})
	tests := []struct {
		name      string
		responses uint32
		before    int // single replies first
		run       string
		sent      string
		sentSeg   int
		dropped   int
		closes    bool
	}{
		{name: "run within the cap", responses: 5, run: "r1r2r3", sent: "r1r2r3", sentSeg: 2},
		{name: "run reaching the cap exactly", responses: 3, run: "r1r2r3", sent: "r1r2r3", sentSeg: 2, closes: true},
		{name: "cap inside the run", responses: 2, run: "r1r2r3r4r5", sent: "r1r2", sentSeg: 2, dropped: 3, closes: true},
		{name: "one segment left under the cap", responses: 2, before: 1, run: "r1r2r3", sent: "r1", sentSeg: 0, dropped: 2, closes: true},
		{name: "short last segment dropped", responses: 2, run: "r1r2r", sent: "r1r2", sentSeg: 2, dropped: 1, closes: true},
	}
	for _, tc := range tests {
		t.Run("responses: "+tc.name, func(t *testing.T) {
			h := newHarness(t, Config{}, ClusterConfig{Responses: tc.responses})
			id := h.establish(0, cliA, lcl, "q")
			for i := 0; i < tc.before; i++ {
				wantKinds(t, h.handle(BackendDatagram(id, []byte("r0"))), OutSendToClient)
			}
			out := h.handle(groBackend(id, []byte(tc.run), 2))
			want := []OutputKind{OutSendToClient}
			if tc.dropped > 0 {
				want = append(want, OutDrop)
			}
			if tc.closes {
				want = append(want, OutCloseFlow, OutArmTimer)
			}
			wantKinds(t, out, want...)
			if string(out[0].Payload) != tc.sent || out[0].SegmentSize != tc.sentSeg {
				t.Fatal(fmtOutputs(out))
			}
			if tc.dropped > 0 {
				if d := out[1]; d.DropReason != DropFlowClosed || d.Datagrams != tc.dropped || d.Bytes != len(tc.run)-len(tc.sent) || d.Flow != id {
					t.Fatal(fmtOutputs(out))
				}
			}
			if tc.closes {
				c := out[len(out)-2]
				if c.CloseReason != CloseResponses || c.Stats.DatagramsOut != uint64(tc.responses) || c.Stats.BytesOut != uint64(2*tc.before+len(tc.sent)) {
					t.Fatal(fmtOutputs(out))
				}
			} else if info, _ := h.m.Flow(id); info.Responses != 3 {
				t.Fatalf("responses %d, want 3", info.Responses)
			}
			if got := h.m.Stats().Drops[DropFlowClosed]; got != uint64(tc.dropped) {
				t.Fatalf("flow_closed drops %d", got)
			}
		})
	}
}

func TestConfigEvents(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, h *harness)
	}{
		{name: "set cluster applies to new flows only", run: func(t *testing.T, h *harness) {
			a := h.establish(0, cliA, lcl, "q")
			h.handle(setCluster(0, ClusterConfig{Cluster: 2, FrontTimeout: 20 * time.Second, ProxyProtocol: ProxyEvery}))
			out := h.handle(ClientDatagram(0, cliA, lcl, []byte("x")))
			wantKinds(t, out, OutSendToBackend)
			if out[0].Cluster != 1 || out[0].Header != nil {
				t.Fatalf("live flow took the new contract: %s", fmtOutputs(out))
			}
			if info, _ := h.m.Flow(a); info.Deadline != Time(10*time.Second) {
				t.Fatalf("live flow deadline %d, want its own front timeout", info.Deadline)
			}
			b := h.open(0, cliB, lcl, "q")
			if info, _ := h.m.Flow(b); info.Deadline != Time(20*time.Second) {
				t.Fatalf("new flow deadline %d", info.Deadline)
			}
			out = h.handle(Resolved(b, be1))
			wantKinds(t, out, OutOpenUpstream, OutSendToBackend)
			if out[1].Cluster != 2 || out[1].Header == nil {
				t.Fatalf("new flow: %s", fmtOutputs(out))
			}
			wantKinds(t, h.handle(BackendDatagram(b, []byte("r"))), OutSendToClient)
			wantKinds(t, h.handle(BackendDatagram(b, []byte("r"))), OutSendToClient)
			// a forwarded two requests: its first reply leaves it open.
			wantKinds(t, h.handle(BackendDatagram(a, []byte("r"))), OutSendToClient)
			out = h.handle(BackendDatagram(a, []byte("r")))
			wantKinds(t, out, OutSendToClient, OutCloseFlow, OutArmTimer)
			if out[1].CloseReason != CloseResponses || out[1].Cluster != 1 {
				t.Fatal(fmtOutputs(out))
			}
		}},
		{name: "set cluster twice and close keeps config references balanced", run: func(t *testing.T, h *harness) {
			a := h.establish(0, cliA, lcl, "q")
			for i := 0; i < 5; i++ {
				h.handle(setCluster(0, ClusterConfig{Cluster: ClusterID(10 + i)}))
			}
			h.handle(AbortFlow(a))
			// One for each listener's current config.
			if live := len(h.m.versions) - len(h.m.versionsFree); live != 2 {
				t.Fatalf("%d config versions live, want 2", live)
			}
		}},
		{name: "remove cluster drops client datagrams, replies still flow", run: func(t *testing.T, h *harness) {
			a := h.establish(0, cliA, lcl, "q")
			for i := 0; i < 2; i++ {
				if out := h.handle(ConfigInput(ConfigEvent{Kind: ConfigRemoveCluster, Listener: 0})); len(out) != 0 {
					t.Fatal(fmtOutputs(out))
				}
			}
			for _, src := range []netip.AddrPort{cliA, cliB} {
				out := h.handle(ClientDatagram(0, src, lcl, []byte("x")))
				wantKinds(t, out, OutDrop)
				if out[0].DropReason != DropNoCluster {
					t.Fatal(fmtOutputs(out))
				}
			}
			wantKinds(t, h.handle(BackendDatagram(a, []byte("r"))), OutSendToClient, OutCloseFlow, OutArmTimer)
			if out := h.handle(ConfigInput(ConfigEvent{Kind: ConfigRemoveCluster, Listener: 77})); len(out) != 0 {
				t.Fatal(fmtOutputs(out))
			}
			h.handle(setCluster(0, ClusterConfig{}))
			h.open(0, cliB, lcl, "x")
		}},
		{name: "set max flows shrinks by shedding new flows only", run: func(t *testing.T, h *harness) {
			ids := []FlowID{h.establish(0, cliA, lcl, "a"), h.establish(0, cliB, lcl, "b"), h.establish(0, cliC, lcl, "c")}
			if out := h.handle(configEvent(ConfigSetMaxFlows, 1)); len(out) != 0 || h.m.FlowCount() != 3 || h.m.MaxFlows() != 1 {
				t.Fatalf("shrink: %s, %d flows", fmtOutputs(out), h.m.FlowCount())
			}
			wantKinds(t, h.handle(ClientDatagram(0, cliA, lcl, []byte("x"))), OutSendToBackend)
			for _, id := range ids[:2] {
				h.handle(AbortFlow(id))
				out := h.handle(ClientDatagram(0, cli6, lcl6, []byte("x")))
				wantKinds(t, out, OutDrop)
				if out[0].DropReason != DropShed {
					t.Fatal(fmtOutputs(out))
				}
			}
			h.handle(AbortFlow(ids[2]))
			h.open(0, cli6, lcl6, "x")
			h.handle(configEvent(ConfigSetMaxFlows, -5))
			if h.m.MaxFlows() != 0 {
				t.Fatalf("max flows %d after -5", h.m.MaxFlows())
			}
			h.handle(configEvent(ConfigSetMaxFlows, 1<<40))
			if h.m.MaxFlows() != maxFlowSlots {
				t.Fatalf("max flows %d after 1<<40", h.m.MaxFlows())
			}
		}},
		{name: "set max rx applies to both directions", run: func(t *testing.T, h *harness) {
			a := h.establish(0, cliA, lcl, "q")
			h.handle(configEvent(ConfigSetMaxRxDatagramSize, 10))
			for _, in := range []Input{ClientDatagram(0, cliA, lcl, make([]byte, 11)), BackendDatagram(a, make([]byte, 11))} {
				out := h.handle(in)
				wantKinds(t, out, OutDrop)
				if out[0].DropReason != DropOversize {
					t.Fatal(fmtOutputs(out))
				}
			}
			wantKinds(t, h.handle(ClientDatagram(0, cliA, lcl, make([]byte, 10))), OutSendToBackend)
			for _, tc := range []struct{ value, want int }{{0, 1}, {-3, 1}, {1 << 20, MaxDatagramSize}, {1500, 1500}} {
				h.handle(configEvent(ConfigSetMaxRxDatagramSize, tc.value))
				if got := h.m.MaxRxDatagramSize(); got != tc.want {
					t.Fatalf("max rx %d after %d, want %d", got, tc.value, tc.want)
				}
			}
		}},
		{name: "drain and undrain", run: func(t *testing.T, h *harness) {
			a := h.establish(0, cliA, lcl, "q")
			h.handle(configEvent(ConfigDrain, 0))
			if !h.m.Draining() {
				t.Fatal("not draining")
			}
			out := h.handle(ClientDatagram(0, cliB, lcl, []byte("x")))
			wantKinds(t, out, OutDrop)
			if out[0].DropReason != DropDraining {
				t.Fatal(fmtOutputs(out))
			}
			wantKinds(t, h.handle(ClientDatagram(0, cliA, lcl, []byte("x"))), OutSendToBackend)
			wantKinds(t, h.handle(BackendDatagram(a, []byte("r"))), OutSendToClient) // one reply per request
			wantKinds(t, h.handle(BackendDatagram(a, []byte("r"))), OutSendToClient, OutCloseFlow, OutArmTimer)
			h.handle(configEvent(ConfigUndrain, 0))
			if h.m.Draining() {
				t.Fatal("still draining")
			}
			h.open(0, cliB, lcl, "x")
		}},
		{name: "close all closes every flow exactly once and is idempotent", run: func(t *testing.T, h *harness) {
			ids := map[FlowID]bool{
				h.establish(0, cliA, lcl, "a"): true,
				h.establish(1, cliB, lcl, "b"): true,
				h.open(0, cliC, lcl, "c"):      true,
			}
			h.handle(ClientDatagram(0, cliC, lcl, []byte("c2")))
			h.handle(configEvent(ConfigDrain, 0))
			out := h.handle(configEvent(ConfigCloseAll, 0))
			closed := map[FlowID]int{}
			for _, o := range out {
				switch o.Kind {
				case OutCloseFlow:
					closed[o.Flow]++
					if o.CloseReason != CloseShutdown {
						t.Fatal(fmtOutputs(out))
					}
				case OutDrop:
					if o.DropReason != DropFlowClosed || o.Datagrams != 2 {
						t.Fatal(fmtOutputs(out))
					}
				case OutArmTimer:
					if o.Deadline != Never {
						t.Fatal(fmtOutputs(out))
					}
				default:
					t.Fatal(fmtOutputs(out))
				}
			}
			if len(closed) != len(ids) {
				t.Fatalf("closed %v, want %v", closed, ids)
			}
			for id, n := range closed {
				if !ids[id] || n != 1 {
					t.Fatalf("closed %v %d times", id, n)
				}
			}
			if s := h.m.Stats(); s.Active != 0 || s.Evicted != 3 || s.Closes[CloseShutdown] != 3 {
				t.Fatalf("stats %+v", s)
			}
			if out := h.handle(configEvent(ConfigCloseAll, 0)); len(out) != 0 {
				t.Fatalf("second close all: %s", fmtOutputs(out))
			}
			if !h.m.Draining() {
				t.Fatal("close all changed draining")
			}
		}},
		{name: "close all on an empty manager", run: func(t *testing.T, h *harness) {
			if out := h.handle(configEvent(ConfigCloseAll, 0)); len(out) != 0 {
				t.Fatal(fmtOutputs(out))
			}
		}},
		{name: "unknown config kind", run: func(t *testing.T, h *harness) {
			for _, k := range []ConfigKind{0, numConfigKinds, 255} {
				out := h.handle(configEvent(k, 0))
				wantKinds(t, out, OutMetric)
				if out[0].Metric != MetricInvalidInput {
					t.Fatal(fmtOutputs(out))
				}
			}
		}},
		{name: "invalid cluster config is made safe", run: func(t *testing.T, h *harness) {
			bad := ClusterConfig{Affinity: 9, ProxyProtocol: 9, FrontTimeout: -time.Second, BackTimeout: -1, Lifetime: -time.Hour}
			if bad.Validate() == nil {
				t.Fatal("Validate accepted a bad config")
			}
			h.handle(setCluster(0, bad))
			id := h.open(0, cliA, lcl, "x")
			if info, _ := h.m.Flow(id); info.Deadline != Time(DefaultTimeout) {
				t.Fatalf("deadline %d", info.Deadline)
			}
			out := h.handle(Resolved(id, be1))
			if s := pick(out, OutSendToBackend); len(s) != 1 || s[0].Header != nil {
				t.Fatal(fmtOutputs(out))
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc := ClusterConfig{Cluster: 1, Responses: 1, FrontTimeout: 10 * time.Second}
			tc.run(t, newHarness(t, Config{}, cc, cc))
		})
	}
}

// TestTOS checks that the TOS / traffic class byte follows each datagram.
func TestTOS(t *testing.T) {
	h := newHarness(t, Config{}, ClusterConfig{ProxyProtocol: ProxyEvery})
	in := ClientDatagram(0, cliA, lcl, []byte("a"))
	in.TOS = 0x2e
	out := h.handle(in)
	id := out[1].Flow
	in.TOS, in.Payload = 0xb8, []byte("b")
	h.handle(in)
	in.TOS, in.Payload, in.SegmentSize = 0x01, []byte("c1c2"), 2
	h.handle(in)
	out = h.handle(Resolved(id, be1))
	var got []uint8
	for _, o := range pick(out, OutSendToBackend) {
		got = append(got, o.TOS)
	}
	if want := []uint8{0x2e, 0xb8, 0x01}; !slices.Equal(got, want) { // the run is one output
		t.Fatalf("flushed TOS %x, want %x", got, want)
	}
	in.TOS, in.Payload, in.SegmentSize = 0x03, []byte("d"), 0
	if out = h.handle(in); out[0].TOS != 0x03 {
		t.Fatal(fmtOutputs(out))
	}
	b := BackendDatagram(id, []byte("r"))
	b.TOS = 0x22
	if out = h.handle(b); out[0].Kind != OutSendToClient || out[0].TOS != 0x22 {
		t.Fatal(fmtOutputs(out))
	}
}

// TestFlowStats checks the per-flow and manager totals: segments counted as
// datagrams, drops not counted as traffic.
func TestFlowStats(t *testing.T) {
	h := newHarness(t, Config{PendingLimit: 2}, ClusterConfig{Cluster: 4})
	h.at(time.Second)
	id := h.open(0, cliA, lcl, "abc")
	h.handle(ClientDatagram(0, cliA, lcl, []byte("de")))
	h.handle(ClientDatagram(0, cliA, lcl, []byte("overflow"))) // dropped
	h.at(2 * time.Second)
	h.handle(Resolved(id, be1))
	h.handle(groClient(0, cliA, lcl, []byte("abcdefgh"), 4))
	h.handle(BackendDatagram(id, []byte("xy")))
	h.handle(groBackend(id, []byte("112233"), 2))
	h.handle(BackendDatagram(id, nil)) // dropped invalid
	want := FlowStats{Created: Time(time.Second), DatagramsIn: 4, BytesIn: 13, DatagramsOut: 4, BytesOut: 8}
	info, _ := h.m.Flow(id)
	if info.Stats != want || info.Backend != be1.ID || !info.Established || !info.Attached || info.Requests != 4 || info.Responses != 4 {
		t.Fatalf("info %+v, want stats %+v", info, want)
	}
	h.at(5 * time.Second)
	out := h.handle(AbortFlow(id))
	want.Closed = Time(5 * time.Second)
	if c := out[0]; c.Kind != OutCloseFlow || c.Stats != want || c.Backend.ID != be1.ID || c.Cluster != 4 || c.CloseReason != CloseAborted {
		t.Fatalf("close %s, want stats %+v", fmtOutput(&c), want)
	}
	s := h.m.Stats()
	if s.Created != 1 || s.Evicted != 1 || s.Active != 0 || s.DatagramsIn != 4 || s.BytesIn != 13 || s.DatagramsOut != 4 || s.BytesOut != 8 ||
		s.Drops[DropPendingOverflow] != 1 || s.Drops[DropInvalid] != 1 || s.Closes[CloseAborted] != 1 {
		t.Fatalf("stats %+v", s)
	}
	var n int
	h.m.Flows(func(FlowInfo) bool { n++; return true })
	if n != 0 || !strings.Contains(h.m.String(), "flows=0") {
		t.Fatalf("Flows saw %d, String %q", n, h.m.String())
	}
}

func TestFlowsIteration(t *testing.T) {
	h := newHarness(t, Config{}, ClusterConfig{})
	ids := []FlowID{h.establish(0, cliA, lcl, "a"), h.open(0, cliB, lcl, "b"), h.establish(0, cli6, lcl6, "c")}
	var got []FlowID
	h.m.Flows(func(f FlowInfo) bool { got = append(got, f.ID); return true })
	if !slices.Equal(got, ids) {
		t.Fatalf("Flows %v, want %v", got, ids)
	}
	got = got[:0]
	h.m.Flows(func(f FlowInfo) bool { got = append(got, f.ID); return false })
	if len(got) != 1 {
		t.Fatalf("Flows did not stop: %v", got)
	}
	if info, ok := h.m.Flow(ids[2]); !ok || info.Client != cli6 || info.Local != lcl6 || info.Listener != 0 {
		t.Fatalf("%+v", info)
	}
}

// TestMalformedInputs feeds inputs no sane shell sends; none may panic or
// break an invariant, and each has a defined answer.
func TestMalformedInputs(t *testing.T) {
	tests := []struct {
		name string
		in   func(est, wait FlowID) Input
		want []OutputKind // nil: anything
	}{
		{name: "zero input", in: func(_, _ FlowID) Input { return Input{} }, want: []OutputKind{OutMetric}},
		{name: "unknown kind", in: func(_, _ FlowID) Input { return Input{Kind: 200, Flow: 1} }, want: []OutputKind{OutMetric}},
		{name: "config without event", in: func(_, _ FlowID) Input { return Input{Kind: InConfig} }, want: []OutputKind{OutMetric}},
		// Regression: a client input's Flow field was copied into its drops.
		{name: "client datagram with a flow id", in: func(est, _ FlowID) Input {
			in := ClientDatagram(0, netip.AddrPort{}, lcl, []byte("x"))
			in.Flow = est
			return in
		}, want: []OutputKind{OutDrop}},
		{name: "client datagram with zero destination", in: func(_, _ FlowID) Input {
			return ClientDatagram(0, cliC, netip.AddrPort{}, []byte("x"))
		}, want: []OutputKind{OutMetric, OutSelectBackend}},
		{name: "client datagram with a zoned source", in: func(_, _ FlowID) Input {
			return ClientDatagram(0, netip.MustParseAddrPort("[fe80::1%eth0]:99"), lcl6, []byte("x"))
		}, want: []OutputKind{OutMetric, OutSelectBackend}},
		{name: "client datagram on the highest listener", in: func(_, _ FlowID) Input {
			return ClientDatagram(65535, cliC, lcl, []byte("x"))
		}, want: []OutputKind{OutDrop}},
		{name: "huge segment size", in: func(_, _ FlowID) Input {
			return groClient(0, cliA, lcl, []byte("xyz"), 1<<62)
		}, want: []OutputKind{OutSendToBackend}},
		{name: "negative segment size", in: func(_, _ FlowID) Input {
			return groClient(0, cliA, lcl, []byte("xyz"), -1<<62)
		}, want: []OutputKind{OutSendToBackend}},
		{name: "segment size 1 on a large run", in: func(_, _ FlowID) Input {
			return groClient(0, cliA, lcl, make([]byte, 4000), 1)
		}, want: []OutputKind{OutSendToBackend}},
		{name: "segment size 1 run to a waiting flow", in: func(_, _ FlowID) Input {
			return groClient(0, cliB, lcl, make([]byte, 4000), 1)
		}, want: []OutputKind{}},
		{name: "backend datagram, zero flow", in: func(_, _ FlowID) Input { return BackendDatagram(0, []byte("x")) }, want: []OutputKind{OutDrop}},
		{name: "backend datagram, empty", in: func(est, _ FlowID) Input { return BackendDatagram(est, nil) }, want: []OutputKind{OutDrop}},
		{name: "backend datagram, negative segment size", in: func(est, _ FlowID) Input { return groBackend(est, []byte("r"), -3) }, want: []OutputKind{OutSendToClient}},
		{name: "resolve with zero backend", in: func(_, wait FlowID) Input { return Resolved(wait, Backend{}) }, want: []OutputKind{OutDrop, OutCloseFlow}},
		{name: "resolve with no flow", in: func(_, _ FlowID) Input { return Resolved(0, be1) }, want: []OutputKind{OutMetric}},
		{name: "resolve failed and backend set", in: func(_, wait FlowID) Input {
			in := Resolved(wait, be1)
			in.NoBackend = true
			return in
		}, want: []OutputKind{OutDrop, OutCloseFlow}},
		{name: "timer with junk fields", in: func(est, _ FlowID) Input {
			return Input{Kind: InTimer, Flow: est, Payload: []byte("x"), SegmentSize: -1}
		}, want: []OutputKind{OutArmTimer}},
		{name: "set cluster on listener 65535", in: func(_, _ FlowID) Input { return setCluster(65535, ClusterConfig{}) }, want: []OutputKind{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{}, ClusterConfig{})
			est := h.establish(0, cliA, lcl, "a")
			wait := h.open(0, cliB, lcl, "b")
			in := tc.in(est, wait)
			out := h.handle(in)
			got := kinds(out)
			if len(got) > 0 && got[len(got)-1] == OutArmTimer && (len(tc.want) == 0 || tc.want[len(tc.want)-1] != OutArmTimer) {
				got = got[:len(got)-1]
			}
			if tc.want != nil && !slices.Equal(got, tc.want) {
				t.Fatalf("outputs %v, want %v\n%s", got, tc.want, fmtOutputs(out))
			}
			for _, o := range out {
				// A client datagram's drop names a flow only when it reached
				// one (a waiting flow's full pending queue), never in.Flow.
				if o.Kind == OutDrop && in.Kind == InClientDatagram && o.Flow != 0 &&
					(o.DropReason != DropPendingOverflow || o.Flow != wait) {
					t.Fatalf("client drop names flow %v", o.Flow)
				}
			}
			// The manager still works.
			wantKinds(t, h.handle(ClientDatagram(0, cli6, lcl6, []byte("ok"))), OutMetric, OutSelectBackend)
		})
	}
}

func TestNewManagerConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{name: "zero config", cfg: Config{}, ok: true},
		{name: "negative max flows", cfg: Config{MaxFlows: -1}},
		{name: "too many flows", cfg: Config{MaxFlows: maxFlowSlots + 1}},
		{name: "most flows", cfg: Config{MaxFlows: maxFlowSlots}, ok: true},
		{name: "negative max rx", cfg: Config{MaxRxDatagramSize: -1}},
		{name: "max rx too large", cfg: Config{MaxRxDatagramSize: MaxDatagramSize + 1}},
		{name: "largest max rx", cfg: Config{MaxRxDatagramSize: MaxDatagramSize}, ok: true},
		{name: "negative pending limit", cfg: Config{PendingLimit: -1}},
		{name: "pending limit too large", cfg: Config{PendingLimit: 1025}},
		{name: "negative expiry budget", cfg: Config{ExpiryBudget: -1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := NewManager(tc.cfg)
			if tc.ok != (err == nil) {
				t.Fatalf("err %v, want ok %v", err, tc.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalidConfig) || m != nil {
					t.Fatalf("err %v does not wrap ErrInvalidConfig", err)
				}
				return
			}
			if err := m.CheckInvariants(); err != nil {
				t.Fatal(err)
			}
		})
	}
	m, _ := NewManager(Config{})
	if m.MaxFlows() != DefaultMaxFlows || m.MaxRxDatagramSize() != DefaultMaxRxDatagramSize || m.cfg.PendingLimit != DefaultPendingLimit ||
		m.cfg.ExpiryBudget != DefaultExpiryBudget || m.cfg.Pool == nil || m.Draining() || m.NextDeadline() != Never {
		t.Fatalf("defaults: %+v", m.cfg)
	}
}

func TestNames(t *testing.T) {
	tests := []struct {
		name string
		got  fmt.Stringer
		want string
	}{
		{"input kind", InBackendResolved, "resolved"},
		{"input kind zero", InputKind(0), "input(0)"},
		{"input kind unknown", InputKind(99), "input(99)"},
		{"output kind", OutSendToClient, "send-client"},
		{"output kind unknown", OutputKind(0), "output(0)"},
		{"drop reason", DropPendingOverflow, "pending_overflow"},
		{"drop reason last", DropFlowClosed, "flow_closed"},
		{"drop reason unknown", DropReason(NumDropReasons), fmt.Sprintf("drop(%d)", NumDropReasons)},
		{"close reason", CloseShutdown, "shutdown"},
		{"close reason backend down", CloseBackendDown, "backend_down"},
		{"close reason unknown last", CloseReason(NumCloseReasons), fmt.Sprintf("close(%d)", NumCloseReasons)},
		{"close reason unknown", CloseReason(0), "close(0)"},
		{"metric", MetricRequestsReached, "requests_reached"},
		{"metric unknown", MetricKind(77), "metric(77)"},
		{"config kind", ConfigCloseAll, "close-all"},
		{"config kind", ConfigBackendDown, "backend-down"},
		{"config kind last", ConfigBackendUp, "backend-up"},
		{"config kind unknown", numConfigKinds, fmt.Sprintf("config(%d)", numConfigKinds)},
		{"affinity", AffinityIPPort, "ip-port"},
		{"affinity unknown", Affinity(5), "affinity(5)"},
		{"proxy mode", ProxyFirst, "first"},
		{"proxy mode unknown", ProxyMode(5), "proxy(5)"},
		{"flow id", makeFlowID(3, 2), "3#2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if s := tc.got.String(); s != tc.want {
				t.Fatalf("%q, want %q", s, tc.want)
			}
		})
	}
	for _, s := range []string{"ip", "ip-port"} {
		if a, err := ParseAffinity(s); err != nil || a.String() != s {
			t.Fatalf("ParseAffinity(%q) = %v, %v", s, a, err)
		}
	}
	for _, s := range []string{"off", "first", "every"} {
		if p, err := ParseProxyMode(s); err != nil || p.String() != s {
			t.Fatalf("ParseProxyMode(%q) = %v, %v", s, p, err)
		}
	}
	if _, err := ParseAffinity("port"); err == nil {
		t.Fatal("ParseAffinity accepted port")
	}
	if _, err := ParseProxyMode("on"); err == nil {
		t.Fatal("ParseProxyMode accepted on")
	}
}

func TestClusterConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  ClusterConfig
		ok   bool
	}{
		{"zero", ClusterConfig{}, true},
		{"full", ClusterConfig{Affinity: AffinityIPPort, ProxyProtocol: ProxyEvery, Responses: 1, Requests: 1, FrontTimeout: 1, BackTimeout: 1, Lifetime: 1}, true},
		{"bad affinity", ClusterConfig{Affinity: AffinityQUIC + 1}, false},
		{"bad quic_lb", ClusterConfig{Affinity: AffinityQUIC, QUIC: quiclb.Config{ServerIDLen: 2, NonceLen: 1}}, false},
		{"quic_lb", ClusterConfig{Affinity: AffinityQUIC, QUIC: quiclb.Config{ServerIDLen: 2, NonceLen: 4}}, true},
		{"bad proxy mode", ClusterConfig{ProxyProtocol: 3}, false},
		{"negative front", ClusterConfig{FrontTimeout: -1}, false},
		{"negative back", ClusterConfig{BackTimeout: -1}, false},
		{"negative lifetime", ClusterConfig{Lifetime: -1}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok %v", err, tc.ok)
			}
			n := tc.cfg.normalized()
			if n.Validate() != nil || n.FrontTimeout <= 0 || n.BackTimeout <= 0 {
				t.Fatalf("normalized %+v is not valid", n)
			}
		})
	}
}

func TestTimeAndSegments(t *testing.T) {
	tests := []struct {
		name string
		got  Time
		want Time
	}{
		{"add", Time(5).Add(10), 15},
		{"add negative", Time(5).Add(-10), -5},
		{"saturate", Time(Never - 5).Add(10), Never},
		{"saturate from never", Never.Add(time.Hour), Never},
		{"zero", Time(7).Add(0), 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Fatalf("%d, want %d", tc.got, tc.want)
			}
		})
	}
	for _, tc := range []struct{ n, seg, want int }{{0, 0, 1}, {10, 0, 1}, {10, 10, 1}, {10, 11, 1}, {10, -1, 1}, {10, 3, 4}, {9, 3, 3}, {1, 1, 1}, {65507, 1, 65507}} {
		if got := segmentCount(tc.n, tc.seg); got != tc.want {
			t.Errorf("segmentCount(%d, %d) = %d, want %d", tc.n, tc.seg, got, tc.want)
		}
		o := Output{Payload: make([]byte, tc.n), SegmentSize: tc.seg}
		if o.Segments() != tc.want {
			t.Errorf("Segments(%d, %d) = %d", tc.n, tc.seg, o.Segments())
		}
	}
}

// Test_prefetchChangesNothing runs the same batches through a manager whose
// table is large enough to prefetch and one whose is not: the outputs must
// be identical, and prefetch must have run.
func Test_prefetchChangesNothing(t *testing.T) {
	run := func(big bool) string {
		m, err := NewManager(Config{Seed: 9})
		if err != nil {
			t.Fatal(err)
		}
		if big {
			m.table.init(prefetchMinSlots) // empty, so nothing to rehash
		}
		var out []Output
		var b strings.Builder
		step := func(now Time, in []Input) {
			out = m.Handle(now, in, out[:0])
			for i := range out {
				fmt.Fprintf(&b, "%+v\n", out[i])
			}
			if err := m.CheckInvariants(); err != nil {
				t.Fatal(err)
			}
		}
		step(0, []Input{ConfigInput(ConfigEvent{Kind: ConfigSetCluster, Cluster: ClusterConfig{Cluster: 1}})})
		var batch []Input
		for i := range 40 {
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i / 7), byte(i)}), uint16(1000+i%7))
			batch = append(batch, ClientDatagram(0, src, netip.MustParseAddrPort("192.0.2.1:53"), []byte{byte(i)}))
		}
		step(1, batch)
		var ids []FlowID
		for _, o := range out {
			if o.Kind == OutSelectBackend {
				ids = append(ids, o.Flow)
			}
		}
		var res []Input
		for _, id := range ids {
			res = append(res, Resolved(id, Backend{ID: 1, Addr: netip.MustParseAddrPort("10.9.0.1:53")}))
		}
		step(2, res)
		mixed := append([]Input(nil), batch...)
		for _, id := range ids {
			mixed = append(mixed, BackendDatagram(id, []byte("r")))
		}
		mixed = append(mixed, BackendDatagram(makeFlowID(1<<20, 1), []byte("stale")), TimerFired())
		step(3, mixed)
		if big && m.pfSink == 0 {
			t.Fatal("prefetch did not run")
		}
		return b.String()
	}
	if small, big := run(false), run(true); small != big {
		t.Fatalf("outputs differ with prefetch:\n%s\n---\n%s", small, big)
	}
}
