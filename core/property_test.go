package core

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// This file holds a model-checking simulator: it drives a Manager with a
// sequence of simOps (from rapid in TestProperties, from fuzz bytes in
// FuzzManager) the way a shell would, and checks every output against a model
// of the flows built from the outputs alone.

type simOpKind uint8

const (
	simClient       simOpKind = iota // client datagram or run
	simBackend                       // backend datagram or run for a live flow
	simResolve                       // resolve a waiting flow
	simResolveFail                   // resolution failure for a waiting flow
	simAbort                         // abort a live flow
	simStaleBackend                  // backend datagram naming a closed flow
	simStaleResolve                  // resolution naming a closed flow
	simStaleAbort                    // abort naming a closed flow
	simTimer                         // InTimer at the current clock
	simAdvance                       // move the clock (ends the batch)
	simSetCluster                    // config events (each in its own batch)
	simRemoveCluster
	simMaxFlows
	simMaxRx
	simDrain
	simUndrain
	simCloseAll
	simFlush       // end the batch
	simJunk        // an input no shell sends
	simBackendDown // mark a backend down (its own batch)
	simBackendUp   // mark it up again
	simAdmission   // set the per-source new-flow limit (its own batch)
	numSimOps
)

var simOpNames = [...]string{"client", "backend", "resolve", "resolve-fail", "abort", "stale-backend", "stale-resolve",
	"stale-abort", "timer", "advance", "set-cluster", "remove-cluster", "max-flows", "max-rx", "drain", "undrain",
	"close-all", "flush", "junk", "backend-down", "backend-up", "set-admission"}

func (k simOpKind) String() string { return simOpNames[k] }

// simOpTable weights the op kinds: index with a byte or a draw.
var simOpTable = func() []simOpKind {
	weights := map[simOpKind]int{
		simClient: 16, simBackend: 10, simResolve: 12, simResolveFail: 2, simAbort: 2,
		simStaleBackend: 2, simStaleResolve: 1, simStaleAbort: 1, simTimer: 5, simAdvance: 6,
		simSetCluster: 3, simRemoveCluster: 1, simMaxFlows: 2, simMaxRx: 1, simDrain: 1,
		simUndrain: 3, simCloseAll: 1, simFlush: 6, simJunk: 1, simBackendDown: 3, simBackendUp: 2,
		simAdmission: 1,
	}
	var t []simOpKind
	for k := simOpKind(0); k < numSimOps; k++ {
		for i := 0; i < weights[k]; i++ {
			t = append(t, k)
		}
	}
	return t
}()

// simOp is one step. Which fields matter depends on Kind; selectors (A, B, C)
// are reduced modulo the size of whatever they select from.
type simOp struct {
	Kind    simOpKind
	A, B, C int
	Size    int // payload size selector
	Seg     int // 0: one datagram; else a GRO run
	TOS     uint8
	Variant int // rare variants: bad address, empty or oversize payload...
	Value   int
	Cluster ClusterConfig
	End     bool // end the batch after this op
}

func (o simOp) String() string {
	return fmt.Sprintf("%v{a=%d b=%d c=%d size=%d seg=%d var=%d value=%d}", o.Kind, o.A, o.B, o.C, o.Size, o.Seg, o.Variant, o.Value)
}

var (
	simSources = []netip.AddrPort{cliA, cliA2, cliB, cli6, cliM, netip.MustParseAddrPort("[2001:db8::10]:5001")}
	simBadSrc  = []netip.AddrPort{{}, netip.MustParseAddrPort("192.0.2.1:0"), netip.MustParseAddrPort("0.0.0.0:53"),
		netip.MustParseAddrPort("[ff02::1]:53")}
	simLocals   = []netip.AddrPort{lcl, lcl2, lcl6, {}}
	simBackends = []Backend{be1, be2, {ID: 3, Addr: netip.MustParseAddrPort("[2001:db8::53]:53")}}
	simPublic   = []netip.AddrPort{{}, netip.MustParseAddrPort("203.0.113.9:853"), netip.MustParseAddrPort("[2001:db8:ffff::9]:853")}
	simSteps    = []time.Duration{time.Millisecond, 100 * time.Millisecond, time.Second, 2 * time.Second, 5 * time.Second, 31 * time.Second, 10 * time.Minute}
	// Benign values first and most often: rapid draws small indexes most.
	simMaxFlowV = []int{64, 8, 64, 3, 0, 1, 2, 5, -1}
	simMaxRxV   = []int{4096, 300, MaxDatagramSize, 4096, 64, 16, 8, 1, -1, 1 << 20}
	simTimeouts = []time.Duration{0, time.Second, 3 * time.Second, 10 * time.Second}
	simLifes    = []time.Duration{0, 2 * time.Second, 20 * time.Second}
	// Backends marked down or up: mostly those flows use (simBackends), some
	// never used, and ids the manager must refuse.
	simDownIDs = []BackendID{1, 2, 3, 1, 2, 3, 0, 4, MaxDownBackendID - 1, MaxDownBackendID, math.MaxUint32}
)

const simListeners = 3 // listeners 0..2 may have clusters; 3 never does

// simConfig configures a simulated manager.
type simConfig struct {
	Seed         uint64
	MaxFlows     int
	PendingLimit int
	ExpiryBudget int
	PoolLimit    int
}

func (c simConfig) String() string {
	return fmt.Sprintf("seed=%#x max_flows=%d pending=%d budget=%d pool=%d", c.Seed, c.MaxFlows, c.PendingLimit, c.ExpiryBudget, c.PoolLimit)
}

