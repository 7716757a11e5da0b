package loadgen

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fastudp/fastudp/batchio"
	"golang.org/x/sys/unix"
)

// Config configures a [Generator].
type Config struct {
	// Target is where every client socket sends (the proxy, or the
	// backend for a direct run).
	Target netip.AddrPort
	// Conns is the number of client sockets, each with its own source port
	// and so its own flow (default 64).
	Conns int
	// Size is the payload size in bytes (default 64, at least HeaderLen).
	Size int
	// Rate > 0 selects the open loop: this many datagrams per second in
	// total, spread round-robin over the sockets. Rate == 0 selects the
	// closed loop: one request in flight per socket.
	Rate float64
	// Tick is the open loop's pacing interval (default 1 ms): each tick
	// sends what the schedule says is due, one sendmmsg per socket.
	Tick time.Duration
	// Timeout is how long the closed loop waits for a reply before it
	// counts the request lost and sends the next one (default 200 ms).
	Timeout time.Duration
	// Batch is the recvmmsg/sendmmsg batch size (0: batchio's default).
	Batch int
	// RecvBuffer and SendBuffer size each socket's buffers (default 1 MiB).
	RecvBuffer, SendBuffer int
}

// Stats are one phase's counters. Datagrams are attributed to the phase
// they were sent in, so a reply that comes back after the phase changed
// still counts where it belongs.
type Stats struct {
	Sent       uint64 // datagrams handed to the kernel
	SendErrors uint64 // sends refused (ECONNREFUSED from an earlier ICMP error, or a full buffer)
	Received   uint64 // replies matched to a datagram of this phase
	Late       uint64 // closed loop: replies that came after their request timed out
	Bytes      uint64 // payload bytes received
	RTT        Hist   // round-trip times of the Received replies
}

// Attempted returns Sent + SendErrors.
func (s *Stats) Attempted() uint64 { return s.Sent + s.SendErrors }

// Loss returns the share of attempted datagrams without a matched reply,
// in [0, 1]; 0 when nothing was attempted.
func (s *Stats) Loss() float64 {
	a := s.Attempted()
	if a == 0 {
		return 0
	}
	return 1 - float64(min(s.Received, a))/float64(a)
}

// Generator is a batched UDP load generator; see the package comment.
// Use it once: New, Start, SetPhase as needed, Stop, then Stats and Close.
type Generator struct {
	cfg   Config
	fds   []int
	epfd  int
	epoch time.Time

	phase    atomic.Uint32
	stopping atomic.Bool
	wg       sync.WaitGroup
	started  bool
	drain    time.Duration

	// Counters written by the sender (sent, sendErr) and the receiver
	// (the rest), read with atomics while running.
	sent, sendErr [MaxPhases]atomic.Uint64
	recv, late    [MaxPhases]atomic.Uint64
	bytes         [MaxPhases]atomic.Uint64
	invalid       atomic.Uint64 // replies without our header or of the wrong size
	refused       atomic.Uint64 // ECONNREFUSED seen on receive
	hist          [MaxPhases]Hist

	// Closed loop state, owned by the receiver goroutine.
	outSeq  []uint64 // sequence number in flight per socket, 0 when none
	outAt   []int64  // its send time, ns since epoch
	outPh   []uint8
	nextSeq uint64
}

// New opens cfg.Conns client sockets connected to cfg.Target.
func New(cfg Config) (*Generator, error) {
	if cfg.Conns <= 0 {
		cfg.Conns = 64
	}
	if cfg.Size == 0 {
		cfg.Size = 64
	}
	if cfg.Size < HeaderLen {
		return nil, fmt.Errorf("loadgen: size %d is below the %d-byte header", cfg.Size, HeaderLen)
	}
	if cfg.Rate < 0 {
		return nil, errors.New("loadgen: negative rate")
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 200 * time.Millisecond
	}
	if cfg.RecvBuffer == 0 {
		cfg.RecvBuffer = 1 << 20
	}
	if cfg.SendBuffer == 0 {
		cfg.SendBuffer = 1 << 20
	}
	g := &Generator{cfg: cfg, epfd: -1}
	var err error
	if g.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("loadgen: epoll_create1: %w", err)
	}
	for i := range cfg.Conns {
		fd, err := batchio.DialUpstream(netip.AddrPort{}, cfg.Target,
			batchio.DialOptions{RecvBuffer: cfg.RecvBuffer, SendBuffer: cfg.SendBuffer})
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("loadgen: socket %d: %w", i, err)
		}
		g.fds = append(g.fds, fd)
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(i)}
		if err := unix.EpollCtl(g.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			g.Close()
			return nil, fmt.Errorf("loadgen: epoll_ctl: %w", err)
		}
	}
	g.outSeq = make([]uint64, cfg.Conns)
	g.outAt = make([]int64, cfg.Conns)
	g.outPh = make([]uint8, cfg.Conns)
	return g, nil
}

// Config returns the configuration in use, defaults filled in.
func (g *Generator) Config() Config { return g.cfg }

