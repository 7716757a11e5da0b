// Package shard is fastudp's I/O shell: one event loop per shard that reads
// client datagrams in recvmmsg batches from its SO_REUSEPORT listener sockets,
// drives a core.Manager with them, opens one connected upstream socket per
// flow, and writes replies back in sendmmsg batches from the address the
// client sent to (symmetric NAT).
//
// A shard runs on one goroutine locked to its OS thread, waits in its own
// epoll instance with the core's next deadline as the timeout, and is woken
// for control messages by an eventfd. Nothing on the per-datagram path takes
// a lock, sends on a channel or allocates.
package shard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/gso"
)

// Picker chooses a backend of cluster for the affinity key of a new flow. It
// is called on the shard goroutine for every new flow, so it must not block
// or allocate; it may read tables shared with other shards.
type Picker interface {
	Pick(cluster core.ClusterID, key uint64) (core.Backend, bool)
}

// Listener is one listening address and the cluster config its new flows get.
type Listener struct {
	Name    string
	Addr    netip.AddrPort
	Cluster core.ClusterConfig
	// DNS, when set, serves the listener in DNS mode (see [DNSListener]):
	// queries share upstream sockets instead of being flows.
	DNS *DNSListener
}

// Options configures a [Shard].
type Options struct {
	// Index numbers the shard, for logs and metrics.
	Index int
	// Listeners are served by this shard, in ListenerID order; ListenerFDs
	// are their bound SO_REUSEPORT sockets (the shard owns and closes them).
	Listeners   []Listener
	ListenerFDs []int
	// Backends is the total number of backends (BackendIDs are 0..Backends-1),
	// for per-backend counters.
	Backends int
	// Core configures the shard's flow engine. Its Pool is replaced by the
	// shard's own.
	Core core.Config
	// BatchSize is the number of datagrams per recvmmsg/sendmmsg (default 64).
	BatchSize int
	// UpstreamSources are local addresses upstream sockets bind to, used in
	// turn, to go past one address's ephemeral ports; empty lets the kernel
	// choose.
	UpstreamSources []netip.Addr
	// SocketRecvBuffer and SocketSendBuffer size upstream sockets (0 = default).
	SocketRecvBuffer, SocketSendBuffer int
	// DNSSocketBuffer sizes the shared upstream sockets of DNS-mode
	// backends, both directions (0 = the kernel's default).
	DNSSocketBuffer int
	// GRO turns UDP_GRO on for upstream sockets and sizes every receive
	// buffer for a coalesced run ([batchio.GROBufferSize]); set it whenever
	// the listener sockets have GRO on (batchio.ListenOptions.GRO), or runs
	// arrive cut and are dropped. A run received whole is forwarded whole,
	// as one GSO send with the same segment size. With GRO on, a recvmmsg
	// call reads at most [groRecvBatch] messages (see there). DNS-mode
	// listeners are not concerned: their sockets never have GRO on (a
	// [Group] binds them without it), and a shard with only those keeps
	// max_rx-sized buffers.
	GRO bool
	// NoGSO sends every run as single datagrams (sub-slices of the run, in
	// one sendmmsg) instead of one UDP_SEGMENT send, on every socket.
	NoGSO bool
	// CPU pins the shard's thread to this CPU; -1 leaves it unpinned.
	CPU int
	// Picker chooses backends.
	Picker Picker
	// Logger receives operational logs; AccessLog, if set, one line per
	// closed flow.
	Logger    *slog.Logger
	AccessLog *slog.Logger
	// Resume, when set, makes a shard taken over from another process:
	// its core, upstream sockets and queues come from the state (see
	// [Group.Pause]) and no socket is opened. RemapBackend, if set,
	// renames the state's backend IDs to this process's.
	Resume       *ShardState
	RemapBackend func(core.BackendID) core.BackendID
	// FDCeiling, when positive, keeps descriptors FDCeiling and up for the
	// control plane (metrics, control API, health probes): an upstream
	// socket that gets one is closed and its flow shed as at the
	// open-file limit (see resource.go).
	FDCeiling int
	// upstreamHook, when set, sees every upstream socket opened (tests
	// use it to make the kernel refuse GSO sends on it).
	upstreamHook func(fd int)
}

// Queue bounds for datagrams that met a full socket buffer (EAGAIN).
const (
	upstreamQueueLimit = 64
	clientQueueLimit   = 256
	// listenerReadBudget bounds the recvmmsg batches read from one listener
	// per wake-up, so a flood on one socket cannot starve replies.
	listenerReadBudget = 8
	// groRecvBatch caps the messages per recvmmsg when GRO is on. Each
	// receive buffer is then 64 KiB and a shard has two arrays of them
	// (listeners, upstreams): 32 × 64 KiB × 2 = 4 MiB per shard instead of
	// 8 MiB at the default batch of 64. A GRO message carries up to 64
	// datagrams, so 32 messages still move up to 2,048 datagrams per call;
	// wireguard-go likewise reads fewer, larger messages with GRO.
	groRecvBatch = 32
)

// epoll tokens: the kind in EpollEvent.Fd, the index in EpollEvent.Pad.
const (
	tokenWake int32 = iota
	tokenListener
	tokenUpstream
	tokenDNSUpstream
)

// queued is a datagram copied into a pool buffer to wait for a writable socket.
type queued struct {
	buf   []byte
	hdr   int // bytes of buf that are a PROXY v2 header (sent as one datagram anyway)
	to    netip.AddrPort
	local netip.Addr
	seg   int
	tos   uint8
}

type listenerSock struct {
	fd       int
	gsoOff   bool              // the kernel refused a GSO send: runs go out split
	out      []batchio.Message // replies collected for one sendmmsg
	queue    []queued
	writable bool // EPOLLOUT registered
}

