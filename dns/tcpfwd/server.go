package tcpfwd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Picker chooses the backend for a new connection from client (an IPv4
// client of an IPv6 listener is given unmapped). ok=false refuses the
// connection: it is closed at once and counted in [Stats].Refused. A Picker
// is called from many goroutines at once.
type Picker func(client netip.AddrPort) (backend netip.AddrPort, ok bool)

// Options tunes a [Server]. The zero value gives the defaults.
type Options struct {
	// IdleTimeout closes a connection when no complete message has passed
	// in either direction for this long (default 10s).
	IdleTimeout time.Duration
	// DialTimeout bounds the backend dial (default 2s).
	DialTimeout time.Duration
	// MaxConns bounds concurrent client connections; beyond it new ones are
	// closed at once and counted in [Stats].Refused (default 1024).
	MaxConns int
	// Logger receives anomalies: failed dials (at most once per backend per
	// minute) and accept errors. Nil discards them.
	Logger *slog.Logger
}

// Defaults for the zero [Options].
const (
	DefaultIdleTimeout = 10 * time.Second
	DefaultDialTimeout = 2 * time.Second
	DefaultMaxConns    = 1024
)

// logEvery is the least time between two log lines about one backend.
const logEvery = time.Minute

// acceptLogKey is the log limiter's key for accept errors; no backend has
// the zero address.
var acceptLogKey netip.AddrPort

// ErrServing is returned by a second call of [Server.Serve].
var ErrServing = errors.New("tcpfwd: already serving")

// Server accepts DNS-over-TCP connections on one address and relays each to
// the backend its [Picker] chooses. Its methods may be called from any
// goroutine.
type Server struct {
	ln     *net.TCPListener
	addr   netip.AddrPort
	pick   Picker
	opts   Options
	log    *slog.Logger
	dialer net.Dialer
	epoch  time.Time // the zero of clock()

	// ctx is cancelled by Close, aborting dials in flight.
	ctx    context.Context
	cancel context.CancelFunc

	bufs    sync.Pool // *[frameBufSize]byte, one per relay direction
	stats   counters
	dialLog *logLimiter

	// wg counts Serve and every connection goroutine. Add is only called
	// under mu while !mu.stopped, so it never races with Close's Wait.
	wg sync.WaitGroup

	mu struct {
		sync.Mutex
		stopped bool // no more connections: Shutdown or Close began
		serving bool
		conns   map[*proxyConn]struct{}
	}
}

// Listen binds a TCP listener on addr (tcp4 for an IPv4 address, tcp6 with
// IPV6_V6ONLY for an IPv6 one, as the UDP listener beside it; SO_REUSEADDR is
// set, as Go does for every listener) and returns a [Server] that does not
// accept until [Server.Serve] is called. Port 0 picks a free port; see
// [Server.Addr].
func Listen(addr netip.AddrPort, pick Picker, o Options) (*Server, error) {
	if pick == nil {
		return nil, errors.New("tcpfwd: listen: nil picker")
	}
	if !addr.IsValid() {
		return nil, fmt.Errorf("tcpfwd: listen: invalid address %v", addr)
	}
	network := "tcp6"
	if addr.Addr().Unmap().Is4() {
		network = "tcp4"
		addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	}
	l, err := net.ListenTCP(network, net.TCPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("tcpfwd: listen %v: %w", addr, err)
	}
	return newServer(l, pick, o), nil
}

// newServer returns a server on the bound listener l, filling in o's
// defaults.
func newServer(l *net.TCPListener, pick Picker, o Options) *Server {
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		ln:      l,
		addr:    l.Addr().(*net.TCPAddr).AddrPort(),
		pick:    pick,
		opts:    o,
		log:     log.With("component", "tcpfwd", "listen", l.Addr().String()),
		dialer:  net.Dialer{Timeout: o.DialTimeout},
		epoch:   time.Now(),
		ctx:     ctx,
		cancel:  cancel,
		dialLog: newLogLimiter(logEvery),
	}
	s.bufs.New = func() any { return new([frameBufSize]byte) }
	s.mu.conns = make(map[*proxyConn]struct{})
	return s
}