type failer interface {
	Helper()
	Fatalf(format string, args ...any)
}

type simKey struct {
	listener ListenerID
	src, dst netip.AddrPort
}

// simFlow is the model of one live flow, built from the outputs.
type simFlow struct {
	id          FlowID
	key         simKey
	selected    bool
	cfg         ClusterConfig // captured at admission, normalized
	established bool
	openedIn    int       // the batch that opened it
	backend     BackendID // set by its open
	ppSent      bool
	lastIn      uint64 // last client sequence number forwarded
	lastOut     uint64 // last backend sequence number returned
	in, out     uint64 // datagrams forwarded and returned
	bytesIn     uint64
	bytesOut    uint64
	created     Time
}

type sim struct {
	tb   failer
	cfg  simConfig
	m    *Manager
	pool *testPool
	now  Time

	batch     []Input
	listeners [simListeners]*ClusterConfig // normalized, nil: no cluster
	flows     map[FlowID]*simFlow
	order     []FlowID // live flows in admission order (deterministic picks)
	closed    []FlowID // recently closed, for stale inputs
	highest   int      // highest max_flows ever in force
	armed     Time
	seq       uint64
	expired   map[FlowID]bool
	// adm is the per-source limit in force (normalized) since admSince;
	// srcAdmits counts the flows each masked source opened since then, and
	// admEvict is the manager's SourceEvictions then.
	adm       AdmissionConfig
	admSince  Time
	admEvict  uint64
	srcAdmits map[netip.Addr]uint64
	clientSeq map[uint64]simKey
	backSeq   map[uint64]FlowID
	drops     [NumDropReasons]uint64
	down      map[BackendID]bool // backends marked down
	batchNo   int                // batches flushed so far
	dgIn      uint64
	dgOut     uint64

	record bool
	log    []string // formatted outputs, when record is set
	steps  int
}

func newSim(tb failer, c simConfig, record bool) *sim {
	tb.Helper()
	s := &sim{tb: tb, cfg: c, pool: newTestPool(c.PoolLimit), armed: Never, flows: map[FlowID]*simFlow{},
		expired: map[FlowID]bool{}, clientSeq: map[uint64]simKey{}, backSeq: map[uint64]FlowID{}, down: map[BackendID]bool{},
		srcAdmits: map[netip.Addr]uint64{},
		record:    record}
	m, err := NewManager(Config{Seed: c.Seed, MaxFlows: c.MaxFlows, PendingLimit: c.PendingLimit, ExpiryBudget: c.ExpiryBudget, Pool: s.pool})
	if err != nil {
		tb.Fatalf("NewManager(%v): %v", c, err)
	}
	s.m = m
	s.highest = m.MaxFlows()
	s.config(ConfigEvent{Kind: ConfigSetCluster, Listener: 0, Cluster: ClusterConfig{Cluster: 1}})
	s.config(ConfigEvent{Kind: ConfigSetCluster, Listener: 1, Cluster: ClusterConfig{Cluster: 2, Affinity: AffinityIPPort,
		Responses: 1, Requests: 2, FrontTimeout: 5 * time.Second, BackTimeout: 2 * time.Second, ProxyProtocol: ProxyFirst}})
	s.config(ConfigEvent{Kind: ConfigSetCluster, Listener: 2, Cluster: ClusterConfig{Cluster: 3, Responses: 3,
		FrontTimeout: 3 * time.Second, BackTimeout: 10 * time.Second, Lifetime: 20 * time.Second, ProxyProtocol: ProxyEvery,
		PublicAddr: simPublic[1], CloseOnBackendDown: true}})
	return s
}

// pickLive returns a live flow chosen by sel, preferring waiting (or
// established) ones when asked; ok is false when none is live.
func (s *sim) pickLive(sel int, established int) (FlowID, bool) {
	var cands []FlowID
	for _, id := range s.order {
		f := s.flows[id]
		if established < 0 || f.established == (established == 1) {
			cands = append(cands, id)
		}
	}
	if len(cands) == 0 {
		if len(s.order) == 0 {
			return 0, false
		}
		cands = s.order
	}
	return cands[sel%len(cands)], true
}

func (s *sim) pickClosed(a, b int) FlowID {
	if len(s.closed) == 0 {
		// Generation 0 is never valid, nor is one this far ahead.
		return makeFlowID(uint32(a%8), uint32(b%2)<<31)
	}
	return s.closed[a%len(s.closed)]
}

// payload builds a datagram or run whose segments each start with a fresh
// 8-byte sequence number; note is called with each number.
func (s *sim) payload(op simOp, note func(seq uint64)) (payload []byte, seg int) {
	switch {
	case op.Variant%16 == 11:
		return nil, op.Seg
	case op.Variant%20 == 13:
		payload = make([]byte, 4097+op.Size%100) // oversize at the default limit
		s.seq++
		binary.BigEndian.PutUint64(payload, s.seq)
		note(s.seq)
		return payload, 0
	}
	if op.Seg == 0 {
		n := 8 + op.Size%120
		payload = make([]byte, n)
		s.seq++
		binary.BigEndian.PutUint64(payload, s.seq)
		note(s.seq)
		return payload, 0
	}
	seg = 8 + op.Seg%40
	segs := 2 + op.Size%6
	last := 8 + op.Size%(seg-7)
	payload = make([]byte, (segs-1)*seg+last)
	for i := 0; i < segs; i++ {
		s.seq++
		binary.BigEndian.PutUint64(payload[i*seg:], s.seq)
		note(s.seq)
	}
	return payload, seg
}