type upstream struct {
	fd       int
	flow     core.FlowID // zero when the slot is unused
	backend  core.BackendID
	addr     netip.AddrPort // the backend's, for logs
	listener core.ListenerID
	queue    []queued
	writable bool
	gsoOff   bool // the kernel refused a GSO send: runs go out split
}

// Control is a message from the control plane, applied between batches.
type Control struct {
	// Config is delivered to the core.
	Config *core.ConfigEvent
	// Stop starts a graceful stop: no new flows, live flows get Grace to
	// finish, then everything closes and Run returns.
	Stop  bool
	Grace time.Duration
	// Flows, when set, asks for a snapshot of up to Flows.Limit live flows.
	Flows *FlowsRequest
	// DNS, when set, changes a DNS-mode listener's settings (see
	// [DNSUpdate]).
	DNS *DNSUpdate
	// handover pauses the shard for [Group.Pause].
	handover *handoverRequest
}

// DNSUpdate gives DNS-mode listener Listener new settings. The timeout
// applies to queries sent from then on, on every shared socket of the
// listener's cluster; Sockets and MaxInFlight apply to sockets opened from
// then on (a backend's sockets open on its first query).
type DNSUpdate struct {
	Listener core.ListenerID
	Options  DNSListener
}

// FlowsRequest asks a shard for its live flows; the shard sends exactly one
// [FlowList] on Reply, which must have room for it (a buffered channel), so
// the shard never blocks.
type FlowsRequest struct {
	Limit int
	Reply chan<- FlowList
}

// FlowList is one shard's answer to a [FlowsRequest]. Times in Flows
// (Created, Deadline) are nanoseconds since Start.
type FlowList struct {
	Shard int
	Start time.Time
	Total int // live flows in the shard, at most Limit of them listed
	Flows []core.FlowInfo
}

// Shard is one event loop. Create it with [New], run it with [Shard.Run] on
// its own goroutine, talk to it with [Shard.Send].
type Shard struct {
	opts     Options
	log      *slog.Logger
	mgr      *core.Manager
	pool     *core.SlicePool
	counters *Counters

	epfd   int
	wakefd int
	ctrl   chan Control
	done   chan struct{} // closed when Run returns
	// wakeMu guards wakefd against being closed (and its number reused)
	// while Send writes to it. Only the control path takes it.
	wakeMu sync.Mutex

	listeners []listenerSock
	ups       []upstream
	nextSrc   int

	rx      *batchio.Batch // listener and upstream reads
	tx      *batchio.Batch // sends
	rxMsgs  []batchio.Message
	upMsgs  []batchio.Message
	upFill  int
	events  []unix.EpollEvent
	inputs  []core.Input
	follow  []core.Input
	outputs []core.Output
	oneMsg  []batchio.Message
	split   []batchio.Message // a run cut into datagrams for a non-GSO send
	gsoTx   gsoSendState      // PROXY header runs and reply coalescing (gsosend.go)
	// upBatch collects consecutive single datagrams to one upstream
	// (upBatchFlow) for one sendmmsg: a burst of client datagrams read in
	// one recvmmsg.
	upBatch     []batchio.Message
	upBatchFlow core.FlowID
	// oneReply[l]: listener l's cluster has responses = 1, so its upstream
	// sockets skip UDP_GRO (a run could only ever forward its first
	// segment, and a DNS-like flow per query would pay a setsockopt).
	oneReply []bool
	start    time.Time
	deadline core.Time
	stopAt   core.Time
	stopping bool
	closed   bool
	warned   map[string]bool // anomalies already logged once
	res      resourceLog     // rate limits resource-event logs (resource.go)
	dns      dnsState
	admit    pacing // new flows resolved per loop iteration (pacing.go)
}

// New creates a shard over already bound listener sockets.
func New(opts Options) (*Shard, error) {
	if len(opts.Listeners) != len(opts.ListenerFDs) {
		return nil, fmt.Errorf("shard %d: %d listeners but %d sockets", opts.Index, len(opts.Listeners), len(opts.ListenerFDs))
	}
	if opts.Picker == nil {
		return nil, fmt.Errorf("shard %d: no backend picker", opts.Index)
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = batchio.DefaultBatchSize
	}
	opts.BatchSize = min(opts.BatchSize, batchio.MaxBatchSize)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	pool := core.NewSlicePool(4 * opts.BatchSize)
	cc := opts.Core
	cc.Pool = pool
	var mgr *core.Manager
	if opts.Resume == nil {
		var err error
		if mgr, err = core.NewManager(cc); err != nil {
			return nil, fmt.Errorf("shard %d: %w", opts.Index, err)
		}
	}
	s := &Shard{
		opts:     opts,
		log:      opts.Logger.With("shard", opts.Index),
		mgr:      mgr,
		pool:     pool,
		counters: newCounters(len(opts.Listeners), opts.Backends),
		ctrl:     make(chan Control, 64),
		rx:       batchio.NewBatch(opts.BatchSize),
		tx:       batchio.NewBatch(opts.BatchSize),
		events:   make([]unix.EpollEvent, 256),
		deadline: core.Never,
		warned:   map[string]bool{},
		oneMsg:   make([]batchio.Message, 1),
		done:     make(chan struct{}),
		epfd:     -1,
		wakefd:   -1,
	}
	if opts.Resume != nil {
		if err := s.resume(cc, opts.Resume); err != nil {
			return nil, fmt.Errorf("shard %d: resume: %w", opts.Index, err)
		}
	}
	bufSize := max(s.mgr.MaxRxDatagramSize(), cc.MaxRxDatagramSize) + 1 // one spare byte turns an oversize datagram into a counted drop
	rxBatch := opts.BatchSize
	if opts.GRO && hasFlowListener(opts.Listeners) { // DNS listeners never read with GRO
		bufSize = max(bufSize, batchio.GROBufferSize)
		rxBatch = min(rxBatch, groRecvBatch)
	}
	s.rxMsgs = newMessages(rxBatch, bufSize)
	s.upMsgs = newMessages(rxBatch, bufSize)
	s.split = make([]batchio.Message, 0, 2*gso.MaxSegments)
	s.gsoTx = newGSOSendState(opts.BatchSize)
	s.upBatch = make([]batchio.Message, 0, opts.BatchSize)
	s.inputs = make([]core.Input, 0, opts.BatchSize)
	s.follow = make([]core.Input, 0, opts.BatchSize)
	s.outputs = make([]core.Output, 0, 4*opts.BatchSize)
	if err := s.openPoll(); err != nil {
		s.closeAll()
		return nil, fmt.Errorf("shard %d: %w", opts.Index, err)
	}
	if opts.Resume != nil {
		if err := s.adopt(opts.Resume); err != nil {
			s.closeAll()
			return nil, fmt.Errorf("shard %d: resume: %w", opts.Index, err)
		}
	}
	s.initDNS()
	s.adoptDNS(opts.Resume) // dns_handover.go
	return s, nil
}

