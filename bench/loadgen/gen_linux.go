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
	// Sources are the client source addresses: socket i is bound to
	// Sources[i % len(Sources)] (see [LoopbackSources] for addresses across
	// 127.0.0.0/8). Empty lets the kernel choose.
	Sources []netip.Addr
	// Size is the payload size in bytes (default 64, at least HeaderLen).
	Size int
	// Sizes, if set, is a size mix used instead of Size: the datagrams
	// take these sizes in turn.
	Sizes []int
	// DNS, if set, selects DNS mode: payloads are these queries in turn
	// (with no generator header), and replies are matched to requests by
	// DNS ID per socket. Size and Sizes are ignored.
	DNS []Query
	// Rate > 0 selects the open loop: this many requests per second in
	// total, spread round-robin over the sockets, each timed from the
	// moment the schedule said it was due (a stall of the sender shows up
	// as latency, not as a lower rate: no coordinated omission). Rate == 0
	// selects the closed loop: one request in flight per socket.
	Rate float64
	// Tick is the open loop's pacing interval (default 1 ms): each tick
	// sends what the schedule says is due, one sendmmsg per socket.
	Tick time.Duration
	// Timeout is how long the closed loop waits for a reply before it
	// counts the request lost and sends the next one (default 200 ms).
	Timeout time.Duration
	// Churn, in the closed loop, closes a socket once its request is
	// answered (or timed out) and opens a new one, with a new source port,
	// for the next: every request is a new flow.
	Churn bool
	// ReplyDatagrams is the number of datagrams each request is answered
	// with (default 1; the bulk blaster's run length). A request is
	// complete when the last one (segment ReplyDatagrams-1) arrives.
	ReplyDatagrams int
	// RequestDatagrams, in the closed loop, makes each request a run of
	// this many datagrams of Size bytes (each header carrying its segment
	// index) sent as one UDP GSO message, as an uploading client does; the
	// upload blaster ([BlasterConfig].Upload) answers the run's last
	// datagram. Default 1.
	RequestDatagrams int
	// RawSamples keeps up to this many raw round-trip times per phase, in
	// a slice allocated up front (tests compare them with the histogram).
	RawSamples int
	// Batch is the recvmmsg/sendmmsg batch size (0: batchio's default).
	Batch int
	// RecvBuffer and SendBuffer size each socket's buffers (default 1 MiB).
	RecvBuffer, SendBuffer int
	// GRO reads replies with UDP_GRO, as a bulk client (a QUIC stack)
	// does: a GSO run sent to the socket arrives as one message, which the
	// generator splits into its segments. Without it the kernel segments
	// every run before the socket, and the client pays per datagram.
	GRO bool
}

// Stats are one phase's counters. Datagrams are attributed to the phase
// they were sent in, so a reply that comes back after the phase changed
// still counts where it belongs.
type Stats struct {
	Sent       uint64 // requests handed to the kernel
	SendErrors uint64 // sends refused (ECONNREFUSED from an earlier ICMP error, or a full buffer)
	Received   uint64 // reply datagrams matched to a request of this phase
	Completed  uint64 // requests whose last reply datagram arrived (= Received with one reply each)
	Late       uint64 // closed loop: replies that came after their request timed out
	Bytes      uint64 // payload bytes received
	PerRequest uint64 // reply datagrams expected per request (Config.ReplyDatagrams)
	RTT        Hist   // round-trip times of the Received replies
	Raw        []time.Duration
}

// Attempted returns Sent + SendErrors.
func (s *Stats) Attempted() uint64 { return s.Sent + s.SendErrors }

// Loss returns the share of expected reply datagrams that did not come,
// in [0, 1]; 0 when nothing was attempted.
func (s *Stats) Loss() float64 {
	a := s.Attempted() * max(s.PerRequest, 1)
	if a == 0 {
		return 0
	}
	return 1 - float64(min(s.Received, a))/float64(a)
}

// dnsRing is the number of DNS requests per socket the open loop can
// match replies to; older ones count as lost.
const dnsRing = 4096

// dnsSlot records one open-loop DNS request in flight: meta is
// 1<<31 | phase<<16 | ID, or 0 when free or answered.
type dnsSlot struct {
	sent atomic.Int64
	meta atomic.Uint32
}