// Start starts sending in phase 0.
func (g *Generator) Start() {
	if g.started {
		panic("loadgen: Start called twice")
	}
	g.started = true
	g.epoch = time.Now()
	if g.cfg.Rate > 0 {
		g.wg.Add(2)
		go g.openSender()
		go g.openReceiver()
	} else {
		g.wg.Add(1)
		go g.closedLoop()
	}
}

// SetPhase makes every datagram sent from now on carry phase p
// (0 ≤ p < MaxPhases).
func (g *Generator) SetPhase(p int) {
	if p < 0 || p >= MaxPhases {
		panic("loadgen: phase out of range")
	}
	g.phase.Store(uint32(p))
}

// Stop stops sending, waits up to drain for the replies still in flight,
// and returns once the generator's goroutines are done.
func (g *Generator) Stop(drain time.Duration) {
	if !g.started {
		return
	}
	g.drain = drain
	g.stopping.Store(true)
	g.wg.Wait()
}

// Stats returns phase p's counters. Call it after Stop; before, the
// counters are consistent only to within a batch and RTT is empty.
func (g *Generator) Stats(p int) Stats {
	s := Stats{
		Sent: g.sent[p].Load(), SendErrors: g.sendErr[p].Load(),
		Received: g.recv[p].Load(), Late: g.late[p].Load(), Bytes: g.bytes[p].Load(),
	}
	if g.stopping.Load() {
		s.RTT = g.hist[p]
	}
	return s
}

// Invalid returns the number of replies that were not a whole generator
// datagram of the configured size, sent from the socket they came back to.
func (g *Generator) Invalid() uint64 { return g.invalid.Load() }

// Refused returns the number of ECONNREFUSED errors seen on receive: the
// target's port was closed.
func (g *Generator) Refused() uint64 { return g.refused.Load() }

// Close closes the sockets. Call Stop first if Start was called.
func (g *Generator) Close() error {
	for _, fd := range g.fds {
		unix.Close(fd)
	}
	g.fds = nil
	if g.epfd >= 0 {
		unix.Close(g.epfd)
		g.epfd = -1
	}
	return nil
}

func (g *Generator) now() int64 { return int64(time.Since(g.epoch)) }

// sendOn sends msgs on socket c and counts them for phase p. A refused
// message is counted and skipped; a full buffer drops the rest.
func (g *Generator) sendOn(b *batchio.Batch, c int, msgs []batchio.Message, p int) {
	fd := g.fds[c]
	for len(msgs) > 0 {
		n, err := b.Send(fd, msgs)
		g.sent[p].Add(uint64(n))
		if err == nil {
			return
		}
		if k := batchio.Classify(err); k == batchio.KindWouldBlock || k == batchio.KindClosed {
			g.sendErr[p].Add(uint64(len(msgs) - n))
			return
		}
		g.sendErr[p].Add(1)
		msgs = msgs[n+1:]
	}
}

// openSender sends on schedule: by time t, Rate*t datagrams in all.
// It sleeps with nanosleep on a locked thread, which keeps the tick close
// to Config.Tick (Go's timers round short sleeps up to a millisecond).
func (g *Generator) openSender() {
	defer g.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b := batchio.NewBatch(g.cfg.Batch)
	per := b.Size() // most datagrams per socket per tick
	msgs := make([]batchio.Message, per)
	for i := range msgs {
		msgs[i].Buf = make([]byte, g.cfg.Size)
	}
	conns := len(g.fds)
	maxDue := uint64(conns * per)
	var total uint64 // datagrams scheduled so far (sent or failed)
	cursor := 0
	tick := g.cfg.Tick
	for k := int64(1); !g.stopping.Load(); k++ {
		now := g.now()
		due := uint64(g.cfg.Rate*float64(now)/1e9) - total
		due = min(due, maxDue)
		p := int(g.phase.Load())
		h := Header{Phase: uint8(p), SentNs: now}
		base, extra := int(due)/conns, int(due)%conns
		for j := range conns {
			n := base
			if j < extra {
				n++
			}
			if n == 0 {
				break
			}
			c := (cursor + j) % conns
			h.Conn = uint32(c)
			for i := range n {
				g.nextSeq++
				h.Seq = g.nextSeq
				h.Put(msgs[i].Buf)
			}
			g.sendOn(b, c, msgs[:n], p)
		}
		cursor = (cursor + extra) % conns
		total += due
		// Sleep to the next tick unless behind schedule.
		if next := int64(k) * int64(tick); next > g.now() {
			ts := unix.NsecToTimespec(next - g.now())
			_ = unix.Nanosleep(&ts, nil)
		} else {
			k = g.now() / int64(tick) // behind: resync the tick counter
		}
	}
}