func newMessages(n, size int) []batchio.Message {
	slab := make([]byte, n*size)
	msgs := make([]batchio.Message, n)
	for i := range msgs {
		msgs[i].Buf = slab[i*size : (i+1)*size : (i+1)*size]
	}
	return msgs
}

func (s *Shard) openPoll() error {
	var err error
	if s.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	if s.wakefd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		s.wakefd = -1
		return fmt.Errorf("eventfd: %w", err)
	}
	if err := s.watch(s.wakefd, unix.EPOLLIN, tokenWake, 0, unix.EPOLL_CTL_ADD); err != nil {
		return err
	}
	s.listeners = make([]listenerSock, len(s.opts.ListenerFDs))
	for i, fd := range s.opts.ListenerFDs {
		s.listeners[i] = listenerSock{fd: fd, out: make([]batchio.Message, 0, s.opts.BatchSize), gsoOff: s.opts.NoGSO}
		if err := s.watch(fd, unix.EPOLLIN, tokenListener, int32(i), unix.EPOLL_CTL_ADD); err != nil {
			return err
		}
	}
	return nil
}

func (s *Shard) watch(fd int, events uint32, kind, idx int32, op int) error {
	ev := unix.EpollEvent{Events: events, Fd: kind, Pad: idx}
	if err := unix.EpollCtl(s.epfd, op, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl fd %d: %w", fd, err)
	}
	return nil
}

// Counters returns the shard's published counters.
func (s *Shard) Counters() *Counters { return s.counters }

// Send delivers a control message and wakes the shard. It blocks only while
// 64 messages are already waiting.
// After Run has returned it does nothing.
func (s *Shard) Send(c Control) {
	select {
	case s.ctrl <- c:
	case <-s.done:
		return
	}
	var one = [8]byte{1}
	s.wakeMu.Lock()
	if s.wakefd >= 0 {
		_, _ = unix.Write(s.wakefd, one[:]) // EAGAIN means the counter is already non-zero: the shard will wake
	}
	s.wakeMu.Unlock()
}

// Done is closed when Run has returned.
func (s *Shard) Done() <-chan struct{} { return s.done }

func (s *Shard) now() core.Time { return core.Time(time.Since(s.start)) }

// Run runs the event loop until a Stop control message has finished, or ctx
// is cancelled (which stops at once, closing every flow). It closes every
// socket before returning.
func (s *Shard) Run(ctx context.Context) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(s.done)
	defer s.closeAll()
	if s.opts.CPU >= 0 {
		var set unix.CPUSet
		set.Set(s.opts.CPU)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			s.log.Warn("cannot pin shard to CPU", "cpu", s.opts.CPU, "err", err)
		}
	}
	if s.start.IsZero() { // a resumed shard's clock started with its core
		s.start = time.Now()
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { s.Send(Control{Stop: true}) })
		defer stop()
	}
	s.oneReply = make([]bool, len(s.opts.Listeners))
	for i, l := range s.opts.Listeners {
		s.inputs = append(s.inputs, core.ConfigInput(core.ConfigEvent{Kind: core.ConfigSetCluster, Listener: core.ListenerID(i), Cluster: l.Cluster}))
		s.oneReply[i] = l.Cluster.Responses == 1
	}
	s.resumeInputs()
	s.process(s.now())
	for {
		now := s.now()
		n, err := unix.EpollWait(s.epfd, s.events, s.waitMillis(now))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("shard %d: epoll_wait: %w", s.opts.Index, err)
		}
		now = s.now()
		s.counters.addShard(ShardLoops, 1)
		s.resolveWaiting(now)
		for i := 0; i < n; i++ {
			ev := &s.events[i]
			switch ev.Fd {
			case tokenWake:
				if s.drainControl(now) {
					return nil // handed over: the sockets stay open for the new process
				}
			case tokenListener:
				if ev.Events&unix.EPOLLOUT != 0 {
					s.flushClientQueue(int(ev.Pad))
				}
				if ev.Events&(unix.EPOLLIN|unix.EPOLLERR) != 0 {
					if li := int(ev.Pad); li < len(s.dns.listener) && s.dns.listener[li] {
						s.readDNSListener(li, now)
					} else {
						s.readListener(li, now)
					}
				}
			case tokenUpstream:
				if ev.Events&unix.EPOLLOUT != 0 {
					s.flushUpstreamQueue(int(ev.Pad))
				}
				if ev.Events&(unix.EPOLLIN|unix.EPOLLERR) != 0 {
					s.readUpstream(int(ev.Pad), now)
				}
			case tokenDNSUpstream:
				s.readDNSUpstream(int(ev.Pad), now)
			}
		}
		if now >= s.dns.deadline {
			s.expireDNS(now)
		}
		s.flushUpstreamInputs(now)
		if now >= s.deadline {
			s.inputs = append(s.inputs, core.TimerFired())
			s.process(now)
		}
		if s.stopping && (s.mgr.FlowCount() == 0 && s.dnsInFlight() == 0 || now >= s.stopAt) {
			s.inputs = append(s.inputs, core.ConfigInput(core.ConfigEvent{Kind: core.ConfigCloseAll}))
			s.process(now)
			s.publishDNS()
			s.counters.publish()
			return nil
		}
		s.publishDNS()
		s.countSyscalls()
		s.countSourceEvictions()
		s.counters.publish()
	}
}