// Generator is a batched UDP load generator; see the package comment.
// Use it once: New, Start, SetPhase as needed, Stop, then Stats and Close.
type Generator struct {
	cfg     Config
	sizes   []int // datagram sizes in turn (opaque mode)
	queries [][]byte
	maxLen  int // longest request
	replyR  int // ReplyDatagrams
	fds     []int
	epfd    int
	epoch   time.Time

	phase    atomic.Uint32
	stopping atomic.Bool
	wg       sync.WaitGroup
	started  bool
	drain    time.Duration

	// Counters written by the sender (sent, sendErr) and the receiver
	// (the rest), read with atomics while running.
	sent, sendErr [MaxPhases]atomic.Uint64
	recv, late    [MaxPhases]atomic.Uint64
	done          [MaxPhases]atomic.Uint64
	bytes         [MaxPhases]atomic.Uint64
	seg           batchio.Message // one segment of a GRO run, for the receiving goroutine
	invalid       atomic.Uint64   // replies without our header or of the wrong size
	refused       atomic.Uint64   // ECONNREFUSED seen on receive
	hist          [MaxPhases]Hist
	raw           [MaxPhases][]time.Duration

	// Closed loop state, owned by the receiver goroutine.
	outSeq  []uint64 // sequence number in flight per socket, 0 when none
	outAt   []int64  // its send time, ns since epoch
	outPh   []uint8
	nextSeq uint64

	// Open loop DNS state: per socket, the next ID (owned by the sender)
	// and the ring of requests in flight.
	dnsNext []uint16
	dnsOut  []dnsSlot
}

// LoopbackSources returns n distinct addresses in 127.0.0.0/8, starting
// at 127.0.0.1 and avoiding .0 and .255 in the last byte. Every one of
// them is local on Linux without configuration.
func LoopbackSources(n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		k := i / 254
		out[i] = netip.AddrFrom4([4]byte{127, byte(k >> 8), byte(k), byte(1 + i%254)})
	}
	return out
}

// New opens cfg.Conns client sockets connected to cfg.Target.
func New(cfg Config) (*Generator, error) {
	if cfg.Conns <= 0 {
		cfg.Conns = 64
	}
	if cfg.Size == 0 {
		cfg.Size = 64
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
	if cfg.ReplyDatagrams <= 0 {
		cfg.ReplyDatagrams = 1
	}
	if cfg.Churn && cfg.Rate > 0 {
		return nil, errors.New("loadgen: churn needs the closed loop")
	}
	if cfg.RequestDatagrams <= 0 {
		cfg.RequestDatagrams = 1
	}
	if r := cfg.RequestDatagrams; r > 1 && (cfg.Rate > 0 || len(cfg.DNS) > 0 || len(cfg.Sizes) > 0 ||
		r > batchio.MaxGSOSegments || r*cfg.Size > 65507) {
		return nil, fmt.Errorf("loadgen: request runs of %d × %d bytes need the closed loop, one size and the GSO limits", r, cfg.Size)
	}
	g := &Generator{cfg: cfg, epfd: -1, replyR: cfg.ReplyDatagrams}
	if len(cfg.DNS) > 0 {
		if cfg.ReplyDatagrams != 1 {
			return nil, errors.New("loadgen: DNS mode expects one reply per query")
		}
		for _, q := range cfg.DNS {
			b, err := EncodeQuery(nil, 0, q)
			if err != nil {
				return nil, fmt.Errorf("loadgen: %w", err)
			}
			g.queries = append(g.queries, b)
			g.maxLen = max(g.maxLen, len(b))
		}
	} else {
		g.sizes = cfg.Sizes
		if len(g.sizes) == 0 {
			g.sizes = []int{cfg.Size}
		}
		for _, s := range g.sizes {
			if s < HeaderLen || s > 65507 {
				return nil, fmt.Errorf("loadgen: size %d is outside [%d, 65507]", s, HeaderLen)
			}
			g.maxLen = max(g.maxLen, s)
		}
	}
	var err error
	if g.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("loadgen: epoll_create1: %w", err)
	}
	g.fds = make([]int, cfg.Conns)
	for i := range g.fds {
		g.fds[i] = -1
	}
	for i := range cfg.Conns {
		if err := g.open(i); err != nil {
			g.Close()
			return nil, err
		}
	}
	g.outSeq = make([]uint64, cfg.Conns)
	g.outAt = make([]int64, cfg.Conns)
	g.outPh = make([]uint8, cfg.Conns)
	if len(g.queries) > 0 && cfg.Rate > 0 {
		g.dnsNext = make([]uint16, cfg.Conns)
		g.dnsOut = make([]dnsSlot, cfg.Conns*dnsRing)
	}
	if cfg.RawSamples > 0 {
		for p := range g.raw {
			g.raw[p] = make([]time.Duration, 0, cfg.RawSamples)
		}
	}
	return g, nil
}