// Addr returns the address the server is bound to, with the actual port if
// Listen was given port 0.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Stats returns a snapshot of the server's counters. It is safe to call at
// any time, also after Close.
func (s *Server) Stats() Stats { return s.stats.snapshot() }

// clock returns monotonic nanoseconds since Listen.
func (s *Server) clock() int64 { return int64(time.Since(s.epoch)) }

// Serve accepts connections until [Server.Close] or [Server.Shutdown] and
// then returns nil; it returns nil at once if either was already called, and
// ErrServing if Serve is already running. Accept errors other than the
// listener's closing (such as EMFILE) are logged and retried with back-off.
func (s *Server) Serve() error {
	s.mu.Lock()
	if s.mu.stopped {
		s.mu.Unlock()
		return nil
	}
	if s.mu.serving {
		s.mu.Unlock()
		return ErrServing
	}
	s.mu.serving = true
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	var backoff time.Duration
	for {
		c, err := s.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of descriptors or memory: wait for some to be freed,
			// as net/http does, rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if s.dialLog.allow(acceptLogKey, time.Now()) {
				s.log.Warn("accept failed; retrying", "err", err, "backoff", backoff)
			}
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return nil
			}
			continue
		}
		backoff = 0
		s.admit(c)
	}
}

// admit counts c and starts its goroutine, or closes it at once if the
// server is stopping or full.
func (s *Server) admit(c *net.TCPConn) {
	s.stats.accepted.Add(1)
	s.mu.Lock()
	if s.mu.stopped {
		s.mu.Unlock()
		_ = c.Close() // accepted as the listener was closing
		return
	}
	if len(s.mu.conns) >= s.opts.MaxConns {
		s.mu.Unlock()
		s.stats.refused.Add(1)
		_ = c.Close()
		return
	}
	p := &proxyConn{s: s, client: c}
	s.mu.conns[p] = struct{}{}
	s.stats.active.Add(1)
	s.wg.Add(1)
	s.mu.Unlock()
	go s.connLoop(p)
}

// forget removes p from the live set once its goroutines are done.
func (s *Server) forget(p *proxyConn) {
	s.mu.Lock()
	delete(s.mu.conns, p)
	s.mu.Unlock()
	s.stats.active.Add(-1)
}

// stopAccepting marks the server stopped and closes the listener; it
// reports whether this call did so.
func (s *Server) stopAccepting() (first bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.stopped {
		return false, nil
	}
	s.mu.stopped = true
	if err := s.ln.Close(); err != nil {
		return true, fmt.Errorf("tcpfwd: close listener: %w", err)
	}
	return true, nil
}

// Close stops accepting, closes every connection (aborting dials in flight)
// and waits for Serve and every connection goroutine to return. Calling it
// again, or after Shutdown, does no harm and returns nil.
func (s *Server) Close() error {
	_, err := s.stopAccepting()
	s.mu.Lock()
	conns := make([]*proxyConn, 0, len(s.mu.conns))
	for p := range s.mu.conns {
		conns = append(conns, p)
	}
	s.mu.Unlock()
	s.cancel()
	for _, p := range conns {
		p.abort()
	}
	s.wg.Wait()
	return err
}

// Shutdown stops accepting and waits for the live connections to end by
// themselves (both sides closed, or idle timeout) until ctx is done, then
// calls Close. It returns ctx's error, wrapped, if connections were still
// live when ctx ended.
func (s *Server) Shutdown(ctx context.Context) error {
	_, err := s.stopAccepting()
	// Poll, as net/http's Shutdown does: the live count only falls, and a
	// few milliseconds of lag do not matter when draining.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for s.stats.active.Load() > 0 {
		select {
		case <-ctx.Done():
			_ = s.Close() // its only error is the listener's, already in err
			return errors.Join(fmt.Errorf("tcpfwd: shutdown: %w", ctx.Err()), err)
		case <-tick.C:
		}
	}
	return errors.Join(err, s.Close())
}
