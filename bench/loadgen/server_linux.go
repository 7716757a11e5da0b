package loadgen

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/fastudp/fastudp/batchio"
	"golang.org/x/sys/unix"
)

// server is the loop shared by the DNS responder and the bulk blaster: one
// socket, one goroutine locked to an OS thread, a batch received, turned
// into replies by handle, and sent with one sendmmsg.
type server struct {
	fd    int
	addr  netip.AddrPort
	batch *batchio.Batch
	rx    []batchio.Message

	stop atomic.Bool
	done chan struct{}
	once sync.Once
}

func newServer(addr netip.AddrPort, batch, rxLen int, gro bool) (*server, error) {
	if !addr.IsValid() {
		addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0)
	}
	fd, err := batchio.ListenUDP(addr, batchio.ListenOptions{RecvBuffer: 4 << 20, SendBuffer: 4 << 20, SpecificPacketInfoOff: true, GRO: gro})
	if err != nil {
		return nil, err
	}
	la, err := batchio.LocalAddr(fd)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	b := batchio.NewBatch(batch)
	s := &server{fd: fd, addr: la, batch: b, rx: make([]batchio.Message, b.Size()), done: make(chan struct{})}
	for i := range s.rx {
		s.rx[i].Buf = make([]byte, rxLen)
	}
	return s, nil
}

// run calls handle for every received batch and send with what it
// returns, until close.
func (s *server) run(handle func(rx []batchio.Message) []batchio.Message, send func([]batchio.Message)) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(s.done)
	pfd := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}}
	for !s.stop.Load() {
		n, err := unix.Poll(pfd, pollTimeoutMs)
		if n == 0 || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		for !s.stop.Load() {
			got, err := s.batch.Recv(s.fd, s.rx)
			if err != nil {
				if batchio.Classify(err) == batchio.KindWouldBlock {
					break
				}
				continue
			}
			send(handle(s.rx[:got]))
			if got < len(s.rx) {
				break
			}
		}
	}
}

// send sends msgs, skipping any message the kernel refuses, and returns how
// many left. A full send buffer drops the rest of the batch.
func (s *server) send(msgs []batchio.Message) int { return sendSkipping(s.batch, s.fd, msgs) }

func (s *server) close() {
	s.once.Do(func() {
		s.stop.Store(true)
		<-s.done
		unix.Close(s.fd)
	})
}

// DNSConfig configures [StartDNS].
type DNSConfig struct {
	// Addr is the address to listen on; the zero value means 127.0.0.1:0.
	Addr netip.AddrPort
	// Answer is the address every A query is answered with (default
	// 192.0.2.1).
	Answer [4]byte
	// Batch is the recvmmsg/sendmmsg batch size (0: batchio's default).
	Batch int
}

// DNSStats are a DNS responder's counters.
type DNSStats struct {
	Received uint64 // datagrams read
	Answered uint64 // responses sent
	Invalid  uint64 // not a standard query with one question: no answer
}

// DNSServer is a minimal authoritative DNS responder for benchmarks: it
// answers every A query, whatever the name, with one fixed record, and
// any other query type with an empty NOERROR answer. It allocates nothing
// per query.
type DNSServer struct {
	s                           *server
	received, answered, invalid atomic.Uint64
}

// StartDNS opens the socket and starts the responder.
func StartDNS(cfg DNSConfig) (*DNSServer, error) {
	if cfg.Answer == ([4]byte{}) {
		cfg.Answer = [4]byte{192, 0, 2, 1}
	}
	s, err := newServer(cfg.Addr, cfg.Batch, 4096, false)
	if err != nil {
		return nil, fmt.Errorf("dns responder: %w", err)
	}
	d := &DNSServer{s: s}
	tx := make([]batchio.Message, len(s.rx))
	bufs := make([][]byte, len(s.rx))
	for i := range bufs {
		bufs[i] = make([]byte, 600)
	}
	answer := cfg.Answer
	handle := func(rx []batchio.Message) []batchio.Message {
		out := tx[:0]
		for i := range rx {
			m := &rx[i]
			n := 0
			if m.Flags == 0 {
				n = answerQuery(bufs[i], m.Buf[:m.N], answer)
			}
			if n == 0 {
				d.invalid.Add(1)
				continue
			}
			out = append(out, batchio.Message{Buf: bufs[i][:n], Addr: m.Addr})
		}
		d.received.Add(uint64(len(rx)))
		return out
	}
	go s.run(handle, func(msgs []batchio.Message) { d.answered.Add(uint64(s.send(msgs))) })
	return d, nil
}