// apply runs one op: most add an input to the current batch; clock moves and
// config events end it.
func (s *sim) apply(op simOp) {
	s.tb.Helper()
	s.steps++
	switch op.Kind {
	case simClient:
		l := ListenerID(op.A % simListeners)
		if op.A%16 == 13 {
			l = simListeners // never has a cluster
		}
		src := simSources[op.B%len(simSources)]
		if op.Variant%8 == 5 {
			src = simBadSrc[op.B%len(simBadSrc)]
		}
		dst := simLocals[op.C%len(simLocals)]
		if op.Variant%4 == 2 {
			// Often the key of a live (established) flow, so datagrams
			// find flows, backend-down closes among them.
			if id, ok := s.pickLive(op.B, 1); ok && s.flows[id].selected {
				k := s.flows[id].key
				l, src, dst = k.listener, k.src, k.dst
			}
		}
		valid := refValidClient(src)
		p, seg := s.payload(op, func(seq uint64) {
			if valid {
				s.clientSeq[seq] = simKey{l, src, dst}
			}
		})
		in := groClient(l, src, dst, p, seg)
		in.TOS = op.TOS
		s.batch = append(s.batch, in)
	case simBackend:
		id, ok := s.pickLive(op.A, 1)
		if !ok {
			id = makeFlowID(uint32(op.A%8), 1)
		}
		p, seg := s.payload(op, func(seq uint64) { s.backSeq[seq] = id })
		in := groBackend(id, p, seg)
		in.TOS = op.TOS
		s.batch = append(s.batch, in)
	case simResolve:
		id, ok := s.pickLive(op.A, 0)
		if !ok {
			return
		}
		b := simBackends[op.B%len(simBackends)]
		if op.Variant%8 == 5 {
			b.Addr = netip.AddrPort{}
		}
		s.batch = append(s.batch, Resolved(id, b))
	case simResolveFail:
		if id, ok := s.pickLive(op.A, 0); ok {
			s.batch = append(s.batch, ResolveFailed(id))
		}
	case simAbort:
		if id, ok := s.pickLive(op.A, -1); ok {
			s.batch = append(s.batch, AbortFlow(id))
		}
	case simStaleBackend:
		s.batch = append(s.batch, BackendDatagram(s.pickClosed(op.A, op.B), []byte("stale-reply")))
	case simStaleResolve:
		s.batch = append(s.batch, Resolved(s.pickClosed(op.A, op.B), simBackends[0]))
	case simStaleAbort:
		s.batch = append(s.batch, AbortFlow(s.pickClosed(op.A, op.B)))
	case simTimer:
		s.batch = append(s.batch, TimerFired())
	case simAdvance:
		s.flush()
		s.now = s.now.Add(simSteps[op.A%len(simSteps)] + time.Duration(op.B%1000)*time.Microsecond)
	case simSetCluster:
		c := op.Cluster
		s.config(ConfigEvent{Kind: ConfigSetCluster, Listener: ListenerID(op.A % simListeners), Cluster: c})
	case simRemoveCluster:
		s.config(ConfigEvent{Kind: ConfigRemoveCluster, Listener: ListenerID(op.A % (simListeners + 1))})
	case simMaxFlows:
		s.config(ConfigEvent{Kind: ConfigSetMaxFlows, Value: simMaxFlowV[op.Value%len(simMaxFlowV)]})
	case simMaxRx:
		s.config(ConfigEvent{Kind: ConfigSetMaxRxDatagramSize, Value: simMaxRxV[op.Value%len(simMaxRxV)]})
	case simDrain:
		s.config(ConfigEvent{Kind: ConfigDrain})
	case simUndrain:
		s.config(ConfigEvent{Kind: ConfigUndrain})
	case simCloseAll:
		s.config(ConfigEvent{Kind: ConfigCloseAll})
	case simBackendDown:
		s.config(ConfigEvent{Kind: ConfigBackendDown, Backend: simDownIDs[op.Value%len(simDownIDs)]})
	case simBackendUp:
		s.config(ConfigEvent{Kind: ConfigBackendUp, Backend: simDownIDs[op.Value%len(simDownIDs)]})
	case simAdmission:
		s.config(ConfigEvent{Kind: ConfigSetAdmission, Admission: simAdmissionFrom(op.Value)})
	case simFlush:
		s.flush()
	case simJunk:
		switch op.A % 4 {
		case 0:
			s.batch = append(s.batch, Input{Kind: InputKind(7 + op.B%250), Flow: FlowID(op.C)})
		case 1:
			s.batch = append(s.batch, Input{Kind: InConfig})
		case 2:
			s.batch = append(s.batch, ConfigInput(ConfigEvent{Kind: numConfigKinds + ConfigKind(op.B%200)}))
		default:
			s.batch = append(s.batch, Input{Kind: InBackendResolved, Flow: FlowID(op.C) << 32})
		}
	}
	if op.End || len(s.batch) >= 16 {
		s.flush()
	}
}