// countSyscalls copies the batches' system call counts into the counters.
func (s *Shard) countSyscalls() {
	rx, tx := s.rx.Syscalls(), s.tx.Syscalls()
	if v := rx.Recvmmsg + tx.Recvmmsg; v != s.counters.local[ShardRecvmmsg] {
		s.counters.local[ShardRecvmmsg], s.counters.dirty = v, true
	}
	if v := rx.Sendmmsg + tx.Sendmmsg; v != s.counters.local[ShardSendmmsg] {
		s.counters.local[ShardSendmmsg], s.counters.dirty = v, true
	}
}

// waitMillis converts the next deadline into an epoll timeout, rounding up
// so the loop never wakes just before it.
func (s *Shard) waitMillis(now core.Time) int {
	if s.admit.pending() {
		return 0
	}
	d := min(s.deadline, s.dns.deadline)
	if s.stopping {
		d = min(d, s.stopAt)
	}
	switch {
	case d == core.Never:
		return -1
	case d <= now:
		return 0
	}
	ms := (int64(d-now) + int64(time.Millisecond) - 1) / int64(time.Millisecond)
	return int(min(ms, 1<<30))
}

// drainControl applies the waiting control messages; it reports whether the
// shard was handed over to another process and must return at once.
func (s *Shard) drainControl(now core.Time) bool {
	var buf [8]byte
	_, _ = unix.Read(s.wakefd, buf[:]) // resets the eventfd counter; EAGAIN if already read
	for {
		select {
		case c := <-s.ctrl:
			s.counters.addShard(ShardControl, 1)
			if c.Config != nil {
				s.inputs = append(s.inputs, core.ConfigInput(*c.Config))
				s.dnsConfigEvent(c.Config)
				if ev := c.Config; ev.Kind == core.ConfigSetCluster && int(ev.Listener) < len(s.oneReply) {
					s.oneReply[ev.Listener] = ev.Cluster.Responses == 1
					s.opts.Listeners[ev.Listener].Cluster = ev.Cluster // DNS mode reads the affinity here
				}
			}
			if u := c.DNS; u != nil {
				s.updateDNS(u)
			}
			if r := c.Flows; r != nil {
				s.process(now) // flows opened by inputs already read are listed too
				l := FlowList{Shard: s.opts.Index, Start: s.start, Total: s.mgr.FlowCount()}
				s.mgr.Flows(func(f core.FlowInfo) bool {
					if len(l.Flows) >= r.Limit {
						return false
					}
					l.Flows = append(l.Flows, f)
					return true
				})
				select {
				case r.Reply <- l:
				default: // the asker gave no room; it has given up
				}
			}
			if c.handover != nil && s.handOver(now, c.handover) {
				return true
			}
			if c.Stop && !s.stopping {
				s.stopping = true
				s.stopAt = now.Add(c.Grace)
				s.inputs = append(s.inputs, core.ConfigInput(core.ConfigEvent{Kind: core.ConfigDrain}))
			}
		default:
			s.process(now)
			return false
		}
	}
}

// readListener reads client datagrams in batches and runs each batch through
// the core.
func (s *Shard) readListener(li int, now core.Time) {
	l := &s.listeners[li]
	lid := core.ListenerID(li)
	for range listenerReadBudget {
		n, err := s.rx.Recv(l.fd, s.rxMsgs)
		if n > 0 {
			s.counters.addShard(ShardBatches, 1)
			s.counters.addShard(ShardBatchDatagrams, uint64(n))
		}
		for i := 0; i < n; i++ {
			m := &s.rxMsgs[i]
			local, ok := s.countClientReceive(li, m)
			if !ok {
				continue
			}
			// A datagram longer than the buffer (MSG_TRUNC) fills it: one byte
			// more than max_rx, so the core drops it as oversize.
			in := core.ClientDatagram(lid, m.Addr, local, m.Buf[:m.N])
			in.TOS = m.TOS
			in.SegmentSize = m.SegmentSize
			s.inputs = append(s.inputs, in)
		}
		s.process(now)
		if s.listenerReadDone(li, n, len(s.rxMsgs), err) {
			return
		}
	}
}

// countClientReceive counts a datagram (or GRO run) read from listener li
// and returns the local address it was sent to; ok is false for a receive
// that must not be forwarded: lost control data, or a GRO run cut short.
func (s *Shard) countClientReceive(li int, m *batchio.Message) (local netip.AddrPort, ok bool) {
	lid := core.ListenerID(li)
	segs := segments(m.N, m.SegmentSize)
	if segs > 1 {
		s.counters.addShard(ShardGRORuns, 1)
		s.counters.addShard(ShardGROSegments, uint64(segs))
	}
	s.counters.addShard(ShardRxDatagrams, uint64(segs))
	s.counters.addListener(lid, ListenerRxDatagrams, uint64(segs))
	s.counters.addListener(lid, ListenerRxBytes, uint64(m.N))
	if m.Flags&batchio.FlagControlTruncated != 0 || (m.Flags&batchio.FlagTruncated != 0 && m.SegmentSize > 0) {
		s.counters.addListener(lid, ListenerTruncated, 1)
		return netip.AddrPort{}, false
	}
	local = s.opts.Listeners[li].Addr // a specific-address listener may skip PKTINFO
	if m.Local.IsValid() {
		local = netip.AddrPortFrom(m.Local, local.Port())
	}
	return local, true
}