// Addr returns the address the responder listens on.
func (d *DNSServer) Addr() netip.AddrPort { return d.s.addr }

// Stats returns the counters so far.
func (d *DNSServer) Stats() DNSStats {
	return DNSStats{Received: d.received.Load(), Answered: d.answered.Load(), Invalid: d.invalid.Load()}
}

// Close stops the responder and closes its socket.
func (d *DNSServer) Close() error { d.s.close(); return nil }

// BlasterConfig configures [StartBlaster].
type BlasterConfig struct {
	// Addr is the address to listen on; the zero value means 127.0.0.1:0.
	Addr netip.AddrPort
	// Run is the number of datagrams each request is answered with
	// (default 32, at most batchio.MaxGSOSegments).
	Run int
	// SegmentSize is the size of each of them (default 1200, at least
	// HeaderLen).
	SegmentSize int
	// NoGSO sends each run as separate datagrams in one sendmmsg instead
	// of one UDP GSO send.
	NoGSO bool
	// Batch is the recvmmsg/sendmmsg batch size (0: batchio's default).
	Batch int
	// Upload > 0 turns the blaster into an upload sink: it reads with
	// UDP_GRO, takes requests that are runs of Upload datagrams (the
	// generator's RequestDatagrams) and answers only the last one (segment
	// Upload-1) with one datagram: its generator header (Run and
	// SegmentSize then do not apply).
	Upload int
}

// BlasterStats are a blaster's counters.
type BlasterStats struct {
	Requests  uint64 // generator requests answered with a run
	Datagrams uint64 // datagrams sent (segments of the runs, and echoed probes)
	Foreign   uint64 // datagrams without a generator header: echoed unchanged
	PerPhase  [MaxPhases]uint64
	GSO       bool // runs go out as one GSO send each
}

// Blaster is the bulk backend: it answers each generator request with a
// run of Run datagrams of SegmentSize bytes, each carrying the request's
// header with its segment index, sent as one UDP GSO message
// (batchio.Message.SegmentSize) when the kernel takes it, so the run
// crosses the stack as one large skb until it is segmented. Datagrams
// without a generator header (readiness probes) are echoed unchanged. A
// PROXY protocol v2 header in front of a datagram is skipped (and not
// echoed), so the blaster can stand behind a proxy sending them.
type Blaster struct {
	s         *server
	run, size int
	gso       atomic.Bool

	requests, datagrams, foreign atomic.Uint64
	perPhase                     [MaxPhases]atomic.Uint64
}

// StartBlaster opens the socket and starts the blaster.
func StartBlaster(cfg BlasterConfig) (*Blaster, error) {
	if cfg.Run <= 0 {
		cfg.Run = 32
	}
	if cfg.SegmentSize == 0 {
		cfg.SegmentSize = 1200
	}
	if cfg.Run > batchio.MaxGSOSegments || cfg.SegmentSize < HeaderLen || cfg.Run*cfg.SegmentSize > 65507 {
		return nil, fmt.Errorf("blaster: run of %d × %d bytes is outside the GSO limits", cfg.Run, cfg.SegmentSize)
	}
	if cfg.Upload > 0 {
		return startUploadSink(cfg)
	}
	s, err := newServer(cfg.Addr, cfg.Batch, 2048, false)
	if err != nil {
		return nil, fmt.Errorf("blaster: %w", err)
	}
	bl := &Blaster{s: s, run: cfg.Run, size: cfg.SegmentSize}
	bl.gso.Store(!cfg.NoGSO)
	runs := make([][]byte, len(s.rx))
	for i := range runs {
		runs[i] = make([]byte, cfg.Run*cfg.SegmentSize)
	}
	tx := make([]batchio.Message, len(s.rx)*cfg.Run)
	var phase [MaxPhases]uint64
	handle := func(rx []batchio.Message) []batchio.Message {
		out := tx[:0]
		gso := bl.gso.Load()
		var reqs, foreign uint64
		for i := range rx {
			m := &rx[i]
			if m.Flags != 0 {
				continue
			}
			data := StripProxy(m.Buf[:m.N])
			h, err := ParseHeader(data)
			if err != nil {
				foreign++
				out = append(out, batchio.Message{Buf: data, Addr: m.Addr})
				continue
			}
			reqs++
			phase[h.Phase]++
			run := runs[i]
			h.Len = uint32(bl.size)
			for seg := range bl.run {
				h.Seg = uint16(seg)
				h.Put(run[seg*bl.size:])
			}
			if gso {
				out = append(out, batchio.Message{Buf: run, Addr: m.Addr, SegmentSize: bl.size})
				continue
			}
			for seg := range bl.run {
				out = append(out, batchio.Message{Buf: run[seg*bl.size : (seg+1)*bl.size], Addr: m.Addr})
			}
		}
		bl.requests.Add(reqs)
		bl.foreign.Add(foreign)
		for p, c := range phase {
			if c != 0 {
				bl.perPhase[p].Add(c)
				phase[p] = 0
			}
		}
		return out
	}
	split := make([]batchio.Message, cfg.Run)
	send := func(msgs []batchio.Message) {
		for len(msgs) > 0 {
			k, err := s.batch.Send(s.fd, msgs)
			for _, m := range msgs[:k] {
				bl.datagrams.Add(uint64(segments(&m)))
			}
			if err == nil {
				return
			}
			if c := batchio.Classify(err); c == batchio.KindWouldBlock || c == batchio.KindClosed {
				return
			}
			if m := msgs[k]; m.SegmentSize > 0 && batchio.IsGSOError(err) {
				// The kernel or device refuses GSO: send runs as plain
				// datagrams from now on, this one too.
				bl.gso.Store(false)
				for seg := range split {
					split[seg] = batchio.Message{Buf: m.Buf[seg*bl.size : (seg+1)*bl.size], Addr: m.Addr}
				}
				bl.datagrams.Add(uint64(s.send(split)))
			}
			msgs = msgs[k+1:]
		}
	}
	go s.run(handle, send)
	return bl, nil
}

