package core

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// A manager's state as a value, for handing a shard over to a new process
// (the zero-downtime upgrade). [Manager.AppendState] writes it and
// [RestoreManager] rebuilds an equal manager from it: the same flows in the
// same slots with the same generations (so every FlowID, and the shell's
// per-flow arrays indexed by it, stay valid), the same timer heap, free list,
// cluster versions, listener map, down set, held datagrams and counters. The
// restored manager then gives, for the same inputs, the same outputs as the
// original would have.
//
// Times are written relative to the writer's clock (now) and read relative
// to the reader's, so the new process's clock may start anywhere.
//
// The format is binary and self-describing enough to refuse what it cannot
// read: an 8-byte magic, a format version, then little-endian varints. Every
// count is checked against the bytes left before anything is allocated, and
// every index, reference and invariant is checked before the manager is
// returned; corrupt input gives an error wrapping [ErrBadState], never a
// panic.

// StateMagic starts every state [Manager.AppendState] writes.
const StateMagic = "FUDPcore"

// StateVersion is the format version written; [RestoreManager] reads this
// version only.
const StateVersion = 1

// ErrBadState reports a state [RestoreManager] cannot use: corrupt, of
// another format version, or taken under another seed.
var ErrBadState = errors.New("core: bad state")

// AppendState appends the manager's state at time now (the manager's clock,
// as given to Handle) to dst and returns it. It must not be called between
// a Handle call and the shell's use of its outputs only if those outputs
// are still needed: it changes nothing.
func (m *Manager) AppendState(dst []byte, now Time) []byte {
	w := stateWriter{b: dst}
	w.b = append(w.b, StateMagic...)
	w.uvarint(StateVersion)
	w.uvarint(m.cfg.Seed)
	w.uvarint(uint64(m.maxFlows))
	w.uvarint(uint64(m.maxFlowsSeen))
	w.uvarint(uint64(m.maxRx))
	w.bool(m.draining)
	w.uvarint(m.datagramSeq)
	w.time(m.armed, now)
	w.bool(m.rearm)

	st := &m.stats
	w.uvarint(st.Created)
	w.uvarint(st.Evicted)
	w.uvarint(st.DatagramsIn)
	w.uvarint(st.DatagramsOut)
	w.uvarint(st.BytesIn)
	w.uvarint(st.BytesOut)
	w.uvarint(uint64(len(st.Drops)))
	for _, v := range st.Drops {
		w.uvarint(v)
	}
	w.uvarint(uint64(len(st.Closes)))
	for _, v := range st.Closes {
		w.uvarint(v)
	}

	// Cluster versions by index; a free one is written as absent.
	w.uvarint(uint64(len(m.versions)))
	for i := range m.versions {
		v := &m.versions[i]
		w.bool(v.refs > 0)
		if v.refs > 0 {
			w.cluster(&v.cfg)
		}
	}
	w.uvarint(uint64(len(m.listeners)))
	for _, v := range m.listeners {
		w.varint(int64(v))
	}
	w.uvarint(uint64(m.downCount))
	m.DownBackends(func(id BackendID) bool {
		w.uvarint(uint64(id))
		return true
	})
	m.appendAdmission(&w, now)

	// Every slot, in order: its generation and, if live, the flow.
	w.uvarint(uint64(m.flows.len()))
	for idx := range uint32(m.flows.len()) {
		f := m.flows.at(idx)
		live := f.state != stateFree
		w.uvarint(uint64(f.gen)<<1 | b2u(live))
		if live {
			m.appendFlow(&w, f, now)
		}
	}
	w.uvarint(uint64(len(m.freeIdx)))
	for _, idx := range m.freeIdx {
		w.uvarint(uint64(idx))
	}
	// The heap as it is laid out, so ties fire in the same order.
	w.uvarint(uint64(len(m.timers.entries)))
	for _, e := range m.timers.entries {
		w.uvarint(uint64(e.idx))
		w.time(e.at, now)
	}
	return w.b
}

