package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio/shard"
	"github.com/fastudp/fastudp/config"
	"github.com/fastudp/fastudp/control"
	"github.com/fastudp/fastudp/core"
)

// The zero-downtime upgrade (SIGUSR2, `fastudp ctl upgrade`).
//
// The running ("old") process starts its binary as it is on disk now, with
// the same arguments, one end of a SOCK_SEQPACKET socketpair as fd 3 and
// FASTUDP_HANDOVER_FD=3 in its environment. The new process reads its
// configuration as usual and then, instead of binding anything:
//
//	new → old  hello   {proto, version, pid}
//	old → new  refuse  {reason}               (protocol mismatch; old serves on)
//	old → new  offer   {seed, backends, extra listeners, fd and byte counts}
//	           the old shards are paused between two batches from here on
//	old → new  fds     SCM_RIGHTS batches of at most 250 descriptors: the
//	                   extra listeners (control, metrics, DNS TCP), then
//	                   each shard's listener sockets, then every live flow's
//	                   upstream socket
//	old → new  state   the shards' state (shard.MarshalState), in chunks
//	new → old  ready   the new group is built; nothing is read yet
//	   or      fail    {reason}: old resumes its shards and reports it
//	old → new  commit  the new process starts its shards; old exits at once
//	                   without closing a socket or a flow
//
// Datagrams and replies that arrive while the shards are paused wait in the
// kernel's socket buffers, which both processes share, so none is lost. Any
// error or a silence of handoverTimeout before commit leaves the old process
// serving (its shards resume) and kills the new one.

// handoverEnv names the descriptor of the handover socket in a new process.
const handoverEnv = "FASTUDP_HANDOVER_FD"

// handoverProtocol is the handover protocol this binary speaks; processes
// that differ refuse each other. A string so tests can build a binary that
// speaks another one (-ldflags "-X main.handoverProtocol=...").
var handoverProtocol = "1"

// handoverFault, set only in test builds (-ldflags "-X
// main.handoverFault=exit-after-commit"), makes a new process die right
// after the commit, to test that the old one then serves on.
var handoverFault = ""

// handoverTimeout bounds a whole handover, from starting the new binary to
// its ready message.
const handoverTimeout = 10 * time.Second

const (
	handoverMaxFDs   = 250   // descriptors per message (the kernel takes at most 253)
	handoverChunk    = 48000 // state bytes per message
	handoverMaxState = 1 << 30
)

