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

// SprayConfig configures a [Sprayer].
type SprayConfig struct {
	// Target is where every datagram goes.
	Target netip.AddrPort
	// Sockets is the number of client sockets, each bound to the wildcard
	// address on its own port (default 64).
	Sockets int
	// Sources are the source addresses datagrams are sent from (with
	// IP_PKTINFO), e.g. [LoopbackSources]. Flow f is sent from socket
	// f / len(Sources) and address Sources[f % len(Sources)], so there are
	// Sockets × len(Sources) distinct (address, port) pairs.
	Sources []netip.Addr
	// Flows is the number of distinct flows to cycle through (default and
	// maximum: Sockets × len(Sources)).
	Flows int
	// Rate is the datagrams per second, in total (required). Datagram k
	// goes from flow k % Flows: with Count ≤ Flows every datagram opens
	// a new flow.
	Rate float64
	// Count stops sending after this many datagrams (0: until Stop).
	Count uint64
	// Size is the payload size (default 64, at least HeaderLen).
	Size int
}

// Sprayer sends one datagram at a time from many (address, port) pairs:
// it opens up to hundreds of thousands of flows through a proxy with a few
// dozen sockets. Replies are counted per phase; they are not timed.
type Sprayer struct {
	cfg   SprayConfig
	fds   []int
	epfd  int
	phase atomic.Uint32

	stopping atomic.Bool
	wg       sync.WaitGroup
	sentAll  chan struct{}
	drain    time.Duration

	sent, sendErr, recv [MaxPhases]atomic.Uint64
	invalid             atomic.Uint64
}

// NewSprayer opens the sockets.
func NewSprayer(cfg SprayConfig) (*Sprayer, error) {
	if cfg.Sockets <= 0 {
		cfg.Sockets = 64
	}
	if cfg.Size == 0 {
		cfg.Size = 64
	}
	if cfg.Size < HeaderLen || cfg.Size > 2048 {
		return nil, fmt.Errorf("spray: size %d is outside [%d, 2048]", cfg.Size, HeaderLen)
	}
	if len(cfg.Sources) == 0 || cfg.Rate <= 0 {
		return nil, errors.New("spray: sources and a rate are required")
	}
	if pairs := cfg.Sockets * len(cfg.Sources); cfg.Flows <= 0 || cfg.Flows > pairs {
		cfg.Flows = pairs
	}
	s := &Sprayer{cfg: cfg, epfd: -1, sentAll: make(chan struct{})}
	var err error
	if s.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("spray: epoll_create1: %w", err)
	}
	any := netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	for i := range cfg.Sockets {
		fd, err := batchio.ListenUDP(any, batchio.ListenOptions{RecvBuffer: 1 << 20, SendBuffer: 1 << 20})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("spray: socket %d: %w", i, err)
		}
		s.fds = append(s.fds, fd)
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(i)}
		if err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			s.Close()
			return nil, fmt.Errorf("spray: epoll_ctl: %w", err)
		}
	}
	return s, nil
}

// Flows returns the number of distinct flows in use.
func (s *Sprayer) Flows() int { return s.cfg.Flows }

// SetPhase makes every datagram sent from now on carry phase p.
func (s *Sprayer) SetPhase(p int) { s.phase.Store(uint32(p)) }

// Start starts sending.
func (s *Sprayer) Start() {
	s.wg.Add(2)
	go s.sendLoop()
	go s.recvLoop()
}

// Done is closed once Count datagrams have been sent.
func (s *Sprayer) Done() <-chan struct{} { return s.sentAll }

// Stop stops sending, waits up to drain for replies and returns once the
// goroutines are done.
func (s *Sprayer) Stop(drain time.Duration) {
	if s.stopping.Load() {
		return
	}
	s.drain = drain
	s.stopping.Store(true)
	s.wg.Wait()
}

// SprayStats are one phase's counters.
type SprayStats struct {
	Sent, SendErrors, Received uint64
}

