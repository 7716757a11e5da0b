package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"
)

// Upgrader is implemented by a [Controller] that can replace its process by
// a new one without dropping flows (`fastudp ctl upgrade`). The control API
// answers POST /v1/upgrade with [ErrInvalid] for a Controller without it.
type Upgrader interface {
	// Upgrade starts the new binary, hands it every socket and flow and
	// returns once the new process serves. On failure the running process
	// keeps serving and the error says why.
	Upgrade(ctx context.Context) (UpgradeResult, error)
}

// UpgradeResult describes a completed upgrade.
type UpgradeResult struct {
	// OldPID exits as soon as this answer is sent; NewPID serves now.
	OldPID int `json:"old_pid"`
	NewPID int `json:"new_pid"`
	// Flows is the number of live flows handed over (with their sockets).
	Flows int `json:"flows"`
	// DNSQueriesCarried counts DNS-mode queries in flight at the handover,
	// carried with their upstream sockets (the new process returns their
	// answers).
	DNSQueriesCarried int `json:"dns_queries_carried"`
	// Paused is how long the shards were paused (datagrams waited in the
	// kernel's socket buffers meanwhile; nanoseconds in JSON).
	Paused time.Duration `json:"paused_ns"`
}

func (h *handler) upgrade(r *http.Request, body []byte) (any, error) {
	if err := errors.Join(noBody(body), decodeEmptyQuery(r.URL.RawQuery)); err != nil {
		return nil, err
	}
	u, ok := h.c.(Upgrader)
	if !ok {
		return nil, fmt.Errorf("%w: this process cannot upgrade itself", ErrInvalid)
	}
	res, err := u.Upgrade(r.Context())
	if err != nil {
		h.log.Warn("control: upgrade failed; still serving", "err", err)
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	h.log.Info("control: upgraded", "new_pid", res.NewPID, "flows", res.Flows)
	return res, nil
}

// Upgrade asks the proxy to replace itself by its binary as it is on disk now
// (POST /v1/upgrade). Give ctx room: the handover may take seconds.
func (c *Client) Upgrade(ctx context.Context) (UpgradeResult, error) {
	var res UpgradeResult
	err := c.do(ctx, http.MethodPost, "/v1/upgrade", nil, nil, &res)
	return res, err
}

// ListenInherited serves c on ln, a unix listener another process created
// with [Listen] and handed over (an upgrade): no stale-socket check, and
// Close leaves the socket file (the process that handed it over may serve
// on if this one fails to start; a file left behind is replaced by the next
// Listen, as any stale socket is).
func ListenInherited(ln net.Listener, c Controller, log *slog.Logger) *Server {
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	return newServer(ln, "", nil, newHandler(c, log, ""), log)
}

// ListenTCPInherited serves c on ln, a loopback TCP listener another process
// created with [ListenTCP] and handed over, to requests carrying token.
func ListenTCPInherited(ln net.Listener, token string, c Controller, log *slog.Logger) (*Server, error) {
	if token == "" {
		return nil, errors.New("control: tcp listener needs a non-empty token")
	}
	return newServer(ln, "", nil, newHandler(c, log, token), log), nil
}

// ListenerFile returns a duplicate of the server's listening socket, to
// hand to another process. The caller closes it.
func (s *Server) ListenerFile() (*os.File, error) {
	f, ok := s.ln.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("control: listener %T cannot be handed over", s.ln)
	}
	return f.File()
}

// Release stops the server once the requests in progress have been answered
// (or ctx is done) and closes its listening socket, but leaves the socket
// file: another process serves it now.
func (s *Server) Release(ctx context.Context) error {
	s.path = ""
	return s.close(func() error { return s.srv.Shutdown(ctx) })
}

// AdoptSocketFile makes a server from [ListenInherited] remove the socket
// file at path when it closes, as the server that created it would have:
// call it once the process that handed the socket over has let go of it.
func (s *Server) AdoptSocketFile(path string) error {
	info, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	s.path, s.info = path, info
	return nil
}