// appendAdmission writes the per-source limiter: its configuration as in
// force (a ConfigSetAdmission may have changed it) and the tracked sources
// (only the slots in use, by index).
func (m *Manager) appendAdmission(w *stateWriter, now Time) {
	a := &m.sources
	w.varint(int64(a.cfg.Interval))
	w.uvarint(uint64(a.cfg.Burst))
	w.uvarint(uint64(a.cfg.PrefixV4))
	w.uvarint(uint64(a.cfg.PrefixV6))
	w.uvarint(uint64(a.cfg.TableSize))
	w.uvarint(a.evictions)
	used := 0
	for i := range a.entries {
		if a.entries[i] != (sourceEntry{}) {
			used++
		}
	}
	w.uvarint(uint64(used))
	for i, e := range a.entries {
		if e == (sourceEntry{}) {
			continue
		}
		w.uvarint(uint64(i))
		w.uvarint(e.hi)
		w.uvarint(e.lo)
		w.bool(e.tat != 0) // 0: a full bucket, whatever the clock
		if e.tat != 0 {
			w.varint(int64(e.tat) - int64(now))
		}
	}
}

func (m *Manager) appendFlow(w *stateWriter, f *flow, now Time) {
	w.uvarint(uint64(f.state))
	w.bool(f.attached)
	w.bool(f.ppSent)
	w.uvarint(uint64(f.cfg))
	w.uvarint(uint64(f.backend))
	w.uvarint(uint64(f.key.listener))
	w.addr(&f.key.client)
	w.addr(&f.key.local)
	w.uvarint(uint64(f.requests))
	w.uvarint(uint64(f.responses))
	w.time(f.deadline, now)
	w.time(f.expires, now)
	w.time(f.created, now)
	w.uvarint(f.datagramsIn)
	w.uvarint(f.datagramsOut)
	w.uvarint(f.bytesIn)
	w.uvarint(f.bytesOut)
	n := 0
	for e := f.pendHead; e >= 0; e = m.held[e].next {
		n++
	}
	w.uvarint(uint64(n))
	for e := f.pendHead; e >= 0; e = m.held[e].next {
		h := &m.held[e]
		w.uvarint(uint64(h.seg))
		w.uvarint(uint64(h.tos))
		w.uvarint(uint64(len(h.buf)))
		w.b = append(w.b, h.buf...)
	}
}

