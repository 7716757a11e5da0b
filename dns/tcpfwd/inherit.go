package tcpfwd

import (
	"errors"
	"log/slog"
	"net"
	"os"
)

// Inherit returns a [Server] on l, a listener another process bound with
// [Listen] and handed over (an upgrade). Options are as for Listen.
func Inherit(l *net.TCPListener, pick Picker, o Options) (*Server, error) {
	if pick == nil || l == nil {
		return nil, errors.New("tcpfwd: inherit: nil picker or listener")
	}
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
	return newServer(l, pick, o, log), nil
}

// ListenerFile returns a duplicate of the listening socket, to hand to
// another process. The caller closes it.
func (s *Server) ListenerFile() (*os.File, error) { return s.ln.File() }