// Stats returns phase p's counters.
func (s *Sprayer) Stats(p int) SprayStats {
	return SprayStats{Sent: s.sent[p].Load(), SendErrors: s.sendErr[p].Load(), Received: s.recv[p].Load()}
}

// Close closes the sockets; call Stop first.
func (s *Sprayer) Close() error {
	for _, fd := range s.fds {
		unix.Close(fd)
	}
	s.fds = nil
	if s.epfd >= 0 {
		unix.Close(s.epfd)
		s.epfd = -1
	}
	return nil
}

func (s *Sprayer) sendLoop() {
	defer s.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b := batchio.NewBatch(0)
	msgs := make([]batchio.Message, b.Size())
	for i := range msgs {
		msgs[i].Buf = make([]byte, s.cfg.Size)
	}
	epoch := time.Now()
	ns := len(s.cfg.Sources)
	var total uint64
	closed := false
	for !s.stopping.Load() {
		now := time.Since(epoch)
		due := uint64(s.cfg.Rate*now.Seconds()) - min(total, uint64(s.cfg.Rate*now.Seconds()))
		if s.cfg.Count > 0 {
			due = min(due, s.cfg.Count-total)
		}
		p := int(s.phase.Load())
		for due > 0 {
			// One sendmmsg per run of flows on the same socket.
			f := int(total % uint64(s.cfg.Flows))
			sock := f / ns
			n := 0
			for n < len(msgs) && uint64(n) < due {
				ff := int((total + uint64(n)) % uint64(s.cfg.Flows))
				if ff/ns != sock {
					break
				}
				h := Header{Phase: uint8(p), Conn: uint32(ff), Len: uint32(s.cfg.Size), Seq: total + uint64(n)}
				h.Put(msgs[n].Buf)
				msgs[n].Addr = s.cfg.Target
				msgs[n].Local = s.cfg.Sources[ff%ns]
				n++
			}
			sent, err := b.Send(s.fds[sock], msgs[:n])
			s.sent[p].Add(uint64(sent))
			if err != nil {
				s.sendErr[p].Add(uint64(n - sent))
			}
			total += uint64(n)
			due -= uint64(n)
		}
		if s.cfg.Count > 0 && total >= s.cfg.Count && !closed {
			close(s.sentAll)
			closed = true
		}
		ts := unix.NsecToTimespec(int64(time.Millisecond))
		_ = unix.Nanosleep(&ts, nil)
	}
	if !closed {
		close(s.sentAll)
	}
}

func (s *Sprayer) recvLoop() {
	defer s.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b := batchio.NewBatch(0)
	rx := make([]batchio.Message, b.Size())
	for i := range rx {
		rx[i].Buf = make([]byte, 2048)
	}
	events := make([]unix.EpollEvent, len(s.fds))
	var drainEnd time.Time
	var recv [MaxPhases]uint64
	for {
		if s.stopping.Load() {
			if drainEnd.IsZero() {
				drainEnd = time.Now().Add(s.drain)
			}
			if time.Now().After(drainEnd) || s.allAnswered() {
				return
			}
		}
		n, err := unix.EpollWait(s.epfd, events, pollTimeoutMs)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		for _, ev := range events[:max(n, 0)] {
			fd := s.fds[ev.Fd]
			for {
				got, err := b.Recv(fd, rx)
				if err != nil {
					break
				}
				for i := range got {
					h, err := ParseHeader(rx[i].Buf[:rx[i].N])
					if err != nil || rx[i].Flags != 0 || int(h.Len) != rx[i].N {
						s.invalid.Add(1)
						continue
					}
					recv[h.Phase]++
				}
				if got < len(rx) {
					break
				}
			}
		}
		for p, c := range recv {
			if c != 0 {
				s.recv[p].Add(c)
				recv[p] = 0
			}
		}
	}
}

func (s *Sprayer) allAnswered() bool {
	for p := range MaxPhases {
		if s.recv[p].Load() < s.sent[p].Load() {
			return false
		}
	}
	return true
}