// RestoreManager rebuilds, at time now on the caller's clock, the manager
// whose state [Manager.AppendState] wrote. cfg is validated as by
// [NewManager]; its Seed must be the one the state was taken under (the
// affinity keys and the flow table's hash depend on it), and held
// datagrams are copied into buffers from its Pool. The caps and sizes in
// the state (max flows, max datagram size, draining) are restored as they
// were; send config events afterwards to change them. An unusable state
// gives an error wrapping [ErrBadState].
func RestoreManager(cfg Config, state []byte, now Time) (*Manager, error) {
	m, err := NewManager(cfg)
	if err != nil {
		return nil, err
	}
	r := stateReader{b: state}
	if err := m.restore(&r, now); err != nil {
		m.releaseHeld()
		return nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	return m, nil
}

// releaseHeld gives every held buffer back to the pool (a failed restore).
func (m *Manager) releaseHeld() {
	for i := range m.held {
		if m.held[i].buf != nil {
			m.cfg.Pool.Put(m.held[i].buf)
			m.held[i].buf = nil
		}
	}
}

func (m *Manager) restore(r *stateReader, now Time) error {
	if len(r.b) < len(StateMagic) || string(r.b[:len(StateMagic)]) != StateMagic {
		return errors.New("not a core state (magic)")
	}
	r.off = len(StateMagic)
	if v := r.uvarint(); r.err == nil && v != StateVersion {
		return fmt.Errorf("format version %d, this build reads %d", v, StateVersion)
	}
	if seed := r.uvarint(); r.err == nil && seed != m.cfg.Seed {
		return fmt.Errorf("taken under seed %#x, restoring under %#x", seed, m.cfg.Seed)
	}
	m.maxFlows = r.int(maxFlowSlots)
	m.maxFlowsSeen = r.int(maxFlowSlots)
	m.maxRx = r.int(MaxDatagramSize)
	m.draining = r.bool()
	m.datagramSeq = r.uvarint()
	m.armed = r.time(now)
	m.rearm = r.bool()
	if r.err == nil && (m.maxFlowsSeen < m.maxFlows || m.maxRx < 1) {
		return fmt.Errorf("caps: max flows %d (highest %d), max datagram %d", m.maxFlows, m.maxFlowsSeen, m.maxRx)
	}

	st := &m.stats
	st.Created = r.uvarint()
	st.Evicted = r.uvarint()
	st.DatagramsIn = r.uvarint()
	st.DatagramsOut = r.uvarint()
	st.BytesIn = r.uvarint()
	st.BytesOut = r.uvarint()
	// An older writer may know fewer reasons; a newer one more, which this
	// build cannot name.
	n := r.count(len(st.Drops))
	for i := range n {
		st.Drops[i] = r.uvarint()
	}
	n = r.count(len(st.Closes))
	for i := range n {
		st.Closes[i] = r.uvarint()
	}

	n = r.count(math.MaxInt32)
	if r.err != nil {
		return r.err
	}
	m.versions = make([]clusterVersion, n)
	present := make([]bool, n)
	for i := range m.versions {
		if present[i] = r.bool(); present[i] {
			c := r.cluster()
			if r.err != nil {
				return r.err
			}
			if err := c.Validate(); err != nil {
				return fmt.Errorf("cluster version %d: %w", i, err)
			}
			m.versions[i].cfg = c.normalized()
		}
	}
	ref := func(v uint64, what string) error {
		if v >= uint64(len(m.versions)) || !present[v] {
			return fmt.Errorf("%s: cluster version %d absent", what, v)
		}
		m.versions[v].refs++
		return nil
	}
	n = r.count(math.MaxUint16 + 1)
	if r.err != nil {
		return r.err
	}
	m.listeners = make([]int32, n)
	for i := range m.listeners {
		v := r.varint()
		if r.err != nil {
			return r.err
		}
		if v < -1 || v > math.MaxInt32 {
			return fmt.Errorf("listener %d: version %d", i, v)
		}
		m.listeners[i] = int32(v)
		if v >= 0 {
			if err := ref(uint64(v), fmt.Sprintf("listener %d", i)); err != nil {
				return err
			}
		}
	}
	n = r.count(MaxDownBackendID)
	for range n {
		id := r.uvarint()
		if r.err != nil {
			return r.err
		}
		if id >= MaxDownBackendID || m.backendDown(BackendID(id)) {
			return fmt.Errorf("down set: backend %d out of range or repeated", id)
		}
		m.markBackend(BackendID(id), true)
	}
	if err := m.restoreAdmission(r, now); err != nil {
		return fmt.Errorf("admission: %w", err)
	}

	slots := r.count(maxFlowSlots)
	if r.err != nil {
		return r.err
	}
	live := 0
	for idx := range uint32(slots) {
		v := r.uvarint()
		gen := uint32(v >> 1)
		if r.err != nil {
			return r.err
		}
		if v>>33 != 0 || gen == 0 {
			return fmt.Errorf("slot %d: generation %d", idx, v>>1)
		}
		m.flows.add(flow{gen: gen, heapPos: -1, pendHead: -1, pendTail: -1})
		if v&1 == 0 {
			continue
		}
		live++
		if err := m.restoreFlow(r, idx, now, ref); err != nil {
			return fmt.Errorf("flow in slot %d: %w", idx, err)
		}
	}
	if uint64(live) != st.Created-st.Evicted || st.Evicted > st.Created {
		return fmt.Errorf("%d live flows, created %d, evicted %d", live, st.Created, st.Evicted)
	}
	if live > m.maxFlowsSeen {
		return fmt.Errorf("%d live flows above the highest cap %d", live, m.maxFlowsSeen)
	}
	st.Active = live

	n = r.count(slots)
	m.freeIdx = make([]uint32, 0, n)
	for range n {
		idx := r.uvarint()
		if r.err != nil {
			return r.err
		}
		if idx >= uint64(slots) || m.flows.at(uint32(idx)).state != stateFree || m.flows.at(uint32(idx)).heapPos == -2 {
			return fmt.Errorf("free list: slot %d not free or repeated", idx)
		}
		m.flows.at(uint32(idx)).heapPos = -2 // marks it listed
		m.freeIdx = append(m.freeIdx, uint32(idx))
	}
	if r.err == nil && len(m.freeIdx) != slots-live {
		return fmt.Errorf("free list of %d slots, %d free", len(m.freeIdx), slots-live)
	}
	for _, idx := range m.freeIdx {
		m.flows.at(idx).heapPos = -1
	}

	n = r.count(slots)
	if r.err == nil && n != live {
		return fmt.Errorf("timer heap of %d entries, %d live flows", n, live)
	}
	m.timers.entries = make([]timerEntry, 0, n)
	for i := range n {
		idx := r.uvarint()
		at := r.time(now)
		if r.err != nil {
			return r.err
		}
		if idx >= uint64(slots) {
			return fmt.Errorf("timer entry %d: slot %d", i, idx)
		}
		f := m.flows.at(uint32(idx))
		if f.state == stateFree || f.heapPos != -1 || at > f.deadline {
			return fmt.Errorf("timer entry %d: slot %d free, repeated or after its deadline", i, idx)
		}
		if p := (i - 1) / heapArity; i > 0 && m.timers.entries[p].at > at {
			return fmt.Errorf("timer heap out of order at %d", i)
		}
		f.heapPos = int32(i)
		m.timers.entries = append(m.timers.entries, timerEntry{at: at, idx: uint32(idx)})
	}
	if r.err != nil {
		return r.err
	}
	if r.off != len(r.b) {
		return fmt.Errorf("%d bytes after the state", len(r.b)-r.off)
	}
	// Handle leaves the armed deadline at the earliest timer entry.
	if m.armed != m.timers.min() || m.rearm {
		return fmt.Errorf("armed %d, earliest timer %d", m.armed, m.timers.min())
	}
	for i := range m.versions {
		if !present[i] {
			m.versionsFree = append(m.versionsFree, uint32(i))
		} else if m.versions[i].refs == 0 {
			return fmt.Errorf("cluster version %d referenced by nothing", i)
		}
	}
	return nil
}

func (m *Manager) restoreAdmission(r *stateReader, now Time) error {
	var c AdmissionConfig
	c.Interval = time.Duration(r.varint())
	c.Burst = r.int(math.MaxInt32)
	c.PrefixV4 = r.int(32)
	c.PrefixV6 = r.int(128)
	c.TableSize = r.int(1 << 24)
	evictions := r.uvarint()
	if r.err != nil {
		return r.err
	}
	if c.Interval < 0 {
		return fmt.Errorf("interval %v", c.Interval)
	}
	// Written normalized: anything else is not what this build wrote.
	if c.normalized() != c {
		return fmt.Errorf("configuration %+v not normalized", c)
	}
	m.sources.configure(c, m.cfg.Seed)
	m.sources.evictions = evictions
	n := r.count(len(m.sources.entries))
	last := -1
	for range n {
		i := r.int(len(m.sources.entries) - 1)
		hi, lo := r.uvarint(), r.uvarint()
		var tat Time
		if r.bool() {
			d := r.varint()
			tat = Time(int64(now) + d)
			if d > 0 && tat < now || d < 0 && tat > now {
				return errors.New("time out of range")
			}
			tat = max(tat, 1) // long past: a full bucket, still in use
		}
		if r.err != nil {
			return r.err
		}
		if i <= last {
			return fmt.Errorf("entry %d out of order", i)
		}
		last = i
		m.sources.entries[i] = sourceEntry{hi: hi, lo: lo, tat: tat}
	}
	return r.err
}

func (m *Manager) restoreFlow(r *stateReader, idx uint32, now Time, ref func(uint64, string) error) error {
	f := m.flows.at(idx)
	state := flowState(r.uvarint())
	f.attached = r.bool()
	f.ppSent = r.bool()
	ver := r.uvarint()
	backend := r.uvarint()
	listener := r.uvarint()
	r.addr(&f.key.client)
	r.addr(&f.key.local)
	requests, responses := r.uvarint(), r.uvarint()
	f.deadline = r.time(now)
	f.expires = r.time(now)
	f.created = r.time(now)
	f.datagramsIn = r.uvarint()
	f.datagramsOut = r.uvarint()
	f.bytesIn = r.uvarint()
	f.bytesOut = r.uvarint()
	if r.err != nil {
		return r.err
	}
	if state != stateAwaiting && state != stateEstablished {
		return fmt.Errorf("state %d", state)
	}
	if backend > math.MaxUint32 || listener > math.MaxUint16 || requests > math.MaxUint32 || responses > math.MaxUint32 {
		return errors.New("backend, listener or counts out of range")
	}
	if !f.key.client.isValidClient() {
		return errors.New("invalid client address")
	}
	if f.deadline == Never || f.deadline > f.expires {
		return errors.New("deadline not finite or after end of life")
	}
	if err := ref(ver, "flow"); err != nil {
		return err
	}
	f.state = state
	f.cfg = uint32(ver)
	f.backend = BackendID(backend)
	f.key.listener = ListenerID(listener)
	f.requests, f.responses = uint32(requests), uint32(responses)
	f.hash = m.secrets.hash(&f.key)
	if f.attached {
		if _, dup := m.table.find(f.hash, &f.key, &m.flows); dup {
			return errors.New("key attached twice")
		}
		m.table.insert(f.hash, idx)
	}
	held := r.count(m.cfg.PendingLimit)
	if held > 0 && state != stateAwaiting {
		return errors.New("established but holds datagrams")
	}
	for range held {
		seg, tos, size := r.uvarint(), r.uvarint(), r.count(MaxDatagramSize*64)
		payload := r.bytes(size)
		if r.err != nil {
			return r.err
		}
		if size == 0 || seg > uint64(size) || tos > math.MaxUint8 {
			return errors.New("held datagram: bad size, segment size or TOS")
		}
		buf := m.cfg.Pool.Get(size)
		if cap(buf) < size {
			if buf != nil {
				m.cfg.Pool.Put(buf)
			}
			return fmt.Errorf("held datagram: no buffer of %d bytes", size)
		}
		e := int32(len(m.held))
		m.held = append(m.held, heldDatagram{buf: append(buf[:0], payload...), seg: int32(seg), next: -1, tos: uint8(tos)})
		if f.pendTail >= 0 {
			m.held[f.pendTail].next = e
		} else {
			f.pendHead = e
		}
		f.pendTail = e
		f.pending += uint16(segmentCount(size, int(seg)))
	}
	return nil
}

// RemapBackends renames every live flow's backend through fn (a new
// process numbers backends from its own configuration) and clears the down
// set, which was numbered the old way: the shell marks backends down again
// from its own health view. It emits nothing.
func (m *Manager) RemapBackends(fn func(BackendID) BackendID) {
	for idx := range uint32(m.flows.len()) {
		if f := m.flows.at(idx); f.state == stateEstablished {
			f.backend = fn(f.backend)
		}
	}
	clear(m.down)
	m.downCount = 0
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// stateWriter appends the state's fields.
type stateWriter struct{ b []byte }

func (w *stateWriter) uvarint(v uint64) { w.b = binary.AppendUvarint(w.b, v) }
func (w *stateWriter) varint(v int64)   { w.b = binary.AppendVarint(w.b, v) }
func (w *stateWriter) bool(v bool)      { w.b = append(w.b, byte(b2u(v))) }

// time writes t relative to now, Never as a flag.
func (w *stateWriter) time(t, now Time) {
	if t == Never {
		w.bool(false)
		return
	}
	w.bool(true)
	w.varint(int64(t) - int64(now))
}

func (w *stateWriter) addr(a *addr) {
	w.bool(a.is4)
	w.b = append(w.b, a.ip[:]...)
	w.uvarint(uint64(a.port))
}

func (w *stateWriter) cluster(c *ClusterConfig) {
	w.uvarint(uint64(c.Cluster))
	w.uvarint(uint64(c.Affinity))
	w.uvarint(uint64(c.Responses))
	w.uvarint(uint64(c.Requests))
	w.varint(int64(c.FrontTimeout))
	w.varint(int64(c.BackTimeout))
	w.varint(int64(c.Lifetime))
	w.uvarint(uint64(c.ProxyProtocol))
	w.bool(c.PublicAddr.IsValid())
	if c.PublicAddr.IsValid() {
		var a addr
		a.set(c.PublicAddr)
		w.addr(&a)
	}
	w.bool(c.CloseOnBackendDown)
	w.uvarint(uint64(c.MaxAmplification))
	w.uvarint(uint64(c.AmplificationAllowance))
	w.uvarint(uint64(c.QUIC.ConfigID))
	w.uvarint(uint64(c.QUIC.ServerIDLen))
	w.uvarint(uint64(c.QUIC.NonceLen))
	w.bool(c.QUIC.SelfEncodedLength)
}

// stateReader reads the state's fields; the first error sticks and every
// later read returns zero.
type stateReader struct {
	b   []byte
	off int
	err error
}

func (r *stateReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%s at byte %d", what, r.off)
	}
}

func (r *stateReader) uvarint() uint64 { return readNumber(r, binary.Uvarint) }

func (r *stateReader) varint() int64 { return readNumber(r, binary.Varint) }

// readNumber reads one number with decode (binary.Uvarint or binary.Varint).
func readNumber[T uint64 | int64](r *stateReader, decode func([]byte) (T, int)) T {
	if r.err != nil {
		return 0
	}
	v, n := decode(r.b[r.off:])
	if n <= 0 {
		r.fail("truncated or overlong number")
		return 0
	}
	r.off += n
	return v
}

func (r *stateReader) bool() bool {
	if r.err != nil {
		return false
	}
	if r.off >= len(r.b) || r.b[r.off] > 1 {
		r.fail("bad flag")
		return false
	}
	r.off++
	return r.b[r.off-1] == 1
}

// int reads a number in 0..limit.
func (r *stateReader) int(limit int) int {
	v := r.uvarint()
	if v > uint64(limit) {
		r.fail(fmt.Sprintf("number %d above %d", v, limit))
		return 0
	}
	return int(v)
}

// count reads a count of items in 0..limit; each item takes at least a byte,
// so a count above the bytes left is corrupt (and allocates nothing).
func (r *stateReader) count(limit int) int {
	n := r.int(limit)
	if r.err == nil && n > len(r.b)-r.off {
		r.fail(fmt.Sprintf("count %d above the %d bytes left", n, len(r.b)-r.off))
		return 0
	}
	return n
}

func (r *stateReader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b)-r.off {
		r.fail("truncated payload")
		return nil
	}
	r.off += n
	return r.b[r.off-n : r.off]
}

