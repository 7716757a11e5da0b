package shard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/bpf"
	"github.com/fastudp/fastudp/core"
)

// Handing a running group over to another process (a zero-downtime
// upgrade). [Group.Pause] stops every shard between two batches and exports
// what it serves with: its listener sockets, each live flow's upstream socket
// (by flow index, so the core's FlowIDs keep naming them), datagrams queued
// for socket buffer space, and its core's state ([core.Manager.AppendState]).
// The sockets stay open and unread while the shards are paused: datagrams
// and replies that arrive meanwhile wait in the kernel's socket buffers, and
// whoever reads the sockets next gets them. [Handover.Release] then ends the
// shards without closing anything (the new process owns the sockets), or
// [Handover.Resume] lets them go on as if nothing happened.
//
// A [Group] built with [GroupOptions.Resume] set to the exported state opens
// no socket of its own: it serves the same listener sockets (still in their
// SO_REUSEPORT group, with steering attached anew) and the same upstream
// sockets, so every flow keeps its source address and port at the backend.
//
// DNS-mode shared upstream sockets travel too, with their outstanding
// queries (dns_handover.go).

// ShardState is what one shard hands over.
type ShardState struct {
	Index int
	// ListenerFDs are the shard's listener sockets, in listener order.
	ListenerFDs []int
	// Core is the core's state, written at the shard's clock.
	Core []byte
	// Upstreams are the upstream sockets of live flows.
	Upstreams []UpstreamState
	// ClientQueues are replies waiting for buffer space, per listener.
	ClientQueues [][]QueuedDatagram
	// DNSInFlight counts the DNS-mode queries in flight, which travel
	// with their sockets in DNSSockets.
	DNSInFlight int
	// DNSSeed is the shard's DNS question-hash key, which the carried
	// tables' hashes were made with.
	DNSSeed uint64 `json:",omitempty"`
	// DNSSockets are the shard's shared DNS-mode upstream sockets.
	DNSSockets []DNSSocketState `json:",omitempty"`
}

// UpstreamState is one live flow's upstream socket.
type UpstreamState struct {
	Flow     core.FlowID
	FD       int
	Backend  core.BackendID
	Addr     netip.AddrPort // the backend's
	Listener core.ListenerID
	GSOOff   bool
	// Queue holds datagrams waiting for buffer space.
	Queue []QueuedDatagram
}

// QueuedDatagram is a datagram (or GSO run) waiting for a writable socket.
type QueuedDatagram struct {
	Payload []byte
	Header  int // leading bytes of Payload that are a PROXY v2 header
	To      netip.AddrPort
	Local   netip.Addr
	Seg     int
	TOS     uint8
}

// GroupState is what a group hands over: one ShardState per shard and the
// bound listener addresses.
type GroupState struct {
	Addrs  []netip.AddrPort
	Shards []ShardState
	// Steering holds, per listener, the descriptors of its steering
	// program and maps ([bpf.Steering.FDs]); nil when none is loaded.
	Steering [][]int
}

// FDs returns every socket of the state, listeners first, in a fixed order.
func (st *GroupState) FDs() []int {
	var fds []int
	for i := range st.Shards {
		fds = append(fds, st.Shards[i].ListenerFDs...)
	}
	for i := range st.Shards {
		for _, u := range st.Shards[i].Upstreams {
			fds = append(fds, u.FD)
		}
	}
	for i := range st.Shards {
		for _, d := range st.Shards[i].DNSSockets {
			fds = append(fds, d.FD)
		}
	}
	for _, s := range st.Steering {
		fds = append(fds, s...)
	}
	return fds
}

// Flows returns the number of live flows with an upstream socket.
func (st *GroupState) Flows() int {
	n := 0
	for i := range st.Shards {
		n += len(st.Shards[i].Upstreams)
	}
	return n
}

// MarshalState encodes st without its file descriptors, which travel
// separately in the order [GroupState.FDs] gives (SCM_RIGHTS).
func MarshalState(st *GroupState) ([]byte, error) {
	c := *st
	c.Shards = make([]ShardState, len(st.Shards))
	for i, s := range st.Shards {
		s.ListenerFDs = make([]int, len(s.ListenerFDs))
		s.Upstreams = append([]UpstreamState(nil), s.Upstreams...)
		for j := range s.Upstreams {
			s.Upstreams[j].FD = -1
		}
		s.DNSSockets = append([]DNSSocketState(nil), s.DNSSockets...)
		for j := range s.DNSSockets {
			s.DNSSockets[j].FD = -1
		}
		c.Shards[i] = s
	}
	c.Steering = make([][]int, len(st.Steering))
	for i, s := range st.Steering {
		c.Steering[i] = make([]int, len(s))
	}
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("shard: encode state: %w", err)
	}
	return b, nil
}

