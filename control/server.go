package control

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Timeouts of the control server. A reload or a flow listing may take a
// while on a busy proxy, hence the generous write timeout.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 60 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10
	// staleProbeTimeout bounds the dial that tells a live socket from a
	// stale one.
	staleProbeTimeout = time.Second
)

// Server serves a [Controller] on one listener. Create it with [Listen] or
// [ListenTCP], run [Server.Serve], and stop it with [Server.Close].
type Server struct {
	ln   net.Listener
	srv  *http.Server
	log  *slog.Logger
	path string      // the unix socket's path; "" for TCP
	info os.FileInfo // the socket file as created, to remove only ours

	closeOnce sync.Once
	closeErr  error
}

// Listen creates the control socket at path, mode 0600 and owned by the
// running user, and returns a server for c. A socket file left by a process
// that is gone is replaced; if a live process answers on path, Listen fails
// and leaves it alone, as it does for a file that is not a socket. The
// parent directory must exist.
func Listen(path string, c Controller, log *slog.Logger) (*Server, error) {
	if path == "" {
		return nil, errors.New("control: empty socket path")
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	ln, info, err := listenUnix(path)
	if err != nil {
		return nil, err
	}
	return newServer(ln, path, info, newHandler(c, log, ""), log), nil
}

// ListenTCP listens on addr, an IP literal on a loopback address
// ("127.0.0.1:9901", "[::1]:9901"), and serves c to requests that carry
// "Authorization: Bearer TOKEN". It refuses any other address and an empty
// token.
func ListenTCP(addr, token string, c Controller, log *slog.Logger) (*Server, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("control: tcp listener %q: want a loopback IP:PORT: %w", addr, err)
	}
	if !ap.Addr().IsLoopback() {
		return nil, fmt.Errorf("control: tcp listener %s: not a loopback address (the control API must not be reachable from the network)", addr)
	}
	if token == "" {
		return nil, errors.New("control: tcp listener needs a non-empty token")
	}
	ln, err := net.Listen("tcp", ap.String())
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	return newServer(ln, "", nil, newHandler(c, log, token), log), nil
}

func newServer(ln net.Listener, path string, info os.FileInfo, h http.Handler, log *slog.Logger) *Server {
	return &Server{
		ln:   ln,
		log:  log,
		path: path,
		info: info,
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: readHeaderTimeout,
			ReadTimeout:       readTimeout,
			WriteTimeout:      writeTimeout,
			IdleTimeout:       idleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
	}
}

// Addr returns the listener's address: the socket path, or the TCP address
// with the port chosen when addr asked for port 0.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve answers requests until [Server.Close]; it then returns nil.
func (s *Server) Serve() error {
	s.log.Info("control API listening", "addr", s.ln.Addr().String(), "network", s.ln.Addr().Network())
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("control: serve: %w", err)
	}
	return nil
}

// Shutdown stops accepting requests, waits for those in progress until ctx
// is done, and removes the socket file.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.close(func() error { return s.srv.Shutdown(ctx) })
}

// Close stops the server at once and removes the socket file, if it is still
// the one Listen created. It is safe to call more than once.
func (s *Server) Close() error {
	return s.close(s.srv.Close)
}

func (s *Server) close(stop func() error) error {
	s.closeOnce.Do(func() {
		err := stop()
		// Serve may never have run; the listener must close anyway.
		if cerr := s.ln.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
		if s.path != "" {
			if cur, serr := os.Lstat(s.path); serr == nil && os.SameFile(cur, s.info) {
				if rerr := os.Remove(s.path); rerr != nil && err == nil {
					err = rerr
				}
			}
		}
		if err != nil {
			s.closeErr = fmt.Errorf("control: close: %w", err)
		}
	})
	return s.closeErr
}

