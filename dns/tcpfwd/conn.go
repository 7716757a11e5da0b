package tcpfwd

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// proxyConn is one client connection and, once dialled, its backend
// connection.
type proxyConn struct {
	s      *Server
	client *net.TCPConn

	// last is s.clock() at the last complete message in either direction.
	last atomic.Int64

	// mu protects the fields in it; client is set before the conn is shared.
	mu struct {
		sync.Mutex
		aborted bool
		backend *net.TCPConn
		idle    *time.Timer
	}
}

// connLoop serves p: pick, dial, relay, close. It runs in its own goroutine,
// counted in s.wg.
func (s *Server) connLoop(p *proxyConn) {
	defer s.wg.Done()
	defer s.forget(p)

	ap := p.client.RemoteAddr().(*net.TCPAddr).AddrPort()
	client := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	backend, ok := s.pick(client)
	if !ok {
		s.stats.refused.Add(1)
		p.abort()
		return
	}
	c, err := s.dialer.DialContext(s.ctx, "tcp", backend.String())
	if err != nil {
		p.abort()
		if s.ctx.Err() != nil {
			return // Close aborted the dial: not the backend's fault
		}
		s.stats.dialFailures.Add(1)
		if s.dialLog.allow(backend, time.Now()) {
			s.log.Warn("backend dial failed (logged at most once a minute per backend)",
				"backend", backend.String(), "err", err)
		}
		return
	}
	if !p.setBackend(c.(*net.TCPConn)) {
		_ = c.Close() // Close aborted p while it dialled
		return
	}
	p.relay()
}

// setBackend records the dialled backend; it reports false if p was aborted
// meanwhile.
func (p *proxyConn) setBackend(b *net.TCPConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.aborted {
		return false
	}
	p.mu.backend = b
	return true
}

// abort closes both sides and stops the idle timer. It reports whether this
// call did it: the caller that gets true counts the reason, so a connection
// is counted once however many goroutines see it fail.
func (p *proxyConn) abort() bool {
	p.mu.Lock()
	if p.mu.aborted {
		p.mu.Unlock()
		return false
	}
	p.mu.aborted = true
	b, t := p.mu.backend, p.mu.idle
	p.mu.Unlock()
	if t != nil {
		t.Stop()
	}
	_ = p.client.Close() // nothing to do about a failed close
	if b != nil {
		_ = b.Close()
	}
	return true
}

// relay runs both directions until each has ended, then closes both sides.
// The backend → client direction gets its own goroutine; this one does
// client → backend.
func (p *proxyConn) relay() {
	s := p.s
	p.mu.Lock()
	backend := p.mu.backend
	p.last.Store(s.clock())
	p.mu.idle = time.AfterFunc(s.opts.IdleTimeout, p.checkIdle)
	p.mu.Unlock()

	done := make(chan struct{})
	s.wg.Add(1) // s.wg is above zero: this goroutine holds a count
	go func() {
		defer s.wg.Done()
		defer close(done)
		p.pump(backend, p.client, &s.stats.answers)
	}()
	p.pump(p.client, backend, &s.stats.queries)
	<-done
	p.abort()
}

// pump relays whole messages from src to dst until src ends or anything
// fails. A clean end of src shuts dst's write half, so the other direction
// can still deliver what is in flight; anything else closes both sides.
func (p *proxyConn) pump(src, dst *net.TCPConn, relayed *atomic.Uint64) {
	s := p.s
	buf := s.bufs.Get().(*[frameBufSize]byte)
	defer s.bufs.Put(buf)
	for {
		frame, err := readMessage(src, buf[:])
		if err != nil {
			switch {
			case errors.Is(err, io.EOF):
				_ = dst.CloseWrite() // dst may be gone already; the other pump will see it
			case isFramingError(err):
				if p.abort() {
					s.stats.malformed.Add(1)
				}
			default:
				p.abort()
			}
			return
		}
		p.last.Store(s.clock())
		if _, err := dst.Write(frame); err != nil {
			p.abort()
			return
		}
		relayed.Add(1)
	}
}

// checkIdle is the idle timer's function: it closes p if no message has
// passed for IdleTimeout, and otherwise re-arms for the rest of the period.
// Messages only store a time, so the timer is touched once per period at
// most rather than once per message.
func (p *proxyConn) checkIdle() {
	idle := p.s.opts.IdleTimeout
	since := time.Duration(p.s.clock() - p.last.Load())
	if since < idle {
		p.mu.Lock()
		if !p.mu.aborted {
			p.mu.idle.Reset(idle - since)
		}
		p.mu.Unlock()
		return
	}
	if p.abort() {
		p.s.stats.idleTimeouts.Add(1)
	}
}