// listenerReadDone records the kernel's drop count after a recvmmsg of n
// datagrams (of at most batch) on listener li that returned err, and
// reports whether the listener is drained for now.
func (s *Shard) listenerReadDone(li, n, batch int, err error) bool {
	if drops, ok := s.rx.Drops(); ok {
		s.counters.setListener(core.ListenerID(li), ListenerKernelDrops, uint64(drops))
	}
	if err != nil {
		if k := batchio.Classify(err); k != batchio.KindWouldBlock {
			s.warnOnce("listener-recv", "listener receive failed", "listener", s.opts.Listeners[li].Name, "err", err)
		}
		return true
	}
	return n < batch
}

// readUpstream reads replies from one flow's socket into the shared upstream
// batch; replies from many flows are processed together, so their sends to
// clients share sendmmsg calls.
func (s *Shard) readUpstream(idx int, now core.Time) {
	if idx >= len(s.ups) || s.ups[idx].flow == 0 {
		return
	}
	for {
		if s.upFill == len(s.upMsgs) {
			s.flushUpstreamInputs(now)
		}
		u := &s.ups[idx]
		if u.flow == 0 { // closed while processing the previous batch
			return
		}
		n, err := s.rx.Recv(u.fd, s.upMsgs[s.upFill:])
		for i := 0; i < n; i++ {
			m := &s.upMsgs[s.upFill+i]
			if m.Flags&batchio.FlagControlTruncated != 0 || (m.Flags&batchio.FlagTruncated != 0 && m.SegmentSize > 0) {
				// Lost control data, or a GRO run cut short: never forward.
				s.counters.addListener(u.listener, ListenerTruncated, 1)
				continue
			}
			if segs := segments(m.N, m.SegmentSize); segs > 1 {
				s.counters.addShard(ShardGRORuns, 1)
				s.counters.addShard(ShardGROSegments, uint64(segs))
			}
			in := core.BackendDatagram(u.flow, m.Buf[:m.N])
			in.TOS = m.TOS
			in.SegmentSize = m.SegmentSize
			s.inputs = append(s.inputs, in)
		}
		s.upFill += n
		if err != nil {
			switch batchio.Classify(err) {
			case batchio.KindWouldBlock:
			case batchio.KindRefused:
				s.counters.addBackend(u.backend, BackendRefused, 1)
				s.resourceEvent(ResourceBackendRefused, u.backend, u.addr, err)
			default:
				s.warnOnce("upstream-recv", "upstream receive failed", "err", err)
			}
			return
		}
		if s.upFill < len(s.upMsgs) {
			return
		}
	}
}

func (s *Shard) flushUpstreamInputs(now core.Time) {
	if s.upFill > 0 || len(s.inputs) > 0 {
		s.process(now)
	}
	s.upFill = 0
}

// process runs the pending inputs through the core and carries out the
// outputs, feeding follow-up inputs (backend resolutions, aborts) back until
// none remain. Every send completes (or is copied into a queue) before the
// next Handle call, which is what lets outputs borrow buffers.
func (s *Shard) process(now core.Time) {
	for len(s.inputs) > 0 {
		s.outputs = s.mgr.Handle(now, s.inputs, s.outputs[:0])
		s.inputs = s.inputs[:0]
		s.follow = s.follow[:0]
		for i := range s.outputs {
			s.apply(&s.outputs[i])
		}
		s.flushUpstreamBatch()
		for i := range s.listeners {
			s.flushClientSends(i)
		}
		clear(s.outputs) // drop references to buffers the core will recycle
		s.inputs, s.follow = s.follow, s.inputs
	}
}

func (s *Shard) apply(o *core.Output) {
	switch o.Kind {
	case core.OutSelectBackend:
		b, ok := s.pick(o) // now: o.Payload is only borrowed until the next Handle
		if ok && s.deferResolved(o.Flow, b) {
			return // the flow's upstream opens in a later loop iteration (pacing.go)
		}
		if ok {
			s.follow = append(s.follow, core.Resolved(o.Flow, b))
		} else {
			s.follow = append(s.follow, core.ResolveFailed(o.Flow))
		}
	case core.OutOpenUpstream:
		s.openUpstream(o)
	case core.OutSendToBackend:
		s.sendUpstream(o)
	case core.OutSendToClient:
		s.queueClientSend(o)
	case core.OutArmTimer:
		s.deadline = o.Deadline
	case core.OutMetric:
		if o.Metric == core.MetricFlowCreated {
			s.counters.addListener(o.Listener, ListenerFlowsCreated, 1)
		}
	case core.OutCloseFlow:
		s.closeFlow(o)
	case core.OutDrop:
		s.counters.addListener(o.Listener, ListenerDropBase+int(o.DropReason), uint64(o.Datagrams))
	}
}

func (s *Shard) openUpstream(o *core.Output) {
	idx := int(o.Flow.Index())
	for idx >= len(s.ups) {
		s.ups = append(s.ups, upstream{fd: -1})
	}
	gro := s.opts.GRO && !(int(o.Listener) < len(s.oneReply) && s.oneReply[o.Listener])
	opts := batchio.DialOptions{RecvBuffer: s.opts.SocketRecvBuffer, SendBuffer: s.opts.SocketSendBuffer, GRO: gro}
	fd, err := s.dial(o.Backend.Addr, opts)
	if err == nil {
		if err = s.watch(fd, unix.EPOLLIN, tokenUpstream, int32(idx), unix.EPOLL_CTL_ADD); err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		s.openFailed(o.Backend, err)
		s.follow = append(s.follow, core.AbortFlow(o.Flow))
		return
	}
	s.counters.addBackend(o.Backend.ID, BackendSocketsOpened, 1)
	if s.opts.upstreamHook != nil {
		s.opts.upstreamHook(fd)
	}
	s.ups[idx] = upstream{fd: fd, flow: o.Flow, backend: o.Backend.ID, addr: o.Backend.Addr, listener: o.Listener, queue: s.ups[idx].queue[:0], gsoOff: s.opts.NoGSO}
}

