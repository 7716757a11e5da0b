package core

import (
	"fmt"
	"math/bits"
	"net/netip"
)

// noPrefetch marks a batch entry prefetch skipped.
const noPrefetch = ^uint64(0)

// prefetchMinSlots is the table size from which prefetching a batch pays:
// below it (1 MiB of slots, about 100k flows) the table and its flows mostly
// sit in cache and the extra pass costs more than it saves.
const prefetchMinSlots = 1 << 17

// maxFlowSlots bounds the flow table (FlowID indexes are 32-bit; the heap
// positions and pending links are int32).
const maxFlowSlots = 1 << 28

type flowState uint8

const (
	stateFree flowState = iota
	stateAwaiting
	stateEstablished
)

// flow is one slot of the flow table. It holds no pointers, so the garbage
// collector never scans the table.
type flow struct {
	key      flowKey
	state    flowState
	attached bool // in the table: client datagrams can still find it
	ppSent   bool // the PROXY v2 header went out (ProxyFirst)
	pending  uint16
	cfg      uint32 // index of the captured cluster config version
	gen      uint32
	backend  BackendID
	heapPos  int32  // position in the timer heap; here so the struct has no padding
	hash     uint64 // flow table hash of key
	// requests counts client datagrams the flow accepted (forwarded or held);
	// responses counts backend datagrams it returned.
	requests, responses uint32
	pendHead, pendTail  int32
	deadline            Time // min(idle deadline, expires)
	expires             Time // end of life, or Never
	created             Time
	datagramsIn         uint64
	datagramsOut        uint64
	bytesIn, bytesOut   uint64
}

// heldDatagram is a datagram (or GRO run) held in a pool buffer while its flow
// waits for a backend.
type heldDatagram struct {
	buf  []byte
	seg  int32
	next int32
	tos  uint8
}

// clusterVersion is one cluster config as given to a listener; flows admitted
// under it keep a reference, so a reconfigured listener never changes the
// contract of live flows.
type clusterVersion struct {
	cfg  ClusterConfig
	refs int32 // live flows + 1 while a listener uses it
}

// Stats are a manager's running totals; datagram counts count GRO segments.
type Stats struct {
	Created, Evicted uint64
	// Active is the number of live flows: Created - Evicted.
	Active       int
	DatagramsIn  uint64 // forwarded to backends
	DatagramsOut uint64 // returned to clients
	BytesIn      uint64
	BytesOut     uint64
	Drops        [NumDropReasons]uint64 // datagrams, by reason
	Closes       [NumCloseReasons]uint64
	// SourceEvictions counts sources the admission table forgot while their
	// bucket was still refilling (see [AdmissionConfig]).
	SourceEvictions uint64
}

// Manager is one shard's flow engine. It is not safe for concurrent use: the
// shard loop that owns it is its only caller.
type Manager struct {
	cfg          Config
	maxFlows     int
	maxFlowsSeen int // highest cap ever set, for invariant checks
	maxRx        int
	draining     bool

	affinityBase uint64 // FNV-1a state after the seed bytes
	datagramSeq  uint64 // admissions under AffinityDatagram, mixed into their keys
	admitting    firstDatagram
	secrets      tableSecrets

	flows    flowSlab
	freeIdx  []uint32
	table    flowTable
	timers   timerHeap
	held     []heldDatagram
	heldFree int32

	versions     []clusterVersion
	versionsFree []uint32
	listeners    []int32 // ListenerID -> version index, -1 = no cluster

	// down is the set of backends marked down, a bitset indexed by
	// BackendID and grown on demand; downCount is how many are marked, so
	// the data path skips the lookup while none is.
	down      []uint64
	downCount int

	// sources is the per-source new-flow limiter (admission.go).
	sources admission

	release [][]byte // pool buffers referenced by the last call's outputs
	arena   []byte   // PROXY v2 headers of the current call
	out     []Output
	// ctxListener and ctxFlow name the listener and flow of the input being
	// handled, so drops can be attributed without threading them through.
	ctxListener ListenerID
	ctxFlow     FlowID
	ctxLookup   bool // ctxListener is still to be found from ctxFlow
	// pfHome holds the table slots prefetch found for a batch; pfSink keeps
	// its loads from being optimised away.
	pfHome [64]uint64
	pfSink uint64
	armed  Time
	rearm  bool

	stats Stats
}