func (r *stateReader) time(now Time) Time {
	if !r.bool() {
		return Never
	}
	d := r.varint()
	if r.err != nil {
		return 0
	}
	t := int64(now) + d
	if (d > 0 && t < int64(now)) || (d < 0 && t > int64(now)) || Time(t) == Never {
		r.fail("time out of range")
		return 0
	}
	return Time(t)
}

func (r *stateReader) addr(a *addr) {
	a.is4 = r.bool()
	copy(a.ip[:], r.bytes(16))
	p := r.uvarint()
	if p > math.MaxUint16 {
		r.fail("port out of range")
	}
	a.port = uint16(p)
	if r.err == nil && a.is4 && [12]byte(a.ip[:12]) != [12]byte{10: 0xff, 11: 0xff} {
		r.fail("IPv4 address not in mapped form")
	}
}

func (r *stateReader) cluster() ClusterConfig {
	var c ClusterConfig
	id, aff, resp, req := r.uvarint(), r.uvarint(), r.uvarint(), r.uvarint()
	front, back, life := r.varint(), r.varint(), r.varint()
	pp := r.uvarint()
	if r.bool() {
		var a addr
		r.addr(&a)
		c.PublicAddr = a.addrPort()
	}
	c.CloseOnBackendDown = r.bool()
	amp, allowance := r.uvarint(), r.uvarint()
	qid, qsid, qnonce := r.uvarint(), r.uvarint(), r.uvarint()
	c.QUIC.SelfEncodedLength = r.bool()
	if r.err != nil {
		return c
	}
	if amp > math.MaxUint32 || allowance > math.MaxUint32 || qid > math.MaxUint8 || qsid > math.MaxUint8 || qnonce > math.MaxUint8 {
		r.fail("cluster field out of range")
		return c
	}
	c.MaxAmplification, c.AmplificationAllowance = uint32(amp), uint32(allowance)
	c.QUIC.ConfigID, c.QUIC.ServerIDLen, c.QUIC.NonceLen = uint8(qid), uint8(qsid), uint8(qnonce)
	if id > math.MaxUint32 || aff > math.MaxUint8 || resp > math.MaxUint32 || req > math.MaxUint32 || pp > math.MaxUint8 {
		r.fail("cluster field out of range")
		return c
	}
	c.Cluster, c.Affinity, c.Responses, c.Requests = ClusterID(id), Affinity(aff), uint32(resp), uint32(req)
	c.FrontTimeout, c.BackTimeout, c.Lifetime = time.Duration(front), time.Duration(back), time.Duration(life)
	c.ProxyProtocol = ProxyMode(pp)
	return c
}