// UnmarshalState decodes what [MarshalState] wrote and gives each socket its
// descriptor from fds (in [GroupState.FDs] order). It checks that the counts
// agree and that every upstream's flow index is unique in its shard.
func UnmarshalState(b []byte, fds []int) (*GroupState, error) {
	var st GroupState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("shard: decode state: %w", err)
	}
	next := 0
	take := func() (int, error) {
		if next >= len(fds) {
			return -1, fmt.Errorf("shard: state names more sockets than the %d received", len(fds))
		}
		next++
		return fds[next-1], nil
	}
	for i := range st.Shards {
		s := &st.Shards[i]
		if s.Index != i || len(s.ListenerFDs) != len(st.Addrs) {
			return nil, fmt.Errorf("shard: state of shard %d: index %d, %d listeners for %d addresses", i, s.Index, len(s.ListenerFDs), len(st.Addrs))
		}
		for j := range s.ListenerFDs {
			fd, err := take()
			if err != nil {
				return nil, err
			}
			s.ListenerFDs[j] = fd
		}
	}
	for i := range st.Shards {
		s := &st.Shards[i]
		seen := map[uint32]bool{}
		for j := range s.Upstreams {
			u := &s.Upstreams[j]
			if u.Flow == 0 || seen[u.Flow.Index()] || u.Flow.Index() >= 1<<28 {
				return nil, fmt.Errorf("shard: state of shard %d: upstream of flow %v repeated or invalid", i, u.Flow)
			}
			seen[u.Flow.Index()] = true
			fd, err := take()
			if err != nil {
				return nil, err
			}
			u.FD = fd
		}
	}
	for i := range st.Shards {
		for j := range st.Shards[i].DNSSockets {
			fd, err := take()
			if err != nil {
				return nil, err
			}
			st.Shards[i].DNSSockets[j].FD = fd
		}
	}
	if len(st.Steering) != 0 && len(st.Steering) != len(st.Addrs) {
		return nil, fmt.Errorf("shard: steering state for %d listeners, %d listeners", len(st.Steering), len(st.Addrs))
	}
	for i := range st.Steering {
		for j := range st.Steering[i] {
			fd, err := take()
			if err != nil {
				return nil, err
			}
			st.Steering[i][j] = fd
		}
	}
	if next != len(fds) {
		return nil, fmt.Errorf("shard: %d sockets received, the state names %d", len(fds), next)
	}
	return &st, nil
}

// handoverRequest asks a shard to pause and export its state.
type handoverRequest struct {
	reply    chan<- shardExport
	decision *handoverDecision
}

type shardExport struct {
	index int
	state ShardState
	err   error
}

// handoverDecision is what paused shards wait for: done closes once exit
// has been set.
type handoverDecision struct {
	once sync.Once
	done chan struct{}
	exit bool
}

func (d *handoverDecision) decide(exit bool) {
	d.once.Do(func() {
		d.exit = exit
		close(d.done)
	})
}

// Handover is a group paused by [Group.Pause]. Exactly one of Resume or
// Release must be called.
type Handover struct {
	// State is what the shards exported; its sockets stay owned by the
	// paused shards until Release.
	State    GroupState
	decision *handoverDecision
	g        *Group
}

// Resume lets the paused shards go on serving.
func (h *Handover) Resume() { h.decision.decide(false) }

// Release ends the paused shards without closing their listener and
// upstream sockets (another process serves them now) and waits for them to
// return. Their other descriptors (epoll, eventfd) close.
func (h *Handover) Release() {
	h.decision.decide(true)
	for _, s := range h.g.shards {
		<-s.done
	}
}

// Pause stops every shard between two batches and returns their state. If
// a shard cannot pause (it is stopping) or ctx ends first, the shards that
// paused are resumed and an error is returned.
func (g *Group) Pause(ctx context.Context) (*Handover, error) {
	d := &handoverDecision{done: make(chan struct{})}
	reply := make(chan shardExport, len(g.shards))
	for _, s := range g.shards {
		s.Send(Control{handover: &handoverRequest{reply: reply, decision: d}})
	}
	h := &Handover{decision: d, g: g, State: GroupState{Addrs: g.addrs, Shards: make([]ShardState, len(g.shards))}}
	g.steerMu.Lock()
	if len(g.progs) == len(g.addrs) {
		for _, p := range g.progs {
			h.State.Steering = append(h.State.Steering, p.FDs())
		}
	}
	g.steerMu.Unlock()
	var errs []error
	for range g.shards {
		select {
		case e := <-reply:
			if e.err != nil {
				errs = append(errs, e.err)
			}
			h.State.Shards[e.index] = e.state
		case <-ctx.Done():
			d.decide(false)
			return nil, fmt.Errorf("shard: pause: %w", ctx.Err())
		}
	}
	if err := errors.Join(errs...); err != nil {
		d.decide(false)
		return nil, err
	}
	return h, nil
}