// NewManager returns a manager configured by cfg, or an error wrapping
// [ErrInvalidConfig].
func NewManager(cfg Config) (*Manager, error) {
	cfg, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:          cfg,
		maxFlows:     cfg.MaxFlows,
		maxFlowsSeen: cfg.MaxFlows,
		maxRx:        cfg.MaxRxDatagramSize,
		affinityBase: fnvSeeded(cfg.Seed),
		secrets:      newTableSecrets(cfg.Seed),
		heldFree:     -1,
		arena:        make([]byte, 0, 64*ProxyHeaderMaxLen),
		armed:        Never,
	}
	m.table.init(0)
	m.sources.configure(cfg.Admission, cfg.Seed)
	return m, nil
}

// Handle processes the inputs in order at time now, appends the outputs to out
// and returns it. Slices in the outputs stay valid until the next call; the
// inputs' buffers may be reused as soon as Handle returns. With enough capacity
// in out, Handle allocates nothing in steady state.
func (m *Manager) Handle(now Time, in []Input, out []Output) []Output {
	m.recycle()
	m.out = out
	if len(in) > 1 && len(m.table.slots) >= prefetchMinSlots {
		m.prefetch(in)
	}
	for i := range in {
		m.handle(now, &in[i])
	}
	if next := m.timers.min(); m.rearm || next != m.armed {
		m.armed = next
		m.rearm = false
		o := m.slot()
		o.Kind, o.Deadline = OutArmTimer, next
	}
	out = m.out
	m.out = nil
	return out
}

// prefetch touches, for a batch of datagrams, the table slots and then the
// flows the batch will use. The loads of each pass are independent, so the
// processor overlaps their cache misses instead of taking them one by one
// when each datagram is handled; with a large table that is most of the cost
// of a lookup. It changes nothing.
func (m *Manager) prefetch(in []Input) {
	n := min(len(in), len(m.pfHome))
	var sink uint64
	for i := range in[:n] {
		m.pfHome[i] = noPrefetch
		switch in[i].Kind {
		case InClientDatagram:
			var k flowKey
			k.client.set(in[i].Src)
			k.local.set(in[i].Dst)
			k.listener = in[i].Listener
			home := m.table.home(m.secrets.hash(&k))
			m.pfHome[i] = home
			sink += m.table.slots[home]
		case InBackendDatagram:
			if idx := in[i].Flow.Index(); int(idx) < m.flows.len() {
				sink += uint64(m.flows.at(idx).deadline)
			}
		}
	}
	for _, home := range m.pfHome[:n] {
		if home != noPrefetch {
			if s := m.table.slots[home]; s != 0 {
				sink += uint64(m.flows.at(slotIndex(s)).deadline)
			}
		}
	}
	m.pfSink = sink
}

// recycle returns the buffers the previous call's outputs referenced.
func (m *Manager) recycle() {
	for i, b := range m.release {
		m.cfg.Pool.Put(b)
		m.release[i] = nil
	}
	m.release = m.release[:0]
	m.arena = m.arena[:0]
}

func (m *Manager) emit(o Output) { m.out = append(m.out, o) }

// slot appends a zero Output and returns it to be filled in place: on the
// data path this saves building a 264-byte Output on the stack and copying
// it twice (into emit's argument, then into the slice).
func (m *Manager) slot() *Output {
	m.out = append(m.out, Output{})
	return &m.out[len(m.out)-1]
}

func (m *Manager) handle(now Time, in *Input) {
	// A client datagram names no flow, whatever its Flow field holds; other
	// inputs name one whose listener is looked up only if something drops.
	m.ctxListener, m.ctxFlow, m.ctxLookup = in.Listener, 0, false
	if in.Kind != InClientDatagram {
		m.ctxListener, m.ctxFlow, m.ctxLookup = 0, in.Flow, true
	}
	switch in.Kind {
	case InClientDatagram:
		m.onClient(now, in)
	case InBackendDatagram:
		m.onBackend(now, in)
	case InBackendResolved:
		m.onResolved(now, in)
	case InAbortFlow:
		if idx, ok := m.lookup(in.Flow); ok {
			m.closeFlow(idx, now, CloseAborted)
		} else {
			m.metric(MetricStaleInput, in.Flow)
		}
	case InTimer:
		m.onTimer(now)
	case InConfig:
		m.onConfig(now, in.Config)
	default:
		m.metric(MetricInvalidInput, 0)
	}
}