// config applies a config event in a batch of its own, and the model's view of
// it.
func (s *sim) config(ev ConfigEvent) {
	s.tb.Helper()
	s.flush()
	// The down set is checked after the event's own batch.
	switch ev.Kind {
	case ConfigBackendDown:
		if ev.Backend < MaxDownBackendID {
			s.down[ev.Backend] = true
		}
	case ConfigBackendUp:
		delete(s.down, ev.Backend)
	}
	s.batch = append(s.batch, ConfigInput(ev))
	s.flush()
	switch ev.Kind {
	case ConfigSetCluster:
		c := ev.Cluster.normalized()
		s.listeners[ev.Listener] = &c
	case ConfigRemoveCluster:
		if int(ev.Listener) < simListeners {
			s.listeners[ev.Listener] = nil
		}
	case ConfigSetMaxFlows:
		s.highest = max(s.highest, min(max(ev.Value, 0), maxFlowSlots))
	case ConfigSetAdmission:
		s.adm, s.admSince, s.admEvict = ev.Admission.normalized(), s.now, s.m.Stats().SourceEvictions
		clear(s.srcAdmits)
	}
}

// simAdmissionFrom maps a small number onto a per-source limit: often off,
// else intervals, bursts, prefixes and table sizes from small lists (a table
// of 64 entries, 16 sets, holds the sim's six sources with few evictions).
func simAdmissionFrom(v int) AdmissionConfig {
	return AdmissionConfig{
		Interval:  []time.Duration{0, time.Second, 100 * time.Millisecond, 3 * time.Second, -1}[v%5],
		Burst:     []int{0, 1, 2, 5}[v/5%4],
		PrefixV4:  []int{0, 24, 8, 32}[v/20%4],
		PrefixV6:  []int{0, 64, 1, 128}[v/80%4],
		TableSize: []int{64, 0}[v/40%2],
	}
}

// admitted counts a new flow of client against the limit in force and fails
// when the source opened more flows than Burst + elapsed / Interval since the
// limit was set, which no GCRA state can allow (the bound holds whatever state
// the previous limit left) unless the table evicted a refilling source.
func (s *sim) admitted(in []Input, out []Output, i int, client netip.AddrPort) {
	if s.adm.Interval <= 0 {
		return
	}
	ip := client.Addr().Unmap()
	bits := s.adm.PrefixV6
	if ip.Is4() {
		bits = s.adm.PrefixV4
	}
	src := netip.PrefixFrom(ip, bits).Masked().Addr()
	s.srcAdmits[src]++
	allowed := uint64(s.adm.Burst) + uint64((s.now-s.admSince)/Time(s.adm.Interval))
	if n := s.srcAdmits[src]; n > allowed && s.m.Stats().SourceEvictions == s.admEvict {
		s.fail(in, out, "output %d: source %v opened %d flows since %d, limit allows %d", i, src, n, s.admSince, allowed)
	}
}

// flush hands the batch to the manager and checks everything it said.
func (s *sim) flush() {
	s.tb.Helper()
	if len(s.batch) == 0 {
		return
	}
	in := s.batch
	s.batch = nil
	// Flows already past their deadline: nothing in this batch may forward
	// for them (a datagram or resolution that finds one closes it).
	clear(s.expired)
	for _, id := range s.order {
		if info, ok := s.m.Flow(id); ok && info.Deadline <= s.now {
			s.expired[id] = true
		}
	}
	s.batchNo++
	out := s.m.Handle(s.now, in, nil)
	s.check(in, out)
}

func (s *sim) fail(in []Input, out []Output, format string, args ...any) {
	s.tb.Helper()
	s.tb.Fatalf("step %d at %d, inputs %v: %s\noutputs:\n%s", s.steps, s.now, inputKinds(in), fmt.Sprintf(format, args...), fmtOutputs(out))
}