// open opens (or reopens) socket i and adds it to the epoll set.
func (g *Generator) open(i int) error {
	if g.fds[i] >= 0 {
		unix.Close(g.fds[i]) // also leaves the epoll set
		g.fds[i] = -1
	}
	var local netip.AddrPort
	if n := len(g.cfg.Sources); n > 0 {
		local = netip.AddrPortFrom(g.cfg.Sources[i%n], 0)
	}
	fd, err := batchio.DialUpstream(local, g.cfg.Target,
		batchio.DialOptions{RecvBuffer: g.cfg.RecvBuffer, SendBuffer: g.cfg.SendBuffer, GRO: g.cfg.GRO})
	if err != nil {
		return fmt.Errorf("loadgen: socket %d: %w", i, err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(i)}
	if err := unix.EpollCtl(g.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		return fmt.Errorf("loadgen: epoll_ctl: %w", err)
	}
	g.fds[i] = fd
	return nil
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
	if !g.started || g.stopping.Load() {
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
		Received: g.recv[p].Load(), Completed: g.done[p].Load(), Late: g.late[p].Load(),
		Bytes: g.bytes[p].Load(), PerRequest: uint64(g.replyR),
	}
	if g.stopping.Load() {
		s.RTT = g.hist[p]
		s.Raw = g.raw[p]
	}
	return s
}

// Invalid returns the number of replies that were not a whole generator
// datagram of the expected size, sent from the socket they came back to,
// or (DNS mode) not a response to a query in flight.
func (g *Generator) Invalid() uint64 { return g.invalid.Load() }

// Refused returns the number of ECONNREFUSED errors seen on receive: the
// target's port was closed.
func (g *Generator) Refused() uint64 { return g.refused.Load() }

// Close closes the sockets. Call Stop first if Start was called.
func (g *Generator) Close() error {
	for _, fd := range g.fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	g.fds = nil
	if g.epfd >= 0 {
		unix.Close(g.epfd)
		g.epfd = -1
	}
	return nil
}

func (g *Generator) now() int64 { return int64(time.Since(g.epoch)) }

// record counts one matched reply datagram of phase p.
func (g *Generator) record(p uint8, rtt int64) {
	g.hist[p].Record(time.Duration(rtt))
	if len(g.raw[p]) < cap(g.raw[p]) {
		g.raw[p] = append(g.raw[p], time.Duration(rtt))
	}
}

// fill writes request number seq, for socket c, into buf and returns it
// sliced to the request's length. In DNS mode the ID is id.
func (g *Generator) fill(buf []byte, seq uint64, c int, p int, sentNs int64, id uint16) []byte {
	if g.queries != nil {
		q := g.queries[seq%uint64(len(g.queries))]
		n := copy(buf, q)
		setDNSID(buf, id)
		return buf[:n]
	}
	size := g.sizes[seq%uint64(len(g.sizes))]
	h := Header{Phase: uint8(p), Conn: uint32(c), Len: uint32(size), Seq: seq, SentNs: sentNs}
	h.Put(buf)
	return buf[:size]
}

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

// scheduledAt returns when request k (from 1) is planned to leave: it is
// due at k/Rate, and the sender plans to send what is due at each tick
// boundary, so the first multiple of tick at or after the due time.
func scheduledAt(k uint64, nsPer float64, tick int64) int64 {
	due := int64(float64(k) * nsPer)
	return (due + tick - 1) / tick * tick
}

// openSender sends on schedule: by time t, Rate*t requests in all, sent
// at tick boundaries. Each request carries the boundary it was planned
// for (see scheduledAt), not the time it left, so if the sender falls
// behind (descheduled, or a full socket buffer) the delay counts in the
// round trip; it then sends the backlog without sleeping, up to one batch
// per socket per round.
//
// It sleeps with nanosleep on a locked thread, which keeps the tick close
// to Config.Tick (Go's timers round short sleeps up to a millisecond).
func (g *Generator) openSender() {
	defer g.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b := batchio.NewBatch(g.cfg.Batch)
	per := b.Size() // most datagrams per socket per round
	msgs := make([]batchio.Message, per)
	bufs := make([][]byte, per)
	for i := range msgs {
		bufs[i] = make([]byte, g.maxLen)
	}
	conns := len(g.fds)
	maxDue := uint64(conns * per)
	nsPer := 1e9 / g.cfg.Rate
	var total uint64 // requests scheduled and handled so far (sent or failed)
	cursor := 0
	tick := int64(g.cfg.Tick)
	next := tick // the next boundary, ns since the epoch
	for !g.stopping.Load() {
		now := g.now()
		var due uint64
		if target := uint64(g.cfg.Rate * float64(now) / 1e9); target > total {
			due = min(target-total, maxDue)
		}
		p := int(g.phase.Load())
		base, extra := int(due)/conns, int(due)%conns
		k := total // the request number being filled
		for j := range conns {
			n := base
			if j < extra {
				n++
			}
			if n == 0 {
				break
			}
			c := (cursor + j) % conns
			for i := range n {
				k++
				sentNs := scheduledAt(k, nsPer, tick)
				g.nextSeq++
				var id uint16
				if g.dnsOut != nil {
					id = g.dnsNext[c]
					g.dnsNext[c]++
					s := &g.dnsOut[c*dnsRing+int(id)%dnsRing]
					s.sent.Store(sentNs)
					s.meta.Store(1<<31 | uint32(p)<<16 | uint32(id))
				}
				msgs[i].Buf = g.fill(bufs[i], g.nextSeq, c, p, sentNs, id)
			}
			g.sendOn(b, c, msgs[:n], p)
		}
		cursor = (cursor + extra) % conns
		total += due
		// Sleep to the next tick unless behind schedule.
		if uint64(g.cfg.Rate*float64(g.now())/1e9) > total {
			continue // backlog: send it now
		}
		now = g.now()
		if next <= now {
			next = (now/tick + 1) * tick // late: the next boundary from now
		}
		ts := unix.NsecToTimespec(next - now)
		_ = unix.Nanosleep(&ts, nil)
		next += tick
	}
}

// recvAll drains socket c and calls f for each reply.
func (g *Generator) recvAll(b *batchio.Batch, rx []batchio.Message, c int, f func(c int, m *batchio.Message, at int64)) {
	fd := g.fds[c]
	seg := &g.seg
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
			if m.Flags != 0 {
				g.invalid.Add(1)
				continue
			}
			if ss := m.SegmentSize; ss > 0 && m.N > ss {
				for off := 0; off < m.N; off += ss {
					end := min(off+ss, m.N)
					seg.Buf, seg.N = m.Buf[off:end], end-off
					f(c, seg, at)
				}
				continue
			}
			f(c, m, at)
		}
		if got < len(rx) {
			return
		}
	}
}