func (m *Manager) drop(r DropReason, datagrams, bytes int) {
	if m.ctxLookup {
		m.ctxLookup = false
		if idx, ok := m.lookup(m.ctxFlow); ok {
			m.ctxListener = m.flows.at(idx).key.listener
		}
	}
	m.stats.Drops[r] += uint64(datagrams)
	o := m.slot()
	o.Kind, o.DropReason, o.Listener, o.Flow = OutDrop, r, m.ctxListener, m.ctxFlow
	o.Datagrams, o.Bytes = datagrams, bytes
}

func (m *Manager) metric(k MetricKind, id FlowID) {
	o := m.slot()
	o.Kind, o.Metric, o.Flow = OutMetric, k, id
}

// splitRun normalises a segment size: 0 when payload is a single datagram.
func splitRun(payload []byte, seg int) (segSize, segLen int) {
	if seg <= 0 || seg >= len(payload) {
		return 0, len(payload)
	}
	return seg, seg
}

func (m *Manager) onClient(now Time, in *Input) {
	payload := in.Payload
	seg, segLen := splitRun(payload, in.SegmentSize)
	if segLen > m.maxRx {
		m.drop(DropOversize, segmentCount(len(payload), seg), len(payload))
		return
	}
	ver := int32(-1)
	if int(in.Listener) < len(m.listeners) {
		ver = m.listeners[in.Listener]
	}
	if ver < 0 {
		m.drop(DropNoCluster, segmentCount(len(payload), seg), len(payload))
		return
	}
	var k flowKey
	k.client.set(in.Src)
	if len(payload) == 0 || !k.client.isValidClient() {
		m.drop(DropInvalid, segmentCount(len(payload), seg), len(payload))
		return
	}
	k.local.set(in.Dst)
	k.listener = in.Listener
	h := m.secrets.hash(&k)
	// A GRO run may outlast a flow's request cap; the rest of it starts a new
	// flow, exactly as separately received datagrams would.
	for len(payload) > 0 {
		idx, ok := m.table.find(h, &k, &m.flows)
		if ok && m.flows.at(idx).deadline <= now {
			m.expire(idx, now)
			ok = false
		}
		if ok && m.downCount != 0 && m.closesOnDown(idx) {
			// The flow's backend is down and its contract says close: the
			// datagram (the whole run) starts a new flow instead.
			m.closeFlow(idx, now, CloseBackendDown)
			ok = false
		}
		if !ok {
			if m.draining {
				m.drop(DropDraining, segmentCount(len(payload), seg), len(payload))
				return
			}
			if m.sources.on() && !m.sources.allow(now, &k.client) {
				m.drop(DropRateLimited, segmentCount(len(payload), seg), len(payload))
				return
			}
			if m.stats.Active >= m.maxFlows {
				m.drop(DropShed, segmentCount(len(payload), seg), len(payload))
				return
			}
			if !m.admissible(ver, payload, seg) {
				return
			}
			idx = m.admit(now, h, &k, ver)
		}
		payload = m.accept(now, idx, payload, seg, in.TOS)
	}
}

// closesOnDown reports whether the flow at idx is established on a backend
// marked down under a contract that closes such flows.
func (m *Manager) closesOnDown(idx uint32) bool {
	f := m.flows.at(idx)
	return f.state == stateEstablished && m.versions[f.cfg].cfg.CloseOnBackendDown && m.backendDown(f.backend)
}

// backendDown reports whether backend id is marked down.
func (m *Manager) backendDown(id BackendID) bool {
	w := uint32(id) >> 6
	return int(w) < len(m.down) && m.down[w]&(1<<(uint32(id)&63)) != 0
}

// markBackend marks backend id down or up. Only marking grows the set (up to
// MaxDownBackendID bits); an id beyond it is ignored and counted invalid.
func (m *Manager) markBackend(id BackendID, down bool) {
	if uint32(id) >= MaxDownBackendID {
		m.metric(MetricInvalidInput, 0)
		return
	}
	w, bit := int(uint32(id)>>6), uint64(1)<<(uint32(id)&63)
	if w >= len(m.down) {
		if !down {
			return // never marked: already up
		}
		m.down = append(m.down, make([]uint64, w+1-len(m.down))...)
	}
	switch was := m.down[w]&bit != 0; {
	case down && !was:
		m.down[w] |= bit
		m.downCount++
	case !down && was:
		m.down[w] &^= bit
		m.downCount--
	}
}

