package tcpfwd

import (
	"errors"
	"net"
	"os"
)

// Inherit returns a [Server] on l, a listener another process bound with
// [Listen] and handed over (an upgrade). Options are as for Listen.
func Inherit(l *net.TCPListener, pick Picker, o Options) (*Server, error) {
	if pick == nil || l == nil {
		return nil, errors.New("tcpfwd: inherit: nil picker or listener")
	}
	return newServer(l, pick, o), nil
}

// ListenerFile returns a duplicate of the listening socket, to hand to
// another process. The caller closes it.
func (s *Server) ListenerFile() (*os.File, error) { return s.ln.File() }