// recvAll drains socket c and calls f for each whole reply of the
// configured size that carries c's header; anything else counts as invalid.
func (g *Generator) recvAll(b *batchio.Batch, rx []batchio.Message, c int, f func(c int, h Header, n int, at int64)) {
	fd := g.fds[c]
	for {
		got, err := b.Recv(fd, rx)
		if err != nil {
			switch batchio.Classify(err) {
			case batchio.KindRefused:
				g.refused.Add(1)
				continue
			default:
				return // would block, or closed
			}
		}
		at := g.now()
		for i := range got {
			m := &rx[i]
			if m.Flags != 0 || m.N != g.cfg.Size {
				g.invalid.Add(1)
				continue
			}
			h, err := ParseHeader(m.Buf[:m.N])
			if err != nil || int(h.Conn) != c {
				g.invalid.Add(1)
				continue
			}
			f(c, h, m.N, at)
		}
		if got < len(rx) {
			return
		}
	}
}

func (g *Generator) rxBuffers(b *batchio.Batch) []batchio.Message {
	rx := make([]batchio.Message, b.Size())
	for i := range rx {
		rx[i].Buf = make([]byte, g.cfg.Size+1) // +1: a longer reply shows as N > Size
	}
	return rx
}

// openReceiver counts and times replies until Stop, then until every sent
// datagram is answered or the drain time is up.
func (g *Generator) openReceiver() {
	defer g.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b := batchio.NewBatch(g.cfg.Batch)
	rx := g.rxBuffers(b)
	events := make([]unix.EpollEvent, len(g.fds))
	var drainEnd int64
	var recv, nbytes [MaxPhases]uint64
	onReply := func(_ int, h Header, n int, at int64) {
		recv[h.Phase]++
		nbytes[h.Phase] += uint64(n)
		g.hist[h.Phase].Record(time.Duration(at - h.SentNs))
	}
	for {
		if g.stopping.Load() {
			if drainEnd == 0 {
				drainEnd = g.now() + int64(g.drain)
			}
			if g.now() >= drainEnd || g.allAnswered() {
				return
			}
		}
		n, err := unix.EpollWait(g.epfd, events, pollTimeoutMs)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		for _, ev := range events[:max(n, 0)] {
			g.recvAll(b, rx, int(ev.Fd), onReply)
		}
		for p := range recv {
			if recv[p] != 0 {
				g.recv[p].Add(recv[p])
				g.bytes[p].Add(nbytes[p])
				recv[p], nbytes[p] = 0, 0
			}
		}
	}
}

// allAnswered reports whether every datagram sent has been answered.
func (g *Generator) allAnswered() bool {
	for p := range MaxPhases {
		if g.recv[p].Load()+g.late[p].Load() < g.sent[p].Load() {
			return false
		}
	}
	return true
}

// closedLoop keeps one request in flight on every socket: a reply or a
// timeout sends the next. After Stop it sends nothing new and waits for
// the requests in flight, up to the drain time.
func (g *Generator) closedLoop() {
	defer g.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b := batchio.NewBatch(g.cfg.Batch)
	rx := g.rxBuffers(b)
	tx := []batchio.Message{{Buf: make([]byte, g.cfg.Size)}}
	events := make([]unix.EpollEvent, len(g.fds))
	timeout := int64(g.cfg.Timeout)
	stopping := false
	var drainEnd int64

	send := func(c int) {
		p := int(g.phase.Load())
		g.nextSeq++
		h := Header{Phase: uint8(p), Conn: uint32(c), Seq: g.nextSeq, SentNs: g.now()}
		h.Put(tx[0].Buf)
		before := g.sendErr[p].Load()
		g.sendOn(b, c, tx, p)
		if g.sendErr[p].Load() != before {
			// Not sent: retry after the timeout like a lost request, but
			// do not count it as lost twice.
			g.outSeq[c], g.outAt[c], g.outPh[c] = 0, h.SentNs, uint8(p)
			return
		}
		g.outSeq[c], g.outAt[c], g.outPh[c] = h.Seq, h.SentNs, uint8(p)
	}
	onReply := func(c int, h Header, n int, at int64) {
		if h.Seq != g.outSeq[c] {
			g.late[h.Phase].Add(1)
			return
		}
		g.recv[h.Phase].Add(1)
		g.bytes[h.Phase].Add(uint64(n))
		g.hist[h.Phase].Record(time.Duration(at - h.SentNs))
		g.outSeq[c] = 0
		if !stopping {
			send(c)
		}
	}
	for c := range g.fds {
		send(c)
	}
	for {
		if !stopping && g.stopping.Load() {
			stopping = true
			drainEnd = g.now() + int64(g.drain)
		}
		if stopping && (g.now() >= drainEnd || g.noneInFlight()) {
			return
		}
		n, err := unix.EpollWait(g.epfd, events, 10)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		for _, ev := range events[:max(n, 0)] {
			g.recvAll(b, rx, int(ev.Fd), onReply)
		}
		// Timeouts: a request unanswered for Timeout is lost (it stays
		// counted as sent without a reply); send the next.
		now := g.now()
		for c := range g.fds {
			if now-g.outAt[c] < timeout {
				continue
			}
			if stopping {
				g.outSeq[c] = 0 // give up on it
				continue
			}
			send(c) // replaces the request in flight, or retries a failed send
		}
	}
}

func (g *Generator) noneInFlight() bool {
	for _, s := range g.outSeq {
		if s != 0 {
			return false
		}
	}
	return true
}