func (s *sim) check(in []Input, out []Output) {
	s.tb.Helper()
	if err := s.m.CheckInvariants(); err != nil {
		s.fail(in, out, "invariants: %v", err)
	}
	if s.pool.err != nil {
		s.fail(in, out, "pool: %v", s.pool.err)
	}
	timers := 0
	for _, x := range in {
		if x.Kind == InTimer {
			timers++
		}
	}
	arms := 0
	for i := range out {
		o := &out[i]
		if s.record {
			s.log = append(s.log, fmtOutput(o))
		}
		f := s.flows[o.Flow]
		if s.expired[o.Flow] && (o.Kind == OutOpenUpstream || o.Kind == OutSendToBackend || o.Kind == OutSendToClient) {
			s.fail(in, out, "output %d: flow %v was past its deadline before the batch", i, o.Flow)
		}
		switch o.Kind {
		case OutMetric:
			switch o.Metric {
			case MetricFlowCreated:
				if f != nil || o.Flow == 0 {
					s.fail(in, out, "output %d: flow %v created twice", i, o.Flow)
				}
				if int(o.Listener) >= simListeners || s.listeners[o.Listener] == nil {
					s.fail(in, out, "output %d: flow created on listener %d with no cluster", i, o.Listener)
				}
				cfg := *s.listeners[o.Listener]
				if o.Cluster != cfg.Cluster {
					s.fail(in, out, "output %d: cluster %d, listener has %d", i, o.Cluster, cfg.Cluster)
				}
				s.flows[o.Flow] = &simFlow{id: o.Flow, key: simKey{listener: o.Listener}, cfg: cfg, created: s.now}
				s.order = append(s.order, o.Flow)
				if i+1 >= len(out) || out[i+1].Kind != OutSelectBackend || out[i+1].Flow != o.Flow {
					s.fail(in, out, "output %d: flow created without its select", i)
				}
			case MetricRequestsReached:
				if f == nil {
					s.fail(in, out, "output %d: names a closed flow", i)
				}
				if f.cfg.Requests == 0 {
					s.fail(in, out, "output %d: requests reached without a cap", i)
				}
			case MetricStaleInput, MetricInvalidInput:
			default:
				s.fail(in, out, "output %d: unknown metric", i)
			}
		case OutSelectBackend:
			if f == nil || f.selected {
				s.fail(in, out, "output %d: select for a flow not just created", i)
			}
			f.selected = true
			f.key.src, f.key.dst = o.Client, o.Local
			if !refValidClient(o.Client) || o.Listener != f.key.listener {
				s.fail(in, out, "output %d: bad select", i)
			}
			if want := AffinityHash(s.cfg.Seed, o.Client, f.cfg.Affinity); o.Key != want {
				s.fail(in, out, "output %d: key %#x, want %#x", i, o.Key, want)
			}
			s.admitted(in, out, i, o.Client)
		case OutOpenUpstream:
			if f == nil || f.established {
				s.fail(in, out, "output %d: open for a flow not waiting", i)
			}
			f.established, f.openedIn, f.backend = true, s.batchNo, o.Backend.ID
			if !o.Backend.Addr.IsValid() || o.Client != f.key.src || o.Local != f.key.dst {
				s.fail(in, out, "output %d: bad open", i)
			}
		case OutSendToBackend:
			if f == nil || !f.established {
				s.fail(in, out, "output %d: send to backend for a flow not established", i)
			}
			if f.openedIn < s.batchNo && f.cfg.CloseOnBackendDown && s.down[f.backend] {
				// Established before the batch, so no held datagram of it
				// is left: this is a client datagram that should have
				// closed the flow.
				s.fail(in, out, "output %d: flow %v forwards to backend %d, which is down", i, f.id, f.backend)
			}
			s.checkSendToBackend(in, out, i, f)
		case OutSendToClient:
			if f == nil || !f.established {
				s.fail(in, out, "output %d: send to client for a flow not established", i)
			}
			if o.Client != f.key.src || o.Local != f.key.dst || o.Listener != f.key.listener {
				s.fail(in, out, "output %d: reply of %v goes to %v from %v, flow is %v from %v", i, o.Flow, o.Client, o.Local, f.key.src, f.key.dst)
			}
			n := s.checkSegments(in, out, i, func(seq uint64) {
				if s.backSeq[seq] != f.id {
					s.fail(in, out, "output %d: backend datagram %d of flow %v returned by %v", i, seq, s.backSeq[seq], f.id)
				}
				if seq <= f.lastOut {
					s.fail(in, out, "output %d: backend datagram %d after %d", i, seq, f.lastOut)
				}
				f.lastOut = seq
			})
			f.out += uint64(n)
			f.bytesOut += uint64(len(o.Payload))
			s.dgOut += uint64(n)
			if f.cfg.Responses > 0 && f.out > uint64(f.cfg.Responses)*f.in {
				s.fail(in, out, "output %d: %d responses, cap %d per request × %d", i, f.out, f.cfg.Responses, f.in)
			}
			if r := uint64(f.cfg.MaxAmplification); r > 0 && f.bytesOut > r*f.bytesIn+uint64(f.cfg.AmplificationAllowance) {
				s.fail(in, out, "output %d: %d reply bytes for %d request bytes, cap %d× + %d", i, f.bytesOut, f.bytesIn, r, f.cfg.AmplificationAllowance)
			}
		case OutCloseFlow:
			if f == nil {
				s.fail(in, out, "output %d: closes a flow not live", i)
			}
			st := o.Stats
			if st.Created != f.created || st.Closed != s.now || st.DatagramsIn != f.in || st.DatagramsOut != f.out ||
				st.BytesIn != f.bytesIn || st.BytesOut != f.bytesOut {
				s.fail(in, out, "output %d: stats %+v, model %+v", i, st, *f)
			}
			if o.Client != f.key.src || o.Local != f.key.dst || o.Listener != f.key.listener || o.Cluster != f.cfg.Cluster {
				s.fail(in, out, "output %d: close names another flow's addresses", i)
			}
			if o.CloseReason == 0 || int(o.CloseReason) >= NumCloseReasons {
				s.fail(in, out, "output %d: close reason %d", i, o.CloseReason)
			}
			if o.CloseReason == CloseBackendDown && !s.closesOnDown(in, f) {
				s.fail(in, out, "output %d: flow %v closed as backend down (established %v, backend %d down %v, policy close %v)",
					i, f.id, f.established, f.backend, s.down[f.backend], f.cfg.CloseOnBackendDown)
			}
			if o.Backend.ID != f.backend {
				s.fail(in, out, "output %d: close names backend %d, flow has %d", i, o.Backend.ID, f.backend)
			}
			delete(s.flows, o.Flow)
			s.order = slices.DeleteFunc(s.order, func(id FlowID) bool { return id == o.Flow })
			s.closed = append(s.closed, o.Flow)
			if len(s.closed) > 16 {
				s.closed = s.closed[1:]
			}
		case OutDrop:
			if o.DropReason == 0 || int(o.DropReason) >= NumDropReasons || o.Datagrams < 1 || o.Bytes < 0 {
				s.fail(in, out, "output %d: bad drop", i)
			}
			s.drops[o.DropReason] += uint64(o.Datagrams)
		case OutArmTimer:
			arms++
			if i != len(out)-1 {
				s.fail(in, out, "output %d: arm is not the last output", i)
			}
			s.armed = o.Deadline
		default:
			s.fail(in, out, "output %d: unknown kind", i)
		}
	}
	if arms > 1 || (timers > 0 && arms != 1) {
		s.fail(in, out, "%d arms for %d timer inputs", arms, timers)
	}
	for _, id := range s.order {
		if f := s.flows[id]; !f.selected || (f.cfg.Responses > 0 && f.in > 0 && f.out >= uint64(f.cfg.Responses)*f.in) {
			s.fail(in, out, "flow %v live after its last response (or never selected)", id)
		}
	}
	st := s.m.Stats()
	switch {
	case len(s.flows) != s.m.FlowCount() || len(s.flows) != len(s.order):
		s.fail(in, out, "model has %d flows, manager %d", len(s.flows), s.m.FlowCount())
	case uint64(st.Active) != st.Created-st.Evicted:
		s.fail(in, out, "active %d != created %d - evicted %d", st.Active, st.Created, st.Evicted)
	case st.Active > s.highest:
		s.fail(in, out, "%d flows above the highest cap %d", st.Active, s.highest)
	case st.Drops != s.drops:
		s.fail(in, out, "drop counters %v, outputs say %v", st.Drops, s.drops)
	case st.DatagramsIn != s.dgIn || st.DatagramsOut != s.dgOut:
		s.fail(in, out, "datagram counters %d/%d, outputs say %d/%d", st.DatagramsIn, st.DatagramsOut, s.dgIn, s.dgOut)
	case (s.armed == Never) != (len(s.flows) == 0):
		s.fail(in, out, "armed %d with %d flows", s.armed, len(s.flows))
	case s.m.NextDeadline() != s.armed:
		s.fail(in, out, "next deadline %d, last armed %d", s.m.NextDeadline(), s.armed)
	case s.m.BackendsDown() != len(s.down):
		s.fail(in, out, "%d backends down, model %d", s.m.BackendsDown(), len(s.down))
	}
}