// removeStale removes a socket file at path that nothing answers on. It
// fails if a process answers, if path is not a socket, or if it cannot tell.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("control: %s exists and is not a socket; remove it or choose another path", path)
	}
	conn, err := net.DialTimeout("unix", path, staleProbeTimeout)
	if err == nil {
		_ = conn.Close() // only probing
		return fmt.Errorf("control: another process is serving %s (is fastudp already running?)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("control: cannot tell whether %s is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("control: remove stale socket: %w", err)
	}
	return nil
}

// listenUnix binds a socket in a fresh 0700 directory beside path, makes it
// 0600 and links it to path. Nobody else can connect in between (a chmod
// after binding at path would leave a window with the umask's mode), and the
// link fails rather than replace a socket another process created meanwhile.
func listenUnix(path string) (net.Listener, os.FileInfo, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".fastudp-control-")
	if err != nil {
		return nil, nil, fmt.Errorf("control: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("control: listen: %w", err)
	}
	// The file moves to path; Close removes it there.
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, os.FileInfo, error) {
		_ = ln.Close() // the error being returned matters more
		return nil, nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(fmt.Errorf("control: chmod socket: %w", err))
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fail(fmt.Errorf("control: %s appeared while starting (another fastudp starting?)", path))
		}
		return fail(fmt.Errorf("control: %w", err))
	}
	info, err := os.Lstat(path)
	if err != nil {
		return fail(fmt.Errorf("control: %w", err))
	}
	return ln, info, nil
}

// handler routes the control API's requests to a Controller.
type handler struct {
	c      Controller
	log    *slog.Logger
	mux    *http.ServeMux
	paths  map[string][]string // path -> allowed methods, for 405
	digest [sha256.Size]byte   // of the bearer token; auth off when token is ""
	auth   bool
}

func newHandler(c Controller, log *slog.Logger, token string) *handler {
	h := &handler{c: c, log: log, mux: http.NewServeMux(), paths: map[string][]string{}}
	if token != "" {
		h.auth = true
		h.digest = sha256.Sum256([]byte(token))
	}
	h.route("GET", "/v1/status", h.status)
	h.route("GET", "/v1/backends", h.backends)
	h.route("POST", "/v1/backends", h.addBackend)
	h.route("DELETE", "/v1/backends", h.removeBackend)
	h.route("POST", "/v1/backends/drain", h.drain)
	h.route("POST", "/v1/backends/weight", h.weight)
	h.route("POST", "/v1/backends/backup", h.backup)
	h.route("GET", "/v1/flows", h.flows)
	h.route("POST", "/v1/reload", h.reload)
	h.route("POST", "/v1/upgrade", h.upgrade)
	h.mux.HandleFunc("/", h.fallback)
	return h
}