// parseReply checks an opaque reply on socket c and returns its header.
func (g *Generator) parseReply(c int, m *batchio.Message) (Header, bool) {
	h, err := ParseHeader(m.Buf[:m.N])
	if err != nil || int(h.Conn) != c || int(h.Len) != m.N || int(h.Seg) >= g.replyR {
		g.invalid.Add(1)
		return h, false
	}
	return h, true
}

func (g *Generator) rxBuffers(b *batchio.Batch) []batchio.Message {
	rx := make([]batchio.Message, b.Size())
	size := 2048
	if g.cfg.GRO {
		size = batchio.GROBufferSize
	}
	for i := range rx {
		rx[i].Buf = make([]byte, size)
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
	var recv, done, nbytes [MaxPhases]uint64
	last := uint16(g.replyR - 1)
	onReply := func(c int, m *batchio.Message, at int64) {
		var p uint8
		var sent int64
		if g.dnsOut != nil {
			id, ok := dnsID(m.Buf[:m.N])
			s := &g.dnsOut[c*dnsRing+int(id)%dnsRing]
			meta := s.meta.Load()
			if !ok || meta>>31 == 0 || uint16(meta) != id {
				g.invalid.Add(1)
				return
			}
			sent = s.sent.Load()
			if !s.meta.CompareAndSwap(meta, 0) {
				g.invalid.Add(1)
				return
			}
			p = uint8(meta >> 16 & 0x7f)
			done[p]++
		} else {
			h, ok := g.parseReply(c, m)
			if !ok {
				return
			}
			p, sent = h.Phase, h.SentNs
			if h.Seg == last {
				done[p]++
			}
		}
		recv[p]++
		nbytes[p] += uint64(m.N)
		g.record(p, at-sent)
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
				g.done[p].Add(done[p])
				g.bytes[p].Add(nbytes[p])
				recv[p], done[p], nbytes[p] = 0, 0, 0
			}
		}
	}
}