// dial opens a connected upstream socket, trying each configured source
// address once (ephemeral ports of one address run out near 28k flows).
func (s *Shard) dial(backend netip.AddrPort, opts batchio.DialOptions) (int, error) {
	srcs := s.opts.UpstreamSources
	if len(srcs) == 0 {
		return s.underCeiling(batchio.DialUpstream(netip.AddrPort{}, backend, opts))
	}
	var err error
	for range srcs {
		src := srcs[s.nextSrc%len(srcs)]
		s.nextSrc++
		if src.Unmap().Is4() != backend.Addr().Unmap().Is4() {
			continue
		}
		var fd int
		if fd, err = s.underCeiling(batchio.DialUpstream(netip.AddrPortFrom(src, 0), backend, opts)); err == nil {
			return fd, nil
		}
	}
	if err == nil {
		err = fmt.Errorf("no upstream source address of the family of %v", backend)
	}
	return -1, err
}

func (s *Shard) upstreamOf(id core.FlowID) *upstream {
	idx := int(id.Index())
	if idx < len(s.ups) && s.ups[idx].flow == id {
		return &s.ups[idx]
	}
	return nil
}

func (s *Shard) sendUpstream(o *core.Output) {
	u := s.upstreamOf(o.Flow)
	if u == nil {
		return // the flow's socket failed to open; the core is told by AbortFlow
	}
	segs := uint64(o.Segments())
	s.counters.addBackend(u.backend, BackendDatagramsIn, segs)
	s.counters.addBackend(u.backend, BackendBytesIn, uint64(len(o.Payload)))
	if s.upBatchFlow != o.Flow {
		s.flushUpstreamBatch()
	}
	if o.Header != nil && o.SegmentSize > 0 {
		s.sendHeaderRun(u, o) // a header before every segment
		return
	}
	m := batchio.Message{Buf: o.Payload, Header: o.Header, SegmentSize: o.SegmentSize, TOS: o.TOS}
	if len(u.queue) > 0 {
		s.enqueueUpstream(u, &m)
		return
	}
	if !isRun(&m) {
		// Single datagrams wait in upBatch (the payload stays borrowed:
		// process flushes it before the next Handle call).
		s.upBatch = append(s.upBatch, m)
		s.upBatchFlow = o.Flow
		if len(s.upBatch) == cap(s.upBatch) {
			s.flushUpstreamBatch()
		}
		return
	}
	s.flushUpstreamBatch() // keep the flow's order
	s.sendUpstreamRun(u, &m)
}

// sendUpstreamRun sends the run m on u's socket at once, queueing it on
// EAGAIN and counting other failures.
func (s *Shard) sendUpstreamRun(u *upstream, m *batchio.Message) {
	err := s.sendRun(u.fd, m, &u.gsoOff, "gso-upstream")
	if err == nil {
		return
	}
	if batchio.Classify(err) == batchio.KindWouldBlock {
		s.resourceEvent(ResourceSocketBufferFull, u.backend, u.addr, err)
		s.enqueueUpstream(u, m)
		return
	}
	s.upstreamSendFailed(u.backend, u.addr, err, uint64(segments(m.Len(), m.SegmentSize)))
}

// flushUpstreamBatch sends the single datagrams collected for one upstream
// socket with as few sendmmsg calls as the kernel allows.
func (s *Shard) flushUpstreamBatch() {
	if len(s.upBatch) == 0 {
		return
	}
	msgs := s.upBatch
	if u := s.upstreamOf(s.upBatchFlow); u != nil {
		for len(msgs) > 0 {
			n, err := s.tx.Send(u.fd, msgs)
			msgs = msgs[n:]
			if err == nil {
				break
			}
			if batchio.Classify(err) == batchio.KindWouldBlock {
				s.resourceEvent(ResourceSocketBufferFull, u.backend, u.addr, err)
				for i := range msgs {
					s.enqueueUpstream(u, &msgs[i])
				}
				msgs = nil
				continue
			}
			s.upstreamSendFailed(u.backend, u.addr, err, 1)
			msgs = msgs[1:]
		}
	}
	clear(s.upBatch)
	s.upBatch = s.upBatch[:0]
	s.upBatchFlow = 0
}

func (s *Shard) enqueueUpstream(u *upstream, m *batchio.Message) {
	segs := uint64(segments(m.Len(), m.SegmentSize))
	if len(u.queue) >= upstreamQueueLimit {
		s.counters.addBackend(u.backend, BackendQueueFull, segs)
		return
	}
	q, ok := s.copyQueued(m)
	if !ok {
		s.counters.addBackend(u.backend, BackendQueueFull, segs)
		return
	}
	q.seg, q.tos = m.SegmentSize, m.TOS
	u.queue = append(u.queue, q)
	if !u.writable {
		u.writable = true
		_ = s.watch(u.fd, unix.EPOLLIN|unix.EPOLLOUT, tokenUpstream, int32(u.flow.Index()), unix.EPOLL_CTL_MOD)
	}
}

// copyQueued copies m's pieces (Header, Buf, Gather) into one pool buffer:
// the byte stream the kernel would have cut, so SegmentSize still applies.
func (s *Shard) copyQueued(m *batchio.Message) (queued, bool) {
	n := m.Len()
	buf := s.pool.Get(n)
	if cap(buf) < n {
		if buf != nil {
			s.pool.Put(buf)
		}
		return queued{}, false
	}
	buf = append(append(buf[:0], m.Header...), m.Buf...)
	for _, p := range m.Gather {
		buf = append(buf, p...)
	}
	return queued{buf: buf, hdr: len(m.Header)}, true
}