// closesOnDown reports whether f may close as CloseBackendDown in the batch in:
// it is established on a backend marked down, its contract says close, and a
// client datagram of its key is in the batch.
func (s *sim) closesOnDown(in []Input, f *simFlow) bool {
	if !f.established || !f.cfg.CloseOnBackendDown || !s.down[f.backend] {
		return false
	}
	for i := range in {
		if x := &in[i]; x.Kind == InClientDatagram && (simKey{x.Listener, x.Src, x.Dst}) == f.key {
			return true
		}
	}
	return false
}

// checkSegments walks the segments of out[i]'s payload, each of which must be
// a whole segment the sim sent (at least 8 bytes, led by its sequence number),
// and returns how many there are.
func (s *sim) checkSegments(in []Input, out []Output, i int, each func(seq uint64)) int {
	s.tb.Helper()
	o := &out[i]
	if o.SegmentSize < 0 || (o.SegmentSize > 0 && o.SegmentSize >= len(o.Payload)) {
		s.fail(in, out, "output %d: segment size %d for %d bytes", i, o.SegmentSize, len(o.Payload))
	}
	p := o.Payload
	n := 0
	for len(p) > 0 {
		one := p
		if o.SegmentSize > 0 && o.SegmentSize < len(p) {
			one = p[:o.SegmentSize]
		}
		if len(one) < 8 {
			s.fail(in, out, "output %d: segment of %d bytes", i, len(one))
		}
		each(binary.BigEndian.Uint64(one))
		p = p[len(one):]
		n++
	}
	if n != o.Segments() {
		s.fail(in, out, "output %d: %d segments, Segments() %d", i, n, o.Segments())
	}
	return n
}

func (s *sim) checkSendToBackend(in []Input, out []Output, i int, f *simFlow) {
	s.tb.Helper()
	o := &out[i]
	if o.Cluster != f.cfg.Cluster || o.Listener != f.key.listener {
		s.fail(in, out, "output %d: send carries another flow's cluster or listener", i)
	}
	var wantHeader bool
	switch f.cfg.ProxyProtocol {
	case ProxyEvery:
		wantHeader = true
	case ProxyFirst:
		wantHeader = !f.ppSent
	}
	if (o.Header != nil) != wantHeader {
		s.fail(in, out, "output %d: header %x, mode %v, sent before %v", i, o.Header, f.cfg.ProxyProtocol, f.ppSent)
	}
	if o.Header != nil {
		f.ppSent = true
		if o.SegmentSize != 0 && f.cfg.ProxyProtocol != ProxyEvery {
			// Only ProxyEvery puts a header before every segment; under
			// ProxyFirst the header rides with one datagram.
			s.fail(in, out, "output %d: header before a GSO run under %v", i, f.cfg.ProxyProtocol)
		}
		p, err := parsePPv2(o.Header)
		if err != nil || p.length != len(o.Header) {
			s.fail(in, out, "output %d: header %x: %v", i, o.Header, err)
		}
		dst := f.cfg.PublicAddr
		if !dst.IsValid() {
			dst = f.key.dst
		}
		if p.family != 0 && (p.src != unmapPort(f.key.src) || p.dst != unmapPort(dst)) {
			s.fail(in, out, "output %d: header %v -> %v, want %v -> %v", i, p.src, p.dst, f.key.src, dst)
		}
	}
	n := s.checkSegments(in, out, i, func(seq uint64) {
		if k, ok := s.clientSeq[seq]; !ok || k != f.key {
			s.fail(in, out, "output %d: client datagram %d of %+v forwarded by flow %v of %+v", i, seq, k, f.id, f.key)
		}
		if seq <= f.lastIn {
			s.fail(in, out, "output %d: client datagram %d after %d", i, seq, f.lastIn)
		}
		f.lastIn = seq
	})
	f.in += uint64(n)
	f.bytesIn += uint64(len(o.Payload))
	s.dgIn += uint64(n)
	if f.cfg.Requests > 0 && f.in > uint64(f.cfg.Requests) {
		s.fail(in, out, "output %d: %d requests forwarded, cap %d", i, f.in, f.cfg.Requests)
	}
}