// allAnswered reports whether every request sent has been answered.
func (g *Generator) allAnswered() bool {
	for p := range MaxPhases {
		if g.done[p].Load()+g.late[p].Load() < g.sent[p].Load() {
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
	tx := []batchio.Message{{}}
	buf := make([]byte, g.maxLen*g.cfg.RequestDatagrams)
	events := make([]unix.EpollEvent, len(g.fds))
	timeout := int64(g.cfg.Timeout)
	stopping := false
	var drainEnd int64
	last := uint16(g.replyR - 1)

	send := func(c int) {
		if g.cfg.Churn && g.outAt[c] != 0 {
			if err := g.open(c); err != nil {
				// Out of sockets or ports: count a failed send and retry
				// after the timeout.
				p := int(g.phase.Load())
				g.sendErr[p].Add(1)
				g.outSeq[c], g.outAt[c], g.outPh[c] = 0, g.now(), uint8(p)
				return
			}
		}
		p := int(g.phase.Load())
		g.nextSeq++
		now := g.now()
		tx[0].Buf = g.fill(buf, g.nextSeq, c, p, now, uint16(g.nextSeq))
		if r := g.cfg.RequestDatagrams; r > 1 {
			// An upload: r datagrams of Size bytes, one GSO send.
			size := len(tx[0].Buf)
			for seg := 1; seg < r; seg++ {
				h := Header{Phase: uint8(p), Seg: uint16(seg), Conn: uint32(c), Len: uint32(size), Seq: g.nextSeq, SentNs: now}
				h.Put(buf[seg*size:])
			}
			tx[0].Buf, tx[0].SegmentSize = buf[:r*size], size
		}
		before := g.sendErr[p].Load()
		g.sendOn(b, c, tx, p)
		if g.sendErr[p].Load() != before {
			// Not sent: retry after the timeout like a lost request, but
			// do not count it as lost twice.
			g.outSeq[c], g.outAt[c], g.outPh[c] = 0, now, uint8(p)
			return
		}
		g.outSeq[c], g.outAt[c], g.outPh[c] = g.nextSeq, now, uint8(p)
	}
	complete := func(c int, p uint8, n int, rtt int64, last bool) {
		g.recv[p].Add(1)
		g.bytes[p].Add(uint64(n))
		g.record(p, rtt)
		if !last {
			return
		}
		g.done[p].Add(1)
		g.outSeq[c] = 0
		if !stopping {
			send(c)
		}
	}
	onReply := func(c int, m *batchio.Message, at int64) {
		if g.queries != nil {
			id, ok := dnsID(m.Buf[:m.N])
			if !ok {
				g.invalid.Add(1)
				return
			}
			if g.outSeq[c] == 0 || id != uint16(g.outSeq[c]) {
				g.late[g.outPh[c]].Add(1)
				return
			}
			complete(c, g.outPh[c], m.N, at-g.outAt[c], true)
			return
		}
		h, ok := g.parseReply(c, m)
		if !ok {
			return
		}
		if h.Seq != g.outSeq[c] {
			g.late[h.Phase].Add(1)
			return
		}
		complete(c, h.Phase, m.N, at-h.SentNs, h.Seg == last)
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