// admit creates a flow for key k under cluster version ver and asks for its
// backend.
func (m *Manager) admit(now Time, h uint64, k *flowKey, ver int32) uint32 {
	idx := m.allocSlot()
	cfg := &m.versions[ver].cfg
	m.versions[ver].refs++
	f := m.flows.at(idx)
	*f = flow{
		key:      *k,
		state:    stateAwaiting,
		attached: true,
		cfg:      uint32(ver),
		gen:      f.gen,
		hash:     h,
		heapPos:  -1,
		pendHead: -1,
		pendTail: -1,
		created:  now,
		expires:  Never,
	}
	if cfg.Lifetime > 0 {
		f.expires = now.Add(cfg.Lifetime)
	}
	f.deadline = min(now.Add(cfg.FrontTimeout), f.expires)
	m.table.insert(h, idx)
	m.timers.push(f.deadline, idx, &m.flows)
	m.stats.Created++
	m.stats.Active++
	id := makeFlowID(idx, f.gen)
	client := k.client.addrPort()
	o := m.slot()
	o.Kind, o.Metric, o.Flow, o.Listener, o.Cluster = OutMetric, MetricFlowCreated, id, k.listener, cfg.Cluster
	o = m.slot()
	o.Kind, o.Flow, o.Listener, o.Cluster = OutSelectBackend, id, k.listener, cfg.Cluster
	o.Key = affinityFrom(m.affinityBase, client, cfg.Affinity)
	if cfg.Affinity == AffinityDatagram {
		m.datagramSeq++
		o.Key = splitmix64(o.Key ^ m.datagramSeq*0x9e3779b97f4a7c15)
	}
	m.admitted(o)
	o.Client, o.Local = client, k.local.addrPort()
	return idx
}

func (m *Manager) allocSlot() uint32 {
	if n := len(m.freeIdx); n > 0 {
		idx := m.freeIdx[n-1]
		m.freeIdx = m.freeIdx[:n-1]
		return idx
	}
	return m.flows.add(flow{gen: 1})
}

// accept gives the flow at idx the leading datagrams of payload that its
// request cap allows, and returns the rest.
func (m *Manager) accept(now Time, idx uint32, payload []byte, seg int, tos uint8) []byte {
	f := m.flows.at(idx)
	cfg := &m.versions[f.cfg].cfg
	if seg >= len(payload) {
		seg = 0 // the rest of a split run may be one datagram
	}
	n := segmentCount(len(payload), seg)
	take := n
	if cfg.Requests > 0 {
		take = min(n, int(cfg.Requests-f.requests))
	}
	chunk, rest := payload, payload[len(payload):]
	if take < n {
		chunk, rest = payload[:take*seg], payload[take*seg:]
		if take == 1 {
			seg = 0
		}
	}
	if f.state == stateAwaiting {
		m.ctxFlow = makeFlowID(idx, f.gen)
		take = m.hold(f, chunk, seg, tos)
		m.ctxFlow = 0
		if take == 0 {
			return rest // all dropped: a dropped datagram never refreshes a flow
		}
	} else {
		m.forward(f, idx, chunk, seg, tos)
	}
	f.requests += uint32(take)
	m.touch(f, now.Add(cfg.FrontTimeout))
	if cfg.Requests > 0 && f.requests >= cfg.Requests {
		// The flow takes no more client datagrams but stays open for the
		// replies to the ones it took (nginx's proxy_requests).
		m.detach(f, idx)
		m.touch(f, now.Add(cfg.BackTimeout))
		m.metric(MetricRequestsReached, makeFlowID(idx, f.gen))
	}
	return rest
}

// touch sets the flow's idle deadline to d (bounded by its lifetime). A later
// deadline only writes the flow; the timer entry catches up when it fires.
func (m *Manager) touch(f *flow, d Time) {
	d = min(d, f.expires)
	old := f.deadline
	f.deadline = d
	// The timer entry is never later than the old deadline, so only a
	// deadline that moves earlier can need the entry moved.
	if d < old {
		if pos := int(f.heapPos); d < m.timers.entries[pos].at {
			m.timers.update(pos, d, &m.flows)
		}
	}
}

func (m *Manager) detach(f *flow, idx uint32) {
	if f.attached {
		m.table.remove(f.hash, idx)
		f.attached = false
	}
}