// finish ends the batch, then plays the shell's timer: it moves the clock to
// each armed deadline and fires, until no flow is left. Every flow has finite
// timeouts, so this must end; then every pool buffer must be back.
func (s *sim) finish() {
	s.tb.Helper()
	s.flush()
	for i := 0; len(s.flows) > 0; i++ {
		if i > 100000 {
			s.tb.Fatalf("%d flows still live after %d firings", len(s.flows), i)
		}
		if s.armed == Never {
			s.tb.Fatalf("%d flows live, no timer armed", len(s.flows))
		}
		if s.armed > s.now {
			s.now = s.armed
		}
		s.batch = append(s.batch, TimerFired())
		s.flush()
	}
	s.flush()
	s.m.Handle(s.now, nil, nil) // gives back the buffers of the last outputs
	if n := len(s.pool.outstanding); n != 0 {
		s.tb.Fatalf("%d pool buffers never returned", n)
	}
}

// drawSimOp draws one op, drawing only the fields its kind uses.
func drawSimOp(t *rapid.T) simOp {
	op := simOp{Kind: rapid.SampledFrom(simOpTable).Draw(t, "kind"), End: rapid.IntRange(0, 2).Draw(t, "end") > 0}
	sel := rapid.IntRange(0, 63)
	switch op.Kind {
	case simClient, simBackend:
		op.A, op.B, op.C = sel.Draw(t, "a"), sel.Draw(t, "b"), sel.Draw(t, "c")
		op.Size = rapid.IntRange(0, 1000).Draw(t, "size")
		if rapid.IntRange(0, 3).Draw(t, "run") == 0 {
			op.Seg = rapid.IntRange(1, 100).Draw(t, "seg")
		}
		op.TOS = rapid.Uint8().Draw(t, "tos")
		op.Variant = rapid.IntRange(0, 80).Draw(t, "variant")
	case simResolve, simResolveFail, simAbort, simStaleBackend, simStaleResolve, simStaleAbort, simAdvance, simRemoveCluster, simJunk:
		op.A, op.B, op.C = sel.Draw(t, "a"), rapid.IntRange(0, 999).Draw(t, "b"), sel.Draw(t, "c")
		op.Variant = rapid.IntRange(0, 80).Draw(t, "variant")
	case simSetCluster:
		op.A = sel.Draw(t, "a")
		op.Cluster = drawCluster(t)
	case simMaxFlows, simMaxRx, simBackendDown, simBackendUp:
		op.Value = rapid.IntRange(0, 63).Draw(t, "value")
	case simAdmission:
		op.Value = rapid.IntRange(0, 319).Draw(t, "value")
	}
	return op
}

func drawCluster(t *rapid.T) ClusterConfig {
	sel := rapid.IntRange(0, 255)
	return clusterFrom(func() int { return sel.Draw(t, "cluster") })
}

// clusterFrom builds a cluster config from a source of small numbers, shared
// by rapid and the fuzzer.
func clusterFrom(next func() int) ClusterConfig {
	c := ClusterConfig{
		Cluster:       ClusterID(1 + next()%5),
		Affinity:      Affinity([]Affinity{AffinityIP, AffinityIPPort, AffinityQUIC}[next()%3]),
		Responses:     uint32(next() % 4),
		Requests:      uint32(next() % 4),
		FrontTimeout:  simTimeouts[next()%len(simTimeouts)],
		BackTimeout:   simTimeouts[next()%len(simTimeouts)],
		Lifetime:      simLifes[next()%len(simLifes)],
		ProxyProtocol: ProxyMode(next() % 3),
		PublicAddr:    simPublic[next()%len(simPublic)],
	}
	v := next()
	if v%16 == 15 {
		c.Affinity, c.ProxyProtocol, c.FrontTimeout = Affinity(v), ProxyMode(v), -time.Second
	}
	c.CloseOnBackendDown = v%2 == 1
	c.MaxAmplification = uint32([]int{0, 0, 1, 3}[v/2%4])
	c.AmplificationAllowance = uint32(v / 8 % 3 * 50)
	return c
}

func drawSimConfig(t *rapid.T) simConfig {
	return simConfig{
		Seed:         rapid.Uint64().Draw(t, "seed"),
		MaxFlows:     rapid.SampledFrom([]int{0, 1, 2, 4, 8}).Draw(t, "max_flows"),
		PendingLimit: rapid.IntRange(0, 4).Draw(t, "pending"),
		ExpiryBudget: rapid.IntRange(0, 3).Draw(t, "budget"),
		PoolLimit:    rapid.SampledFrom([]int{0, 0, 3}).Draw(t, "pool"),
	}
}