func (s *Shard) flushUpstreamQueue(idx int) {
	if idx >= len(s.ups) || s.ups[idx].flow == 0 {
		return
	}
	u := &s.ups[idx]
	for len(u.queue) > 0 {
		q := &u.queue[0]
		m := batchio.Message{Buf: q.buf, SegmentSize: q.seg, TOS: q.tos}
		if err := s.sendRun(u.fd, &m, &u.gsoOff, "gso-upstream"); err != nil {
			if batchio.Classify(err) == batchio.KindWouldBlock {
				return
			}
			s.upstreamSendFailed(u.backend, u.addr, err, uint64(segments(len(q.buf), q.seg)))
		}
		s.pool.Put(q.buf)
		u.queue[0] = queued{}
		u.queue = u.queue[1:]
	}
	u.queue = u.queue[:0:0]
	u.writable = false
	_ = s.watch(u.fd, unix.EPOLLIN, tokenUpstream, int32(idx), unix.EPOLL_CTL_MOD)
}

func (s *Shard) queueClientSend(o *core.Output) {
	li := int(o.Listener)
	if li >= len(s.listeners) {
		return
	}
	l := &s.listeners[li]
	segs := uint64(o.Segments())
	s.counters.addListener(o.Listener, ListenerTxDatagrams, segs)
	s.counters.addListener(o.Listener, ListenerTxBytes, uint64(len(o.Payload)))
	s.counters.addBackend(o.Backend.ID, BackendDatagramsOut, segs)
	s.counters.addBackend(o.Backend.ID, BackendBytesOut, uint64(len(o.Payload)))
	m := batchio.Message{Buf: o.Payload, Addr: o.Client, Local: o.Local.Addr(), SegmentSize: o.SegmentSize, TOS: o.TOS}
	if len(l.queue) > 0 {
		s.enqueueClient(li, &m)
		return
	}
	if l.gsoOff && isRun(&m) {
		// GSO is off on this socket: queue the run's datagrams one by one
		// (sub-slices of the payload, nothing copied).
		var ok bool
		if s.split, ok = gso.Split(s.split[:0], &m); ok {
			for i := range s.split {
				s.appendClientSend(li, s.split[i])
			}
			clear(s.split)
			s.split = s.split[:0]
			return
		}
	}
	s.appendClientSend(li, m)
}

func (s *Shard) appendClientSend(li int, m batchio.Message) {
	l := &s.listeners[li]
	l.out = append(l.out, m)
	if len(l.out) == cap(l.out) {
		s.flushClientSends(li)
	}
}

// flushClientSends writes the collected replies of listener li with as few
// sendmmsg calls as the kernel allows; on EAGAIN the rest wait in the
// listener's queue.
func (s *Shard) flushClientSends(li int) {
	l := &s.listeners[li]
	msgs := s.coalesceClientSends(l)
	for len(msgs) > 0 {
		n, err := s.tx.Send(l.fd, msgs)
		s.countGSOSends(msgs[:n])
		msgs = msgs[n:]
		if err == nil {
			if n == 0 {
				break
			}
			continue
		}
		if batchio.Classify(err) == batchio.KindWouldBlock {
			s.resourceEvent(ResourceSocketBufferFull, noBackend, s.opts.Listeners[li].Addr, err)
			for i := range msgs {
				s.enqueueClient(li, &msgs[i])
			}
			break
		}
		if isRun(&msgs[0]) && batchio.IsGSOError(err) {
			s.gsoFallback(&l.gsoOff, "gso-listener", &msgs[0], err)
			if err = s.sendSplit(l.fd, &msgs[0]); err == nil {
				msgs = msgs[1:]
				continue
			}
		}
		s.counters.addListener(core.ListenerID(li), ListenerSendErrors, uint64(segments(msgs[0].Len(), msgs[0].SegmentSize)))
		msgs = msgs[1:]
	}
	clear(l.out)
	l.out = l.out[:0]
	s.gsoTx.releaseClientParts()
}

func (s *Shard) enqueueClient(li int, m *batchio.Message) {
	l := &s.listeners[li]
	if len(l.queue) >= clientQueueLimit {
		s.counters.addListener(core.ListenerID(li), ListenerQueueFull, uint64(segments(m.Len(), m.SegmentSize)))
		return
	}
	q, ok := s.copyQueued(m)
	if !ok {
		s.counters.addListener(core.ListenerID(li), ListenerQueueFull, uint64(segments(m.Len(), m.SegmentSize)))
		return
	}
	q.to, q.local, q.seg, q.tos = m.Addr, m.Local, m.SegmentSize, m.TOS
	l.queue = append(l.queue, q)
	if !l.writable {
		l.writable = true
		_ = s.watch(l.fd, unix.EPOLLIN|unix.EPOLLOUT, tokenListener, int32(li), unix.EPOLL_CTL_MOD)
	}
}

func (s *Shard) flushClientQueue(li int) {
	l := &s.listeners[li]
	for len(l.queue) > 0 {
		q := &l.queue[0]
		m := batchio.Message{Buf: q.buf, Addr: q.to, Local: q.local, SegmentSize: q.seg, TOS: q.tos}
		if err := s.sendRun(l.fd, &m, &l.gsoOff, "gso-listener"); err != nil {
			if batchio.Classify(err) == batchio.KindWouldBlock {
				return
			}
			s.counters.addListener(core.ListenerID(li), ListenerSendErrors, uint64(segments(len(q.buf), q.seg)))
		}
		s.pool.Put(q.buf)
		l.queue[0] = queued{}
		l.queue = l.queue[1:]
	}
	l.queue = l.queue[:0:0]
	l.writable = false
	_ = s.watch(l.fd, unix.EPOLLIN, tokenListener, int32(li), unix.EPOLL_CTL_MOD)
}