// hold keeps as many datagrams of payload as the pending limit allows in a
// pool buffer and returns how many it kept; the rest are dropped.
func (m *Manager) hold(f *flow, payload []byte, seg int, tos uint8) int {
	n := segmentCount(len(payload), seg)
	// The limit counts held messages, not segments: a GRO run is one message
	// as received and is kept whole (a client's first GSO burst must not
	// lose its tail while the backend is chosen).
	held := 0
	for e := f.pendHead; e >= 0; e = m.held[e].next {
		held++
	}
	if held >= m.cfg.PendingLimit {
		m.drop(DropPendingOverflow, n, len(payload))
		return 0
	}
	keep := payload
	buf := m.cfg.Pool.Get(len(keep))
	if cap(buf) < len(keep) {
		if buf != nil {
			m.cfg.Pool.Put(buf)
		}
		m.drop(DropPendingOverflow, n, len(keep))
		return 0
	}
	buf = append(buf[:0], keep...)
	e := m.heldFree
	if e >= 0 {
		m.heldFree = m.held[e].next
	} else {
		m.held = append(m.held, heldDatagram{})
		e = int32(len(m.held) - 1)
	}
	m.held[e] = heldDatagram{buf: buf, seg: int32(seg), next: -1, tos: tos}
	if f.pendTail >= 0 {
		m.held[f.pendTail].next = e
	} else {
		f.pendHead = e
	}
	f.pendTail = e
	f.pending += uint16(n)
	return n
}

// forward emits payload to the flow's backend, with a PROXY v2 header when the
// cluster asks for one. Under ProxyEvery a GRO run stays one output whose
// Header precedes every segment; under ProxyFirst the header rides with the
// first segment alone, and the rest goes on as a run.
func (m *Manager) forward(f *flow, idx uint32, payload []byte, seg int, tos uint8) {
	cfg := &m.versions[f.cfg].cfg
	f.datagramsIn += uint64(segmentCount(len(payload), seg))
	f.bytesIn += uint64(len(payload))
	m.stats.DatagramsIn += uint64(segmentCount(len(payload), seg))
	m.stats.BytesIn += uint64(len(payload))
	needHeader := cfg.ProxyProtocol == ProxyEvery || (cfg.ProxyProtocol == ProxyFirst && !f.ppSent)
	o := m.slot()
	o.Kind, o.TOS, o.Listener, o.Cluster = OutSendToBackend, tos, f.key.listener, cfg.Cluster
	o.Flow, o.Backend.ID = makeFlowID(idx, f.gen), f.backend
	o.Payload, o.SegmentSize = payload, seg
	if !needHeader {
		return
	}
	f.ppSent = true
	o.Header = m.proxyHeader(f, cfg)
	if cfg.ProxyProtocol == ProxyEvery || seg == 0 {
		return
	}
	// ProxyFirst: the header and the first segment make one datagram.
	o.Payload, o.SegmentSize = payload[:seg], 0
	rest := payload[seg:]
	o = m.slot()
	*o = m.out[len(m.out)-2]
	o.Header, o.Payload, o.SegmentSize = nil, rest, seg
	if seg >= len(rest) {
		o.SegmentSize = 0
	}
}

// proxyHeader writes the flow's PROXY v2 header into the call's arena: source
// the client, destination the address the client sent to (or PublicAddr).
func (m *Manager) proxyHeader(f *flow, cfg *ClusterConfig) []byte {
	dst := cfg.PublicAddr
	if !dst.IsValid() {
		dst = f.key.local.addrPort()
	}
	start := len(m.arena)
	m.arena = AppendProxyHeader(m.arena, f.key.client.addrPort(), dst)
	return m.arena[start:len(m.arena):len(m.arena)]
}

func (m *Manager) lookup(id FlowID) (uint32, bool) {
	idx := id.Index()
	if int(idx) >= m.flows.len() {
		return 0, false
	}
	f := m.flows.at(idx)
	return idx, f.state != stateFree && f.gen == id.Gen()
}