// TestProperties drives managers with random op sequences and checks, after
// every batch: CheckInvariants; active = created - evicted; never above the
// highest max_flows; no output names a closed flow; replies go to the flow's
// own client from its own local address; forwarded data belongs to the flow,
// in order; caps, PROXY v2 headers, stats and counters agree with a model;
// and at the end every flow closes once the clock passes its deadlines.
func TestProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		cfg := drawSimConfig(t)
		n := rapid.SampledFrom([]int{10, 50, 200, 400}).Draw(t, "n")
		ops := rapid.SliceOfN(rapid.Custom(drawSimOp), n, n).Draw(t, "ops")
		s := newSim(t, cfg, false)
		for _, op := range ops {
			s.apply(op)
		}
		s.finish()
	})
}

// TestDeterminism runs each op sequence on two managers with the same seed and
// requires identical outputs, field by field.
func TestDeterminism(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		cfg := drawSimConfig(t)
		n := rapid.SampledFrom([]int{10, 50, 200}).Draw(t, "n")
		ops := rapid.SliceOfN(rapid.Custom(drawSimOp), n, n).Draw(t, "ops")
		var logs [2][]string
		for i := range logs {
			s := newSim(t, cfg, true)
			for _, op := range ops {
				s.apply(op)
			}
			s.finish()
			logs[i] = s.log
		}
		if !slices.Equal(logs[0], logs[1]) {
			for i := range min(len(logs[0]), len(logs[1])) {
				if logs[0][i] != logs[1][i] {
					t.Fatalf("runs differ at output %d:\n%s\n%s", i, logs[0][i], logs[1][i])
				}
			}
			t.Fatalf("runs differ in length: %d, %d", len(logs[0]), len(logs[1]))
		}
	})
}

// TestSimLongRun is one long deterministic walk (many flows, all op kinds),
// a cheap complement to rapid's short sequences.
func TestSimLongRun(t *testing.T) {
	for _, cfg := range []simConfig{
		{Seed: 1, MaxFlows: 16, PendingLimit: 0, ExpiryBudget: 2},
		{Seed: 2, MaxFlows: 0, PendingLimit: 1, ExpiryBudget: 0, PoolLimit: 5},
	} {
		t.Run(cfg.String(), func(t *testing.T) {
			s := newSim(t, cfg, false)
			x := cfg.Seed
			next := func() int { x = splitmix64(x + 0x9e3779b97f4a7c15); return int(x >> 33) }
			for i := 0; i < 20000; i++ {
				op := simOp{Kind: simOpTable[next()%len(simOpTable)], A: next() % 64, B: next() % 1000, C: next() % 64,
					Size: next() % 1000, TOS: uint8(next()), Variant: next() % 81, Value: next() % 64, End: next()%3 > 0}
				if next()%4 == 0 {
					op.Seg = 1 + next()%100
				}
				if op.Kind == simSetCluster {
					op.Cluster = clusterFrom(next)
				}
				s.apply(op)
			}
			s.finish()
			// The walk reaches the rarer paths, backend-down closes included.
			st := s.m.Stats()
			t.Logf("closes %v, drops %v", st.Closes, st.Drops)
			if st.Closes[CloseBackendDown] == 0 {
				t.Error("no flow closed as backend down")
			}
		})
	}
}

// refValidClient is the model's rule for a usable client source address,
// written with netip: the manager's byte-level check must agree with it.
// IPv4-mapped addresses are judged as IPv4 (::ffff:0.0.0.0 is unspecified).
func refValidClient(ap netip.AddrPort) bool {
	a := ap.Addr().Unmap()
	return a.IsValid() && ap.Port() != 0 && !a.IsUnspecified() && !a.IsMulticast()
}

// Test_addrIsValidClient compares the manager's byte-level check with
// refValidClient on edge cases and random addresses of both families.
func Test_addrIsValidClient(t *testing.T) {
	cases := []netip.AddrPort{
		{}, netip.MustParseAddrPort("0.0.0.0:53"), netip.MustParseAddrPort("[::]:53"),
		netip.MustParseAddrPort("224.0.0.1:53"), netip.MustParseAddrPort("239.255.255.255:53"),
		netip.MustParseAddrPort("[ff02::1]:53"), netip.MustParseAddrPort("[::ffff:224.0.0.1]:53"),
		netip.MustParseAddrPort("[::ffff:0.0.0.0]:53"), netip.MustParseAddrPort("10.0.0.1:0"),
		netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("[::1]:1"),
		netip.MustParseAddrPort("223.255.255.255:9"), netip.MustParseAddrPort("240.0.0.1:9"),
		netip.MustParseAddrPort("[fe80::1]:9"),
	}
	x := uint64(12345)
	for range 20000 {
		x = splitmix64(x + 0x9e3779b97f4a7c15)
		var b16 [16]byte
		for i := range b16 {
			b16[i] = byte(x >> (8 * (i % 8)))
			if i == 7 {
				x = splitmix64(x)
			}
		}
		port := uint16(x>>48) & 3 // often 0
		cases = append(cases, netip.AddrPortFrom(netip.AddrFrom16(b16), port),
			netip.AddrPortFrom(netip.AddrFrom4([4]byte(b16[:4])), port),
			netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(x) & 0xf0, 0, 0, byte(x >> 8)}), port+1))
	}
	for _, ap := range cases {
		var a addr
		a.set(ap)
		if got, want := a.isValidClient(), refValidClient(ap); got != want {
			t.Fatalf("%v: isValidClient %v, want %v", ap, got, want)
		}
		if a != toAddr(ap) {
			t.Fatalf("%v: set %+v, toAddr %+v", ap, a, toAddr(ap))
		}
	}
}