// startUploadSink starts a blaster in upload mode (cfg.Upload > 0).
func startUploadSink(cfg BlasterConfig) (*Blaster, error) {
	batch := cfg.Batch
	if batch <= 0 {
		batch = 16 // 64 KiB GRO buffers
	}
	s, err := newServer(cfg.Addr, batch, batchio.GROBufferSize, true)
	if err != nil {
		return nil, fmt.Errorf("blaster: %w", err)
	}
	bl := &Blaster{s: s, run: 1, size: HeaderLen}
	acks := make([]byte, len(s.rx)*batchio.MaxGSOSegments*HeaderLen)
	tx := make([]batchio.Message, 0, len(s.rx)*batchio.MaxGSOSegments)
	last := uint16(cfg.Upload - 1)
	handle := func(rx []batchio.Message) []batchio.Message {
		out := tx[:0]
		var reqs, foreign uint64
		for i := range rx {
			m := &rx[i]
			if m.Flags != 0 {
				continue
			}
			run, seg := m.Buf[:m.N], m.SegmentSize
			if seg <= 0 || seg > len(run) {
				seg = len(run)
			}
			for off := 0; off < len(run); off += seg {
				data := StripProxy(run[off:min(off+seg, len(run))])
				h, err := ParseHeader(data)
				if err != nil {
					foreign++
					if len(out) < cap(out) {
						out = append(out, batchio.Message{Buf: data, Addr: m.Addr})
					}
					continue
				}
				if h.Seg != last || len(out) == cap(out) {
					continue
				}
				reqs++
				bl.perPhase[h.Phase].Add(1)
				ack := acks[len(out)*HeaderLen : (len(out)+1)*HeaderLen]
				h.Seg, h.Len = 0, HeaderLen
				h.Put(ack)
				out = append(out, batchio.Message{Buf: ack, Addr: m.Addr})
			}
		}
		bl.requests.Add(reqs)
		bl.foreign.Add(foreign)
		return out
	}
	send := func(msgs []batchio.Message) { bl.datagrams.Add(uint64(s.send(msgs))) }
	go s.run(handle, send)
	return bl, nil
}

// segments returns the number of datagrams m goes out as.
func segments(m *batchio.Message) int {
	if m.SegmentSize == 0 {
		return 1
	}
	return (len(m.Buf) + m.SegmentSize - 1) / m.SegmentSize
}

// Addr returns the address the blaster listens on.
func (bl *Blaster) Addr() netip.AddrPort { return bl.s.addr }

// Stats returns the counters so far.
func (bl *Blaster) Stats() BlasterStats {
	st := BlasterStats{Requests: bl.requests.Load(), Datagrams: bl.datagrams.Load(), Foreign: bl.foreign.Load(), GSO: bl.gso.Load()}
	for i := range st.PerPhase {
		st.PerPhase[i] = bl.perPhase[i].Load()
	}
	return st
}

// Close stops the blaster and closes its socket.
func (bl *Blaster) Close() error { bl.s.close(); return nil }