func (m *Manager) onBackend(now Time, in *Input) {
	payload := in.Payload
	seg, segLen := splitRun(payload, in.SegmentSize)
	if segLen > m.maxRx {
		m.drop(DropOversize, segmentCount(len(payload), seg), len(payload))
		return
	}
	if len(payload) == 0 {
		m.drop(DropInvalid, 1, 0)
		return
	}
	idx, ok := m.lookup(in.Flow)
	if !ok || m.flows.at(idx).state != stateEstablished {
		m.drop(DropUnknownFlow, segmentCount(len(payload), seg), len(payload))
		return
	}
	f := m.flows.at(idx)
	if f.deadline <= now {
		m.ctxListener, m.ctxLookup = f.key.listener, false
		m.expire(idx, now)
		m.drop(DropUnknownFlow, segmentCount(len(payload), seg), len(payload))
		return
	}
	cfg := &m.versions[f.cfg].cfg
	n := segmentCount(len(payload), seg)
	take := n
	// Responses counts per client datagram, as nginx's proxy_responses
	// does: a flow that forwarded k datagrams closes after k × Responses
	// replies, so a client with several requests in flight on one port
	// gets every answer.
	limit := uint64(cfg.Responses) * f.datagramsIn
	if cfg.Responses > 0 {
		take = int(min(uint64(n), limit-min(uint64(f.responses), limit)))
		if take == 0 {
			m.drop(DropFlowClosed, n, len(payload))
			m.closeFlow(idx, now, CloseResponses)
			return
		}
	}
	chunk := payload
	if take < n {
		chunk = payload[:take*seg]
		if take == 1 {
			seg = 0
		}
	}
	ampCut, ampBytes := 0, 0
	if cfg.MaxAmplification > 0 {
		if fit := amplificationFit(f, cfg, len(chunk), seg, take); fit < take {
			keep := fit * seg // fit > 0 only for a run (seg > 0)
			ampCut, ampBytes = take-fit, len(chunk)-keep
			chunk, take = chunk[:keep], fit
			if take == 1 {
				seg = 0
			}
			if take == 0 {
				m.drop(DropAmplification, ampCut, ampBytes)
				if rest := n - ampCut; rest > 0 {
					m.drop(DropFlowClosed, rest, len(payload)-ampBytes)
				}
				return // a dropped datagram never refreshes a flow
			}
		}
	}
	f.responses += uint32(take)
	f.datagramsOut += uint64(take)
	f.bytesOut += uint64(len(chunk))
	m.stats.DatagramsOut += uint64(take)
	m.stats.BytesOut += uint64(len(chunk))
	o := m.slot()
	o.Kind, o.TOS, o.Listener, o.Cluster = OutSendToClient, in.TOS, f.key.listener, cfg.Cluster
	o.Flow, o.Backend.ID = in.Flow, f.backend
	o.Client, o.Local = f.key.client.addrPort(), f.key.local.addrPort()
	o.Payload, o.SegmentSize = chunk, seg
	if ampCut > 0 {
		m.drop(DropAmplification, ampCut, ampBytes)
	}
	if take+ampCut < n {
		m.drop(DropFlowClosed, n-take-ampCut, len(payload)-len(chunk)-ampBytes)
	}
	if cfg.Responses > 0 && uint64(f.responses) >= limit {
		m.closeFlow(idx, now, CloseResponses)
		return
	}
	m.touch(f, now.Add(cfg.BackTimeout))
}

func (m *Manager) onResolved(now Time, in *Input) {
	idx, ok := m.lookup(in.Flow)
	if !ok || m.flows.at(idx).state != stateAwaiting {
		m.metric(MetricStaleInput, in.Flow)
		return
	}
	if m.flows.at(idx).deadline <= now {
		// A late answer for a flow already past its deadline: opening an
		// upstream for it would send its held datagrams to a backend whose
		// replies it could no longer accept.
		m.expire(idx, now)
		return
	}
	if in.NoBackend || !in.Backend.Addr.IsValid() {
		m.closeFlow(idx, now, CloseNoBackend)
		return
	}
	f := m.flows.at(idx)
	f.state = stateEstablished
	f.backend = in.Backend.ID
	cfg := &m.versions[f.cfg].cfg
	o := m.slot()
	o.Kind, o.Listener, o.Cluster, o.Flow, o.Backend = OutOpenUpstream, f.key.listener, cfg.Cluster, in.Flow, in.Backend
	o.Client, o.Local = f.key.client.addrPort(), f.key.local.addrPort()
	for e := f.pendHead; e >= 0; {
		h := &m.held[e]
		m.forward(f, idx, h.buf, int(h.seg), h.tos)
		m.release = append(m.release, h.buf)
		next := h.next
		m.freeHeld(e)
		e = next
	}
	f.pendHead, f.pendTail, f.pending = -1, -1, 0
}

func (m *Manager) freeHeld(e int32) {
	m.held[e] = heldDatagram{next: m.heldFree}
	m.heldFree = e
}