func (s *Shard) closeFlow(o *core.Output) {
	if s.upBatchFlow == o.Flow {
		s.flushUpstreamBatch() // the flow's last datagrams go out before its socket closes
	}
	s.counters.addListener(o.Listener, ListenerFlowsEvicted, 1)
	if o.CloseReason == core.CloseIdle && o.Stats.DatagramsOut == 0 && o.Stats.DatagramsIn > 0 &&
		int(o.Listener) < len(s.opts.Listeners) && s.opts.Listeners[o.Listener].Cluster.Responses > 0 {
		s.counters.addBackend(o.Backend.ID, BackendNoReply, 1)
		s.resourceEvent(ResourceBackendNoReply, o.Backend.ID, o.Backend.Addr, nil)
	}
	if u := s.upstreamOf(o.Flow); u != nil {
		// Queued datagrams are still sent: the last request of a flow may
		// be waiting for buffer space when its flow closes.
		if len(u.queue) > 0 {
			s.flushUpstreamQueue(int(o.Flow.Index()))
		}
		for _, q := range u.queue {
			s.pool.Put(q.buf)
		}
		if n := len(u.queue); n > 0 {
			s.counters.addBackend(u.backend, BackendQueueFull, uint64(n))
		}
		unix.Close(u.fd) // also removes it from the epoll set
		s.counters.addBackend(u.backend, BackendSocketsClosed, 1)
		*u = upstream{fd: -1, queue: u.queue[:0:0]}
	}
	if s.opts.AccessLog != nil {
		st := &o.Stats
		s.opts.AccessLog.LogAttrs(context.Background(), slog.LevelInfo, "flow closed",
			slog.Int("shard", s.opts.Index),
			slog.String("listener", s.opts.Listeners[min(int(o.Listener), len(s.opts.Listeners)-1)].Name),
			slog.String("client", o.Client.String()),
			slog.Uint64("backend", uint64(o.Backend.ID)),
			slog.Uint64("datagrams_in", st.DatagramsIn),
			slog.Uint64("datagrams_out", st.DatagramsOut),
			slog.Uint64("bytes_in", st.BytesIn),
			slog.Uint64("bytes_out", st.BytesOut),
			slog.Duration("duration", time.Duration(st.Closed-st.Created)),
			slog.String("reason", o.CloseReason.String()))
	}
}

func (s *Shard) warnOnce(key, msg string, args ...any) {
	if s.warned[key] {
		return
	}
	s.warned[key] = true
	s.log.Warn(msg+" (further occurrences are only counted)", args...)
}

// closeAll closes every socket the shard owns. Safe to call more than once.
func (s *Shard) closeAll() {
	if s.closed {
		return
	}
	s.closed = true
	for i := range s.ups {
		if s.ups[i].flow != 0 {
			unix.Close(s.ups[i].fd)
			s.ups[i] = upstream{fd: -1}
		}
	}
	s.closeDNS()
	for _, fd := range s.opts.ListenerFDs {
		unix.Close(fd)
	}
	s.wakeMu.Lock()
	if s.wakefd >= 0 {
		unix.Close(s.wakefd)
		s.wakefd = -1
	}
	s.wakeMu.Unlock()
	if s.epfd >= 0 {
		unix.Close(s.epfd)
	}
}

// FlowCount returns the shard's live flows. Only safe from the shard's own
// goroutine or after Run returned.
func (s *Shard) FlowCount() int { return s.mgr.FlowCount() }

// isRun reports whether m is a GSO send of more than one datagram.
func isRun(m *batchio.Message) bool {
	return m.SegmentSize > 0 && m.Len() > m.SegmentSize
}

func (s *Shard) countGSOSends(msgs []batchio.Message) {
	for i := range msgs {
		s.countGSOSend(&msgs[i])
	}
}

func (s *Shard) countGSOSend(m *batchio.Message) {
	if isRun(m) {
		s.counters.addShard(ShardGSOSends, 1)
		s.counters.addShard(ShardGSOSegments, uint64(segments(m.Len(), m.SegmentSize)))
	}
}

// sendRun sends m, one datagram or a GSO run, on fd. A run goes out as
// single datagrams when *gsoOff is set, or when the kernel refuses the GSO
// send ([batchio.IsGSOError]: EIO, EINVAL, EMSGSIZE), which then sets
// *gsoOff for good, counts a fallback and logs once per shard under key.
func (s *Shard) sendRun(fd int, m *batchio.Message, gsoOff *bool, key string) error {
	run := isRun(m)
	if run && *gsoOff {
		return s.sendSplit(fd, m)
	}
	s.oneMsg[0] = *m
	_, err := s.tx.Send(fd, s.oneMsg)
	s.oneMsg[0] = batchio.Message{}
	if !run {
		return err
	}
	if err == nil {
		s.countGSOSend(m)
		return nil
	}
	if !batchio.IsGSOError(err) {
		return err
	}
	s.gsoFallback(gsoOff, key, m, err)
	return s.sendSplit(fd, m)
}

func (s *Shard) gsoFallback(gsoOff *bool, key string, m *batchio.Message, err error) {
	if !*gsoOff {
		*gsoOff = true
		s.counters.addShard(ShardGSOFallbacks, 1)
	}
	s.warnOnce(key, "GSO send refused; this socket sends runs as single datagrams from now on",
		"segment_size", m.SegmentSize, "bytes", m.Len(), "err", err)
}

// sendSplit sends the run m as single datagrams (sub-slices of its payload)
// in one sendmmsg. An error is returned only when nothing was sent, so the
// caller may queue or count the whole run; datagrams of a run that was
// partly sent are counted as ShardSplitDrops.
func (s *Shard) sendSplit(fd int, m *batchio.Message) error {
	var ok bool
	s.split, ok = gso.Split(s.split[:0], m)
	if !ok {
		s.split = s.split[:0]
		return errHeaderOverSegment
	}
	n, err := s.tx.Send(fd, s.split)
	if err != nil && n > 0 {
		s.counters.addShard(ShardSplitDrops, uint64(len(s.split)-n))
		err = nil
	}
	clear(s.split)
	s.split = s.split[:0]
	return err
}

var errHeaderOverSegment = errors.New("shard: PROXY header longer than the GSO segment size")

func segments(n, seg int) int {
	if seg <= 0 || seg >= n {
		return 1
	}
	return (n + seg - 1) / seg
}