// handOver exports the shard's state and waits for the decision; it reports
// whether the shard is to return without closing its sockets.
func (s *Shard) handOver(now core.Time, r *handoverRequest) bool {
	if s.stopping {
		r.reply <- shardExport{index: s.opts.Index, err: fmt.Errorf("shard %d: stopping", s.opts.Index)}
		return false
	}
	s.process(now) // inputs already read are handled by this process
	// No flow is exported still waiting for its upstream (pacing.go).
	s.resolveAllWaiting(now)
	st := ShardState{
		Index:        s.opts.Index,
		ListenerFDs:  append([]int(nil), s.opts.ListenerFDs...),
		Core:         s.mgr.AppendState(nil, now),
		ClientQueues: make([][]QueuedDatagram, len(s.listeners)),
		DNSInFlight:  s.dnsInFlight(),
	}
	s.exportDNS(&st, now)
	for i := range s.ups {
		u := &s.ups[i]
		if u.flow == 0 {
			continue
		}
		us := UpstreamState{Flow: u.flow, FD: u.fd, Backend: u.backend, Addr: u.addr, Listener: u.listener, GSOOff: u.gsoOff}
		for _, q := range u.queue {
			us.Queue = append(us.Queue, exportQueued(&q))
		}
		st.Upstreams = append(st.Upstreams, us)
	}
	for i := range s.listeners {
		for _, q := range s.listeners[i].queue {
			st.ClientQueues[i] = append(st.ClientQueues[i], exportQueued(&q))
		}
	}
	r.reply <- shardExport{index: s.opts.Index, state: st}
	<-r.decision.done
	if !r.decision.exit {
		return false
	}
	// The listener, upstream and DNS sockets belong to the new process now.
	s.dns.socks = nil
	s.closed = true
	s.wakeMu.Lock()
	unix.Close(s.wakefd)
	s.wakefd = -1
	s.wakeMu.Unlock()
	unix.Close(s.epfd)
	s.epfd = -1
	return true
}

func exportQueued(q *queued) QueuedDatagram {
	return QueuedDatagram{Payload: append([]byte(nil), q.buf...), Header: q.hdr, To: q.to, Local: q.local, Seg: q.seg, TOS: q.tos}
}

// resume builds the shard's core and upstream sockets from st, as New's
// counterpart for a shard taken over from another process. The shard's
// clock starts now.
func (s *Shard) resume(cc core.Config, st *ShardState) error {
	s.start = time.Now()
	mgr, err := core.RestoreManager(cc, st.Core, 0)
	if err != nil {
		return err
	}
	remap := s.opts.RemapBackend
	if remap == nil {
		remap = func(id core.BackendID) core.BackendID { return id }
	}
	mgr.RemapBackends(remap)
	s.mgr = mgr
	s.deadline = mgr.NextDeadline()
	// The new process's counters start at zero: count what it adopts, so
	// live flows and open sockets (opened - closed) stay right.
	mgr.Flows(func(f core.FlowInfo) bool {
		s.counters.addListener(f.Listener, ListenerFlowsCreated, 1)
		return true
	})
	return nil
}

// adopt registers the carried upstream sockets and queues; it runs after
// openPoll. On error the caller closes everything (adopted sockets too).
func (s *Shard) adopt(st *ShardState) error {
	for _, u := range st.Upstreams {
		idx := int(u.Flow.Index())
		for idx >= len(s.ups) {
			s.ups = append(s.ups, upstream{fd: -1})
		}
		backend := u.Backend
		if s.opts.RemapBackend != nil {
			backend = s.opts.RemapBackend(backend)
		}
		s.ups[idx] = upstream{fd: u.FD, flow: u.Flow, backend: backend, addr: u.Addr, listener: u.Listener, gsoOff: u.GSOOff || s.opts.NoGSO}
		if !s.opts.GRO {
			// The old process may have had GRO on: runs would not fit
			// this process's receive buffers.
			_ = unix.SetsockoptInt(u.FD, unix.SOL_UDP, unix.UDP_GRO, 0)
		}
		if _, ok := s.mgr.Flow(u.Flow); !ok {
			return fmt.Errorf("shard %d: upstream socket of flow %v, which the core does not have", s.opts.Index, u.Flow)
		}
		events := uint32(unix.EPOLLIN)
		for _, q := range u.Queue {
			s.ups[idx].queue = append(s.ups[idx].queue, importQueued(&q))
		}
		if len(s.ups[idx].queue) > 0 {
			s.ups[idx].writable = true
			events |= unix.EPOLLOUT
		}
		if err := s.watch(u.FD, events, tokenUpstream, int32(idx), unix.EPOLL_CTL_ADD); err != nil {
			return err
		}
		s.counters.addBackend(backend, BackendSocketsOpened, 1)
	}
	for li, qs := range st.ClientQueues {
		if li >= len(s.listeners) || len(qs) == 0 {
			continue
		}
		l := &s.listeners[li]
		for _, q := range qs {
			l.queue = append(l.queue, importQueued(&q))
		}
		l.writable = true
		if err := s.watch(l.fd, unix.EPOLLIN|unix.EPOLLOUT, tokenListener, int32(li), unix.EPOLL_CTL_MOD); err != nil {
			return err
		}
	}
	return nil
}