// route registers fn for method and path; fn returns the value to answer
// with (status 200) or an error.
func (h *handler) route(method, path string, fn func(r *http.Request, body []byte) (any, error)) {
	h.paths[path] = append(h.paths[path], method)
	h.mux.HandleFunc(method+" "+path, func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodySize))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				h.writeError(w, r, http.StatusRequestEntityTooLarge, fmt.Errorf("request body larger than %d bytes", MaxBodySize))
				return
			}
			h.writeError(w, r, http.StatusBadRequest, fmt.Errorf("read request body: %w", err))
			return
		}
		v, err := fn(r, body)
		if err != nil {
			h.writeError(w, r, statusOf(err), err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.auth && !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="fastudp"`)
		h.writeError(w, r, http.StatusUnauthorized, errors.New("missing or wrong bearer token"))
		return
	}
	h.mux.ServeHTTP(w, r)
}

// authorized compares the request's bearer token with the server's in
// constant time; comparing digests hides the token's length too.
func (h *handler) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	d := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(d[:], h.digest[:]) == 1
}

// fallback answers 405 for a known path with another method, else 404, in
// JSON like every other error.
func (h *handler) fallback(w http.ResponseWriter, r *http.Request) {
	if methods, ok := h.paths[r.URL.Path]; ok {
		w.Header().Set("Allow", strings.Join(methods, ", "))
		h.writeError(w, r, http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(methods, ", ")))
		return
	}
	h.writeError(w, r, http.StatusNotFound, fmt.Errorf("no such route: %s %s", r.Method, r.URL.Path))
}

// statusOf maps a controller or decoding error to its HTTP status.
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// errorBody is the JSON body of every error answer.
type errorBody struct {
	Error string `json:"error"`
}

func (h *handler) writeError(w http.ResponseWriter, r *http.Request, status int, err error) {
	level := slog.LevelDebug
	if status >= 500 {
		level = slog.LevelWarn
	}
	h.log.Log(r.Context(), level, "control request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	writeJSON(w, status, errorBody{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(errorBody{Error: "encode response: " + err.Error()}) // a string always encodes
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n')) // the client is gone if this fails
}

// The response bodies that wrap lists, so that fields can be added later.
type (
	backendsBody struct {
		Backends []Backend `json:"backends"`
	}
	flowsBody struct {
		Flows []Flow `json:"flows"`
	}
)

// noBody rejects a body on routes that take none.
func noBody(body []byte) error {
	if len(strings.TrimSpace(string(body))) != 0 {
		return fmt.Errorf("%w: this route takes no request body", ErrInvalid)
	}
	return nil
}

func (h *handler) status(r *http.Request, body []byte) (any, error) {
	if err := errors.Join(noBody(body), decodeEmptyQuery(r.URL.RawQuery)); err != nil {
		return nil, err
	}
	st := h.c.Status()
	if st.Clusters == nil {
		st.Clusters = []ClusterSummary{}
	}
	return st, nil
}

func (h *handler) backends(r *http.Request, body []byte) (any, error) {
	if err := noBody(body); err != nil {
		return nil, err
	}
	cluster, err := decodeBackendsQuery(r.URL.RawQuery)
	if err != nil {
		return nil, err
	}
	bs, err := h.c.Backends(cluster)
	if err != nil {
		return nil, fmt.Errorf("backends: %w", err)
	}
	if bs == nil {
		bs = []Backend{}
	}
	return backendsBody{Backends: bs}, nil
}

func (h *handler) addBackend(r *http.Request, body []byte) (any, error) {
	if err := decodeEmptyQuery(r.URL.RawQuery); err != nil {
		return nil, err
	}
	a, err := decodeAddBackend(body)
	if err != nil {
		return nil, err
	}
	opts := AddOptions{Weight: a.weight, ServerID: a.serverID, Backup: a.backup}
	if err := h.c.AddBackend(a.cluster, a.addr, opts); err != nil {
		return nil, fmt.Errorf("add backend %s to %s: %w", a.addr, a.cluster, err)
	}
	sid := hex.EncodeToString([]byte(a.serverID))
	h.log.Info("control: backend added", "cluster", a.cluster, "backend", a.addr, "weight", a.weight,
		"backup", a.backup, "server_id", sid)
	return BackendChange{Action: ActionAdded, Cluster: a.cluster, Address: a.addr, Weight: a.weight,
		Backup: a.backup, ServerID: sid}, nil
}

func (h *handler) backup(r *http.Request, body []byte) (any, error) {
	if err := decodeEmptyQuery(r.URL.RawQuery); err != nil {
		return nil, err
	}
	a, err := decodeBackup(body)
	if err != nil {
		return nil, err
	}
	action := ActionPrimary
	if a.backup {
		action = ActionBackup
	}
	if err := h.c.SetBackup(a.cluster, a.addr, a.backup); err != nil {
		return nil, fmt.Errorf("make backend %s of %s %s: %w", a.addr, a.cluster, action, err)
	}
	h.log.Info("control: backend tier set", "cluster", a.cluster, "backend", a.addr, "backup", a.backup)
	return BackendChange{Action: action, Cluster: a.cluster, Address: a.addr, Backup: a.backup}, nil
}

func (h *handler) removeBackend(r *http.Request, body []byte) (any, error) {
	if err := noBody(body); err != nil {
		return nil, err
	}
	a, err := decodeRemoveQuery(r.URL.RawQuery)
	if err != nil {
		return nil, err
	}
	if err := h.c.RemoveBackend(a.cluster, a.addr); err != nil {
		return nil, fmt.Errorf("remove backend %s from %s: %w", a.addr, a.cluster, err)
	}
	h.log.Info("control: backend removed", "cluster", a.cluster, "backend", a.addr)
	return BackendChange{Action: ActionRemoved, Cluster: a.cluster, Address: a.addr}, nil
}

func (h *handler) drain(r *http.Request, body []byte) (any, error) {
	if err := decodeEmptyQuery(r.URL.RawQuery); err != nil {
		return nil, err
	}
	a, err := decodeDrain(body)
	if err != nil {
		return nil, err
	}
	action, verb := ActionDrained, "drain"
	if !a.drain {
		action, verb = ActionUndrained, "undrain"
	}
	if err := h.c.DrainBackend(a.cluster, a.addr, a.drain); err != nil {
		return nil, fmt.Errorf("%s backend %s of %s: %w", verb, a.addr, a.cluster, err)
	}
	h.log.Info("control: backend "+action, "cluster", a.cluster, "backend", a.addr)
	return BackendChange{Action: action, Cluster: a.cluster, Address: a.addr}, nil
}

func (h *handler) weight(r *http.Request, body []byte) (any, error) {
	if err := decodeEmptyQuery(r.URL.RawQuery); err != nil {
		return nil, err
	}
	a, err := decodeWeight(body)
	if err != nil {
		return nil, err
	}
	if err := h.c.SetWeight(a.cluster, a.addr, a.weight); err != nil {
		return nil, fmt.Errorf("set weight of backend %s of %s: %w", a.addr, a.cluster, err)
	}
	h.log.Info("control: backend weight set", "cluster", a.cluster, "backend", a.addr, "weight", a.weight)
	return BackendChange{Action: ActionWeighted, Cluster: a.cluster, Address: a.addr, Weight: a.weight}, nil
}

func (h *handler) flows(r *http.Request, body []byte) (any, error) {
	if err := noBody(body); err != nil {
		return nil, err
	}
	limit, err := decodeFlowsQuery(r.URL.RawQuery)
	if err != nil {
		return nil, err
	}
	fs, err := h.c.Flows(limit)
	if err != nil {
		return nil, fmt.Errorf("flows: %w", err)
	}
	if len(fs) > limit {
		fs = fs[:limit]
	}
	if fs == nil {
		fs = []Flow{}
	}
	return flowsBody{Flows: fs}, nil
}

func (h *handler) reload(r *http.Request, body []byte) (any, error) {
	if err := errors.Join(decodeReload(body), decodeEmptyQuery(r.URL.RawQuery)); err != nil {
		return nil, err
	}
	res, err := h.c.Reload()
	if err != nil {
		h.log.Warn("control: reload rejected", "err", err)
		return nil, fmt.Errorf("reload: %w", err)
	}
	h.log.Info("control: reloaded", "config", res.ConfigPath, "restart_required", res.RestartRequired)
	return normalizeReload(res), nil
}

// normalizeReload makes every list of res non-nil, so that JSON shows [].
func normalizeReload(res ReloadResult) ReloadResult {
	for _, l := range []*[]string{&res.ClustersAdded, &res.ClustersRemoved, &res.ClustersChanged, &res.RestartRequired} {
		if *l == nil {
			*l = []string{}
		}
	}
	for _, l := range []*[]BackendRef{&res.BackendsAdded, &res.BackendsRemoved, &res.BackendsChanged} {
		if *l == nil {
			*l = []BackendRef{}
		}
	}
	return res
}