// expire closes a flow whose deadline has passed.
func (m *Manager) expire(idx uint32, now Time) {
	reason := CloseIdle
	if m.flows.at(idx).expires <= now {
		reason = CloseLifetime
	}
	m.closeFlow(idx, now, reason)
}

// closeFlow ends the flow at idx: held datagrams are dropped, the key, timer
// and config reference are released, and OutCloseFlow is emitted.
func (m *Manager) closeFlow(idx uint32, now Time, reason CloseReason) {
	f := m.flows.at(idx)
	if f.pending > 0 {
		bytes := 0
		for e := f.pendHead; e >= 0; {
			h := &m.held[e]
			bytes += len(h.buf)
			m.cfg.Pool.Put(h.buf)
			next := h.next
			m.freeHeld(e)
			e = next
		}
		r := DropFlowClosed
		if reason == CloseNoBackend {
			r = DropNoBackend
		}
		// Attribute the held datagrams to this flow, then restore the
		// input's context: a later drop of the same input (a client datagram
		// that found this flow expired and is then refused) must not name it.
		ctxListener, ctxFlow, ctxLookup := m.ctxListener, m.ctxFlow, m.ctxLookup
		m.ctxListener, m.ctxFlow, m.ctxLookup = f.key.listener, makeFlowID(idx, f.gen), false
		m.drop(r, int(f.pending), bytes)
		m.ctxListener, m.ctxFlow, m.ctxLookup = ctxListener, ctxFlow, ctxLookup
		f.pendHead, f.pendTail, f.pending = -1, -1, 0
	}
	m.detach(f, idx)
	m.timers.remove(int(f.heapPos), &m.flows)
	cluster := m.versions[f.cfg].cfg.Cluster
	m.unref(f.cfg)
	o := m.slot()
	o.Kind, o.CloseReason, o.Listener, o.Cluster = OutCloseFlow, reason, f.key.listener, cluster
	o.Flow, o.Backend.ID = makeFlowID(idx, f.gen), f.backend
	o.Client, o.Local = f.key.client.addrPort(), f.key.local.addrPort()
	o.Stats = FlowStats{Created: f.created, Closed: now, DatagramsIn: f.datagramsIn,
		DatagramsOut: f.datagramsOut, BytesIn: f.bytesIn, BytesOut: f.bytesOut}
	m.stats.Evicted++
	m.stats.Active--
	m.stats.Closes[reason]++
	gen := f.gen + 1
	if gen == 0 {
		gen = 1
	}
	*f = flow{gen: gen, heapPos: -1, pendHead: -1, pendTail: -1}
	m.freeIdx = append(m.freeIdx, idx)
}

// onTimer closes flows whose deadline has passed, at most ExpiryBudget timer
// entries per call, and always re-arms the timer afterwards (an early or
// fruitless firing must never leave the timer unarmed). If work remains, the
// new deadline is not after now, asking the shell to call again at once.
func (m *Manager) onTimer(now Time) {
	for budget := m.cfg.ExpiryBudget; budget > 0 && m.timers.len() > 0; budget-- {
		e := m.timers.entries[0]
		if e.at > now {
			break
		}
		if d := m.flows.at(e.idx).deadline; d > now {
			m.timers.update(0, d, &m.flows)
			continue
		}
		m.expire(e.idx, now)
	}
	m.rearm = true
}

func (m *Manager) onConfig(now Time, ev *ConfigEvent) {
	if ev == nil {
		m.metric(MetricInvalidInput, 0)
		return
	}
	switch ev.Kind {
	case ConfigSetCluster:
		for int(ev.Listener) >= len(m.listeners) {
			m.listeners = append(m.listeners, -1)
		}
		old := m.listeners[ev.Listener]
		m.listeners[ev.Listener] = m.newVersion(ev.Cluster.normalized())
		if old >= 0 {
			m.unref(uint32(old))
		}
	case ConfigRemoveCluster:
		if int(ev.Listener) < len(m.listeners) {
			if old := m.listeners[ev.Listener]; old >= 0 {
				m.listeners[ev.Listener] = -1
				m.unref(uint32(old))
			}
		}
	case ConfigSetMaxFlows:
		m.maxFlows = min(max(ev.Value, 0), maxFlowSlots)
		m.maxFlowsSeen = max(m.maxFlowsSeen, m.maxFlows)
	case ConfigSetMaxRxDatagramSize:
		m.maxRx = min(max(ev.Value, 1), MaxDatagramSize)
	case ConfigDrain:
		m.draining = true
	case ConfigUndrain:
		m.draining = false
	case ConfigCloseAll:
		for idx := range uint32(m.flows.len()) {
			if m.flows.at(idx).state != stateFree {
				m.closeFlow(uint32(idx), now, CloseShutdown)
			}
		}
	case ConfigBackendDown:
		m.markBackend(ev.Backend, true)
	case ConfigBackendUp:
		m.markBackend(ev.Backend, false)
	case ConfigSetAdmission:
		m.sources.configure(ev.Admission, m.cfg.Seed)
	default:
		m.metric(MetricInvalidInput, 0)
	}
}