// hoMsg is one control message of the handover.
type hoMsg struct {
	Type    string `json:"type"`
	Proto   string `json:"proto,omitempty"`
	Version string `json:"version,omitempty"`
	PID     int    `json:"pid,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// offer
	Seed     uint64      `json:"seed,omitempty"`
	Extra    []string    `json:"extra,omitempty"`
	FDs      int         `json:"fds,omitempty"`
	StateLen int         `json:"state_len,omitempty"`
	Backends []hoBackend `json:"backends,omitempty"`
	// fds
	N int `json:"n,omitempty"`
}

// hoBackend names an old BackendID, so the new process can map it to its own.
type hoBackend struct {
	ID      core.BackendID `json:"id"`
	Cluster string         `json:"cluster"`
	Name    string         `json:"name,omitempty"`
	Addr    netip.AddrPort `json:"addr"`
}

// hoConn is a handover socket.
type hoConn struct{ c *net.UnixConn }

func (h hoConn) send(m hoMsg, fds ...int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("handover: encode %s: %w", m.Type, err)
	}
	return h.sendRaw(b, fds...)
}

func (h hoConn) sendRaw(b []byte, fds ...int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := h.c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("handover: send: %w", err)
	}
	return nil
}

// recvRaw reads one message and the descriptors it carries.
func (h hoConn) recvRaw(buf []byte) ([]byte, []int, error) {
	oob := make([]byte, unix.CmsgSpace(4*handoverMaxFDs))
	n, oobn, flags, _, err := h.c.ReadMsgUnix(buf, oob)
	if errors.Is(err, io.EOF) {
		err = nil // n == 0: said below
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("timeout: no answer within %v", handoverTimeout)
	}
	var fds []int
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		for i := range msgs {
			if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
				fds = append(fds, got...)
			}
		}
		if perr != nil && err == nil {
			err = perr
		}
	}
	if err == nil && flags&(unix.MSG_CTRUNC|unix.MSG_TRUNC) != 0 {
		err = errors.New("message or descriptors truncated")
	}
	if err == nil && n == 0 {
		err = errors.New("the other process closed the handover socket")
	}
	if err != nil {
		closeFDs(fds)
		return nil, nil, fmt.Errorf("handover: receive: %w", err)
	}
	return buf[:n], fds, nil
}

func (h hoConn) recv() (hoMsg, []int, error) {
	b, fds, err := h.recvRaw(make([]byte, 64<<10))
	if err != nil {
		return hoMsg{}, nil, err
	}
	var m hoMsg
	if err := json.Unmarshal(b, &m); err != nil {
		closeFDs(fds)
		return hoMsg{}, nil, fmt.Errorf("handover: decode: %w", err)
	}
	if m.Type == "fail" || m.Type == "refuse" {
		closeFDs(fds)
		return m, nil, fmt.Errorf("%s", m.Reason)
	}
	return m, fds, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// upgrader is what a process started by `fastudp run` needs to upgrade.
type upgrader struct {
	exe  string   // the binary, as started (symlinks kept), absolute
	args []string // the arguments after the program name
	exit func(int)

	mu         sync.Mutex // one upgrade at a time
	handedOver atomic.Bool
}

// newUpgrader resolves the binary's path now: a relative path would change
// meaning with the working directory, and os.Executable would resolve a
// symlink that an upgrade may have pointed at a new version.
func newUpgrader() *upgrader {
	exe := os.Args[0]
	if !strings.Contains(exe, "/") {
		if p, err := exec.LookPath(exe); err == nil {
			exe = p
		}
	}
	if abs, err := filepath.Abs(exe); err == nil {
		exe = abs
	} else if p, err := os.Executable(); err == nil {
		exe = p
	}
	return &upgrader{exe: exe, args: append([]string(nil), os.Args[1:]...), exit: os.Exit}
}

// Upgrade implements control.Upgrader.
func (c *proxyController) Upgrade(ctx context.Context) (control.UpgradeResult, error) {
	if c.p.upg == nil {
		return control.UpgradeResult{}, fmt.Errorf("%w: upgrade needs a process started by fastudp run", control.ErrInvalid)
	}
	res, err := c.p.upgrade()
	if err != nil && !errors.Is(err, control.ErrConflict) {
		err = fmt.Errorf("%w (still serving, pid %d)", err, os.Getpid())
	}
	return res, err
}

// awaitUpgrade waits for an upgrade in progress to end and keeps new ones
// from starting: a process that stops must not close its control socket
// (whose file the new process keeps) in the middle of a handover. It
// reports whether this process has handed over (and is about to exit: it
// must then close nothing).
func (u *upgrader) awaitUpgrade() bool {
	if u == nil {
		return false
	}
	u.mu.Lock()
	return u.handedOver.Load()
}

// upgrade hands everything over to a new process started from the binary on
// disk. On success the new process serves and this one exits as soon as the
// control API has answered; on failure this one serves on and the error says
// why.
func (p *proxy) upgrade() (control.UpgradeResult, error) {
	u := p.upg
	if !u.mu.TryLock() {
		return control.UpgradeResult{}, fmt.Errorf("%w: an upgrade is already in progress", control.ErrConflict)
	}
	defer u.mu.Unlock()
	if u.handedOver.Load() {
		return control.UpgradeResult{}, fmt.Errorf("%w: already handed over; exiting", control.ErrConflict)
	}
	p.log.Info("upgrade: starting the new binary", "path", u.exe)
	res, err := p.handOver(time.Now().Add(handoverTimeout))
	if err != nil {
		p.log.Error("upgrade failed; still serving", "err", err)
		return res, err
	}
	u.handedOver.Store(true)
	p.log.Info("upgrade: handed over; exiting", "new_pid", res.NewPID, "flows", res.Flows,
		"paused", res.Paused, "dns_queries_carried", res.DNSQueriesCarried)
	go p.exitAfterHandover()
	return res, nil
}

// exitAfterHandover lets the control API answer the requests in progress
// (the upgrade's own), leaving the socket file to the new process, and exits
// without closing a flow.
func (p *proxy) exitAfterHandover() {
	// Stop accepting on the listeners the new process serves too (closing
	// this process's descriptor leaves the socket open there): a
	// connection accepted here now would be cut when this process exits.
	for _, t := range p.dnsTCP {
		_ = t.srv.Close()
	}
	if p.metrics != nil {
		_ = p.metrics.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, s := range []*control.Server{p.control, p.ctlTCP} {
		if s != nil {
			_ = s.Release(ctx)
		}
	}
	p.upg.exit(0)
}

// handOver runs the old side of the protocol.
func (p *proxy) handOver(deadline time.Time) (res control.UpgradeResult, err error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return res, fmt.Errorf("socketpair: %w", err)
	}
	theirs := os.NewFile(uintptr(pair[1]), "handover")
	mineF := os.NewFile(uintptr(pair[0]), "handover")
	fc, err := net.FileConn(mineF)
	mineF.Close()
	if err != nil {
		theirs.Close()
		return res, fmt.Errorf("handover socket: %w", err)
	}
	conn := hoConn{fc.(*net.UnixConn)}
	defer conn.c.Close()
	_ = conn.c.SetDeadline(deadline)

	cmd := exec.Command(p.upg.exe, p.upg.args...)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Env = append(os.Environ(), handoverEnv+"=3")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		return res, fmt.Errorf("start %s: %w", p.upg.exe, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	committed := false
	defer func() {
		if committed {
			return
		}
		_ = cmd.Process.Kill()
		select {
		case werr := <-exited:
			if werr != nil && err != nil && !strings.Contains(werr.Error(), "killed") {
				err = fmt.Errorf("%w (new process: %v)", err, werr)
			}
		case <-time.After(time.Second):
		}
	}()
	// The new process closes its end only by exiting; so does a binary
	// that is not fastudp at all.
	hello, _, err := conn.recv()
	if err != nil {
		return res, fmt.Errorf("no hello from the new process (pid %d): %w", cmd.Process.Pid, err)
	}
	if hello.Type != "hello" || hello.Proto != handoverProtocol {
		reason := fmt.Sprintf("version mismatch: the new binary (%s) speaks handover protocol %q, this one (%s) %q",
			hello.Version, hello.Proto, version, handoverProtocol)
		_ = conn.send(hoMsg{Type: "refuse", Reason: reason})
		return res, errors.New(reason)
	}

	pauseCtx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	paused := time.Now()
	h, err := p.group.Pause(pauseCtx)
	if err != nil {
		_ = conn.send(hoMsg{Type: "refuse", Reason: err.Error()})
		return res, fmt.Errorf("pause shards: %w", err)
	}
	defer func() {
		if !committed {
			h.Resume()
		}
	}()
	extra, files, err := p.extraListeners()
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if err != nil {
		_ = conn.send(hoMsg{Type: "refuse", Reason: err.Error()})
		return res, err
	}
	meta, err := shard.MarshalState(&h.State)
	if err != nil {
		_ = conn.send(hoMsg{Type: "refuse", Reason: err.Error()})
		return res, err
	}
	fds := make([]int, 0, len(files))
	for _, f := range files {
		fds = append(fds, int(f.Fd()))
	}
	fds = append(fds, h.State.FDs()...)
	offer := hoMsg{Type: "offer", Proto: handoverProtocol, Version: version, PID: os.Getpid(), Seed: p.cfg.Seed,
		Extra: extra, FDs: len(fds), StateLen: len(meta)}
	for id, r := range p.picker.snapshotRefs() {
		offer.Backends = append(offer.Backends, hoBackend{ID: core.BackendID(id), Cluster: p.picker.names[r.cluster], Name: r.name, Addr: r.addr})
	}
	if err := conn.send(offer); err != nil {
		return res, err
	}
	for len(fds) > 0 {
		n := min(len(fds), handoverMaxFDs)
		if err := conn.send(hoMsg{Type: "fds", N: n}, fds[:n]...); err != nil {
			return res, err
		}
		fds = fds[n:]
	}
	for b := meta; len(b) > 0; {
		n := min(len(b), handoverChunk)
		if err := conn.sendRaw(b[:n]); err != nil {
			return res, err
		}
		b = b[n:]
	}
	ready, _, err := conn.recv()
	if err != nil {
		return res, fmt.Errorf("new process (pid %d) failed: %w", cmd.Process.Pid, err)
	}
	if ready.Type != "ready" {
		return res, fmt.Errorf("new process (pid %d): unexpected %q", cmd.Process.Pid, ready.Type)
	}
	// The service manager follows the new process before this one exits.
	if err := sdNotify(fmt.Sprintf("MAINPID=%d", cmd.Process.Pid)); err != nil {
		p.log.Warn("upgrade: cannot tell the service manager the new pid", "err", err)
	}
	if err := conn.send(hoMsg{Type: "commit"}); err != nil {
		_ = sdNotify(fmt.Sprintf("MAINPID=%d", os.Getpid()))
		return res, err
	}
	// The new process says when its shards run. Without that word, if it
	// is gone, nobody reads the sockets: this process serves on. If it
	// lives but is slow to say so, it serves (it had committed).
	_ = conn.c.SetDeadline(time.Now().Add(handoverTimeout / 2))
	if m, _, err := conn.recv(); err != nil || m.Type != "started" {
		select {
		case werr := <-exited:
			exited <- werr // for the deferred wait
			_ = sdNotify(fmt.Sprintf("MAINPID=%d", os.Getpid()))
			return res, fmt.Errorf("new process (pid %d) exited after the commit: %v", cmd.Process.Pid, werr)
		case <-time.After(100 * time.Millisecond):
			p.log.Warn("upgrade: no word from the new process after the commit; it serves", "pid", cmd.Process.Pid, "err", err)
		}
	}
	committed = true
	res = control.UpgradeResult{OldPID: os.Getpid(), NewPID: cmd.Process.Pid, Flows: h.State.Flows(), Paused: time.Since(paused)}
	for _, s := range h.State.Shards {
		res.DNSQueriesCarried += s.DNSInFlight
	}
	return res, nil
}

// extraListeners returns duplicates of the control, metrics and DNS TCP
// listeners, each named by what it is and the configured address, so the
// new process uses one only where its own configuration says the same.
func (p *proxy) extraListeners() (names []string, files []*os.File, err error) {
	add := func(name string, get func() (*os.File, error)) {
		if err != nil {
			return
		}
		f, ferr := get()
		if ferr != nil {
			err = fmt.Errorf("hand over the %s listener: %w", name, ferr)
			return
		}
		names, files = append(names, name), append(files, f)
	}
	if p.control != nil {
		add("control="+p.cfg.Control, p.control.ListenerFile)
	}
	if p.ctlTCP != nil {
		add("control_tcp="+p.cfg.ControlTCP, p.ctlTCP.ListenerFile)
	}
	if tl, ok := p.metricsL.(*net.TCPListener); ok {
		add("metrics="+p.cfg.Metrics, tl.File)
	}
	for _, t := range p.dnsTCP {
		add("dnstcp/"+t.listener+"="+t.srv.Addr().String(), t.srv.ListenerFile)
	}
	return names, files, err
}

// takeover is the new side of a handover: what the old process sent.
type takeover struct {
	conn     hoConn
	log      *slog.Logger
	state    *shard.GroupState
	extra    map[string]*os.File
	backends []hoBackend
	oldPID   int
	// offered is when the state started to arrive (the old shards paused);
	// received when all of it had.
	offered, received time.Time
}

// takeoverFromEnv runs the new side up to the state when this process was
// started by an upgrade, and returns nil otherwise.
func takeoverFromEnv(cfg *config.Config, log *slog.Logger) (*takeover, error) {
	v, ok := os.LookupEnv(handoverEnv)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(handoverEnv) // not for this process's own upgrades
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q: not a descriptor", handoverEnv, v)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "handover")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("handover socket: %w", err)
	}
	t := &takeover{conn: hoConn{fc.(*net.UnixConn)}, log: log, extra: map[string]*os.File{}}
	if err := t.receive(cfg); err != nil {
		t.fail(err)
		return nil, err
	}
	return t, nil
}

func (t *takeover) receive(cfg *config.Config) error {
	_ = t.conn.c.SetDeadline(time.Now().Add(handoverTimeout))
	if err := t.conn.send(hoMsg{Type: "hello", Proto: handoverProtocol, Version: version, PID: os.Getpid()}); err != nil {
		return err
	}
	offer, _, err := t.conn.recv()
	if err != nil {
		return fmt.Errorf("handover refused: %w", err)
	}
	if offer.Type != "offer" || offer.FDs < len(offer.Extra) || offer.StateLen > handoverMaxState {
		return fmt.Errorf("handover: bad offer %q", offer.Type)
	}
	t.oldPID, t.backends, t.offered = offer.PID, offer.Backends, time.Now()
	var fds []int
	for len(fds) < offer.FDs {
		m, got, err := t.conn.recv()
		if err == nil && (m.Type != "fds" || m.N != len(got)) {
			closeFDs(got)
			err = fmt.Errorf("handover: %q with %d descriptors, want fds", m.Type, len(got))
		}
		if err != nil {
			closeFDs(fds)
			return err
		}
		fds = append(fds, got...)
	}
	if len(fds) != offer.FDs {
		closeFDs(fds)
		return fmt.Errorf("handover: %d descriptors, %d offered", len(fds), offer.FDs)
	}
	for i, name := range offer.Extra {
		t.extra[name] = os.NewFile(uintptr(fds[i]), name)
	}
	fds = fds[len(offer.Extra):]
	meta := make([]byte, 0, offer.StateLen)
	buf := make([]byte, 64<<10)
	for len(meta) < offer.StateLen {
		b, got, err := t.conn.recvRaw(buf)
		closeFDs(got)
		if err != nil {
			closeFDs(fds)
			return err
		}
		meta = append(meta, b...)
	}
	if len(meta) != offer.StateLen {
		closeFDs(fds)
		return errors.New("handover: state longer than offered")
	}
	if offer.Seed != cfg.Seed {
		closeFDs(fds)
		return fmt.Errorf("the configuration's seed %#x is not the running process's %#x: flows cannot move (restart instead)", cfg.Seed, offer.Seed)
	}
	st, err := shard.UnmarshalState(meta, fds)
	if err != nil {
		closeFDs(fds)
		return err
	}
	t.state, t.received = st, time.Now()
	t.log.Info("upgrade: taking over", "from_pid", offer.PID, "from_version", offer.Version, "flows", st.Flows(),
		"sockets", len(fds), "state_bytes", len(meta), "received_in", t.received.Sub(t.offered))
	return nil
}

// fail tells the old process why this one cannot take over.
func (t *takeover) fail(err error) {
	if t == nil {
		return
	}
	_ = t.conn.send(hoMsg{Type: "fail", Reason: err.Error()})
	t.conn.c.Close()
}

// listener returns the handed-over listener named kind=configured, or nil.
func (t *takeover) listener(kind, configured string) net.Listener {
	if t == nil {
		return nil
	}
	f := t.extra[kind+"="+configured]
	if f == nil {
		return nil
	}
	delete(t.extra, kind+"="+configured)
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.log.Warn("upgrade: cannot use a handed-over listener; binding anew", "listener", kind, "err", err)
		return nil
	}
	return ln
}

// remap maps the old process's backend IDs to this one's: the same cluster
// and address, or, for a backend this configuration does not have, a
// removed entry of its own (its live flows go on; no new flow goes there).
func (t *takeover) remap(p *clusterPicker) func(core.BackendID) core.BackendID {
	if t == nil {
		return nil
	}
	ids := map[core.BackendID]core.BackendID{}
	for _, b := range t.backends {
		ci, err := p.clusterIndex(b.Cluster)
		if err != nil {
			ci = 0 // the cluster is gone: its flows live on under a removed entry
		}
		if id, ok := p.idOf(ci, b.Addr); ok && err == nil {
			ids[b.ID] = id
			continue
		}
		if id, ok := p.adoptRemoved(ci, b.Name, b.Addr); ok {
			ids[b.ID] = id
		}
	}
	return func(old core.BackendID) core.BackendID {
		if id, ok := ids[old]; ok {
			return id
		}
		return old
	}
}

// adoptRemoved registers a removed backend, for the live flows of an old
// process's backend this configuration does not have.
func (p *clusterPicker) adoptRemoved(ci int, name string, addr netip.AddrPort) (core.BackendID, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.refs) >= p.capacity || ci < 0 || ci >= len(p.names) {
		return 0, false
	}
	p.refs = append(p.refs, backendRef{cluster: ci, addr: addr, name: name, weight: 1, removed: true})
	p.publishLabels()
	return core.BackendID(len(p.refs) - 1), true
}

// commit says ready and waits for the old process's commit; after it this
// process serves.
func (t *takeover) commit() error {
	if t == nil {
		return nil
	}
	for name, f := range t.extra { // handed over but not configured here
		t.log.Info("upgrade: closing a handed-over listener this configuration does not use", "listener", name)
		f.Close()
	}
	if err := t.conn.send(hoMsg{Type: "ready", PID: os.Getpid()}); err != nil {
		return err
	}
	m, _, err := t.conn.recv()
	if err == nil && m.Type != "commit" {
		err = fmt.Errorf("handover: %q instead of commit", m.Type)
	}
	if err != nil {
		return fmt.Errorf("handover: no commit from the old process: %w", err)
	}
	if handoverFault == "exit-after-commit" {
		os.Exit(7)
	}
	t.log.Info("upgrade: took over", "from_pid", t.oldPID, "built_in", time.Since(t.received), "since_offer", time.Since(t.offered))
	return nil
}

// started tells the old process that this one's shards run (it exits then)
// and closes the handover socket.
func (t *takeover) started() {
	if t == nil {
		return
	}
	_ = t.conn.send(hoMsg{Type: "started", PID: os.Getpid()})
	t.conn.c.Close()
}

// groupState returns the shards' state to resume, or nil.
func (t *takeover) groupState() *shard.GroupState {
	if t == nil {
		return nil
	}
	return t.state
}