func importQueued(q *QueuedDatagram) queued {
	return queued{buf: q.Payload, hdr: q.Header, to: q.To, local: q.Local, seg: q.Seg, tos: q.TOS}
}

// resumeInputs are the config events a resumed shard applies first: the new
// process's caps and source limits, and no draining.
func (s *Shard) resumeInputs() {
	if s.opts.Resume == nil {
		return
	}
	cc := s.opts.Core
	if cc.MaxFlows > 0 {
		s.inputs = append(s.inputs, core.ConfigInput(core.ConfigEvent{Kind: core.ConfigSetMaxFlows, Value: cc.MaxFlows}))
	}
	if cc.MaxRxDatagramSize > 0 {
		s.inputs = append(s.inputs, core.ConfigInput(core.ConfigEvent{Kind: core.ConfigSetMaxRxDatagramSize, Value: cc.MaxRxDatagramSize}))
	}
	s.inputs = append(s.inputs, core.ConfigInput(core.ConfigEvent{Kind: core.ConfigUndrain}))
	// The per-source limiter as this process is configured (the sources'
	// state carries over unless the table's size changes).
	s.inputs = append(s.inputs, core.ConfigInput(core.ConfigEvent{Kind: core.ConfigSetAdmission, Admission: cc.Admission}))
}

// resumeListeners checks the carried listener sockets against the
// configured listeners and sets UDP_GRO on them as this process wants it.
func resumeListeners(o *GroupOptions, addrs []netip.AddrPort) error {
	st := o.Resume
	if len(st.Shards) != o.Shards {
		return fmt.Errorf("resume: %d shards handed over, %d configured (the shard count cannot change in an upgrade)", len(st.Shards), o.Shards)
	}
	if len(st.Addrs) != len(o.Listeners) {
		return fmt.Errorf("resume: %d listeners handed over, %d configured (listeners cannot change in an upgrade)", len(st.Addrs), len(o.Listeners))
	}
	for li, l := range o.Listeners {
		if l.Addr != st.Addrs[li] && !(l.Addr.Port() == 0 && l.Addr.Addr() == st.Addrs[li].Addr()) {
			return fmt.Errorf("resume: listener %q: %v handed over, %v configured", l.Name, st.Addrs[li], l.Addr)
		}
		addrs[li] = st.Addrs[li]
	}
	for _, s := range st.Shards {
		for li, fd := range s.ListenerFDs {
			gro := o.GRO && o.Listeners[li].DNS == nil // as NewGroup binds them
			if err := unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_GRO, b2i(gro)); err != nil && gro {
				return fmt.Errorf("resume: UDP_GRO on a listener: %w", err)
			}
			if _, err := batchio.LocalAddr(fd); err != nil {
				return fmt.Errorf("resume: listener socket: %w", err)
			}
		}
	}
	return nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// adoptSteering takes over the steering programs handed over with the
// state: the program stays attached and its sockarray keeps the same
// sockets (see [bpf.Adopt]). Steering turned off detaches it.
func (g *Group) adoptSteering(o GroupOptions, lfds [][]int, cpus []int) error {
	so := o.Steering
	g.steering = SteeringStatus{Requested: so.Mode, Key: so.Key, Active: SteeringActiveKernel}
	st := o.Resume.Steering
	if so.Mode == bpf.ModeKernel {
		for li, fds := range st {
			for _, fd := range fds {
				unix.Close(fd)
			}
			if err := bpf.Detach(lfds[li][0]); err != nil {
				return fmt.Errorf("listener %q: steering off: %w", o.Listeners[li].Name, err)
			}
		}
		return nil
	}
	pinned := shardCPUs(o.Shards, cpus)
	for li, fds := range st {
		st[li] = nil // Adopt owns them now
		s, err := bpf.Adopt(bpf.Options{Mode: so.Mode, Key: so.Key, Seed: so.Seed, Shards: o.Shards, CPUs: pinned}, fds)
		if err != nil {
			for _, rest := range st[li+1:] {
				for _, fd := range rest {
					unix.Close(fd)
				}
			}
			return fmt.Errorf("listener %q: steering: %w", o.Listeners[li].Name, err)
		}
		g.addSteering(s)
	}
	g.steering.Active = so.Mode.String()
	return nil
}