func (m *Manager) newVersion(cfg ClusterConfig) int32 {
	v := clusterVersion{cfg: cfg, refs: 1}
	if n := len(m.versionsFree); n > 0 {
		i := m.versionsFree[n-1]
		m.versionsFree = m.versionsFree[:n-1]
		m.versions[i] = v
		return int32(i)
	}
	m.versions = append(m.versions, v)
	return int32(len(m.versions) - 1)
}

func (m *Manager) unref(v uint32) {
	m.versions[v].refs--
	if m.versions[v].refs == 0 {
		m.versions[v] = clusterVersion{}
		m.versionsFree = append(m.versionsFree, v)
	}
}

// FlowCount returns the number of live flows.
func (m *Manager) FlowCount() int { return m.stats.Active }

// MaxFlows returns the current flow cap.
func (m *Manager) MaxFlows() int { return m.maxFlows }

// MaxRxDatagramSize returns the current largest accepted datagram.
func (m *Manager) MaxRxDatagramSize() int { return m.maxRx }

// Draining reports whether new flows are refused.
func (m *Manager) Draining() bool { return m.draining }

// BackendDown reports whether backend id is marked down by
// [ConfigBackendDown].
func (m *Manager) BackendDown(id BackendID) bool { return m.backendDown(id) }

// BackendsDown returns how many backends are marked down.
func (m *Manager) BackendsDown() int { return m.downCount }

// DownBackends calls fn for every backend marked down, in id order, until fn
// returns false.
func (m *Manager) DownBackends(fn func(BackendID) bool) {
	for w, word := range m.down {
		for ; word != 0; word &= word - 1 {
			if !fn(BackendID(w<<6 | bits.TrailingZeros64(word))) {
				return
			}
		}
	}
}

// Stats returns the running totals.
func (m *Manager) Stats() Stats {
	s := m.stats
	s.SourceEvictions = m.sources.evictions
	return s
}

// NextDeadline returns the deadline of the last OutArmTimer emitted.
func (m *Manager) NextDeadline() Time { return m.armed }

// FlowInfo describes a live flow, for tests, debugging and admin views.
type FlowInfo struct {
	ID                  FlowID
	Listener            ListenerID
	Client, Local       netip.AddrPort
	Backend             BackendID
	Established         bool
	Attached            bool // client datagrams still reach it
	Requests, Responses uint32
	Deadline            Time
	Stats               FlowStats
}

// Flow returns the live flow named by id.
func (m *Manager) Flow(id FlowID) (FlowInfo, bool) {
	idx, ok := m.lookup(id)
	if !ok {
		return FlowInfo{}, false
	}
	return m.info(idx), true
}

// Flows calls fn for every live flow in slot order until fn returns false.
func (m *Manager) Flows(fn func(FlowInfo) bool) {
	for idx := range uint32(m.flows.len()) {
		if m.flows.at(idx).state != stateFree && !fn(m.info(uint32(idx))) {
			return
		}
	}
}

func (m *Manager) info(idx uint32) FlowInfo {
	f := m.flows.at(idx)
	return FlowInfo{
		ID:          makeFlowID(idx, f.gen),
		Listener:    f.key.listener,
		Client:      f.key.client.addrPort(),
		Local:       f.key.local.addrPort(),
		Backend:     f.backend,
		Established: f.state == stateEstablished,
		Attached:    f.attached,
		Requests:    f.requests,
		Responses:   f.responses,
		Deadline:    f.deadline,
		Stats: FlowStats{Created: f.created, DatagramsIn: f.datagramsIn, DatagramsOut: f.datagramsOut,
			BytesIn: f.bytesIn, BytesOut: f.bytesOut},
	}
}

// String summarises the manager for logs.
func (m *Manager) String() string {
	return fmt.Sprintf("core.Manager(flows=%d max_flows=%d draining=%v)", m.stats.Active, m.maxFlows, m.draining)
}
