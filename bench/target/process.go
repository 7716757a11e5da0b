package target

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// startTimeout bounds how long a target may take to answer.
const startTimeout = 10 * time.Second

// Fastudp runs the fastudp binary with the quick-start flags.
type Fastudp struct {
	Bin    string // path to the built binary
	Shards int
	// Label names the target in reports (default "fastudp-N").
	Label string
	// Metrics serves Prometheus metrics on a free loopback port, so the
	// benchmark can read the Go collector's allocation counters.
	Metrics bool
	Args    []string // extra flags for `fastudp run`
	// ServerID, when set, is the backend's QUIC-LB server ID (hex), given as
	// --backend ADDR,sid=HEX (with --affinity quic --quic-sid-len in Args).
	ServerID string
	// TOML, if set, runs fastudp from a config file instead of the
	// quick-start flags: these top-level keys (such as upstream_sources,
	// which has no flag), then the listener and a cluster with the one
	// backend that Start is given. Args are then ignored.
	TOML string
}

// configFile writes the config for TOML mode and returns its path.
func (f Fastudp) configFile(addr, backend netip.AddrPort, m Mode, metrics string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "shards = %d\nlog_level = \"warn\"\n", f.Shards)
	if metrics != "" {
		fmt.Fprintf(&b, "metrics = %q\n", metrics)
	}
	b.WriteString(f.TOML)
	fmt.Fprintf(&b, "\n[[listener]]\nname = \"bench\"\naddress = %q\ncluster = \"bench\"\n", addr)
	fmt.Fprintf(&b, "\n[[cluster]]\nname = \"bench\"\nresponses = %d\n\n  [[cluster.backend]]\n  address = %q\n", m.Responses, backend)
	file, err := os.CreateTemp("", "fastudp-bench-*.toml")
	if err != nil {
		return "", err
	}
	defer file.Close()
	if _, err := file.WriteString(b.String()); err != nil {
		os.Remove(file.Name())
		return "", err
	}
	return file.Name(), nil
}

// Name implements Target.
func (f Fastudp) Name() string {
	if f.Label != "" {
		return f.Label
	}
	return "fastudp-" + strconv.Itoa(f.Shards)
}

// Start implements Target.
func (f Fastudp) Start(backend netip.AddrPort, m Mode) (*Instance, error) {
	port, err := FreeUDPPort()
	if err != nil {
		return nil, err
	}
	addr := netip.AddrPortFrom(loopback, port)
	backendArg := backend.String()
	if f.ServerID != "" {
		backendArg += ",sid=" + f.ServerID
	}
	args := []string{"run", "--listen", addr.String(), "--backend", backendArg,
		"--responses", strconv.Itoa(m.Responses), "--shards", strconv.Itoa(f.Shards), "--log-level", "warn"}
	inst := &Instance{Addr: addr}
	if f.Metrics {
		mp, err := FreeTCPPort()
		if err != nil {
			return nil, err
		}
		maddr := netip.AddrPortFrom(loopback, mp).String()
		args = append(args, "--metrics", maddr)
		inst.Metrics = "http://" + maddr + "/metrics"
	}
	args = append(args, f.Args...)
	var confFile string
	if f.TOML != "" {
		metrics := ""
		if inst.Metrics != "" {
			metrics = strings.TrimSuffix(strings.TrimPrefix(inst.Metrics, "http://"), "/metrics")
		}
		if confFile, err = f.configFile(addr, backend, m, metrics); err != nil {
			return nil, err
		}
		args = []string{"run", "--config", confFile}
	}
	cmd := exec.Command(f.Bin, args...)
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("fastudp: %w", err)
	}
	inst.PID = cmd.Process.Pid
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	inst.stop = func() error {
		_ = syscall.Kill(-inst.PID, syscall.SIGKILL) // the whole process group
		<-exited
		if confFile != "" {
			os.Remove(confFile)
		}
		return nil
	}
	if err := WaitReply(addr, m.probe(), startTimeout); err != nil {
		inst.Stop()
		return nil, fmt.Errorf("fastudp %s: %w; output: %s", strings.Join(args, " "), err, out.String())
	}
	if inst.Metrics != "" {
		if err := waitHTTP(inst.Metrics, startTimeout); err != nil {
			inst.Stop()
			return nil, fmt.Errorf("fastudp metrics: %w; output: %s", err, out.String())
		}
	}
	return inst, nil
}

func waitHTTP(url string, timeout time.Duration) error {
	var err error
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if _, err = Scrape(url); err == nil {
			return nil
		}
	}
	return err
}

// Nginx runs nginx stream UDP with one worker through the peers' start
// script (start-nginx-udp.sh LISTEN_PORT BACKEND_PORT RESPONSES), which
// prints the master's PID; the worker is its child.
type Nginx struct {
	Script string
}

// nginxLongFlows is the proxy_responses used for long-lived flows: nginx
// closes a UDP session once it has seen responses × requests datagrams
// back, so a large value keeps sessions open until proxy_timeout.
const nginxLongFlows = 1000000000

// Name implements Target.
func (Nginx) Name() string { return "nginx" }

// ErrMissing reports that a peer is not installed.
var ErrMissing = errors.New("not installed")

// nginxStreamModule is where Debian's libnginx-mod-stream puts the module
// the start script loads.
var nginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

// lookPath finds a peer's binary on PATH, or returns an error wrapping
// [ErrMissing] that names the apt packages to install.
func lookPath(bin, aptPackages string) error {
	if _, err := exec.LookPath(bin); err != nil {
		return fmt.Errorf("%s: %w (apt-get install %s)", bin, ErrMissing, aptPackages)
	}
	return nil
}

// Check reports whether nginx and the script are available.
func (n Nginx) Check() error {
	if _, err := os.Stat(n.Script); err != nil {
		return fmt.Errorf("nginx start script: %w", err)
	}
	if err := lookPath("nginx", "nginx libnginx-mod-stream"); err != nil {
		return err
	}
	if _, err := os.Stat(nginxStreamModule); err != nil {
		return fmt.Errorf("nginx stream module %s: %w (apt-get install libnginx-mod-stream)", nginxStreamModule, ErrMissing)
	}
	return nil
}

// Start implements Target.
func (n Nginx) Start(backend netip.AddrPort, m Mode) (*Instance, error) {
	if err := n.Check(); err != nil {
		return nil, err
	}
	port, err := FreeUDPPort()
	if err != nil {
		return nil, err
	}
	resp := m.Responses
	if resp == 0 {
		resp = nginxLongFlows
	}
	cmd := exec.Command("bash", n.Script, strconv.Itoa(int(port)), strconv.Itoa(int(backend.Port())), strconv.Itoa(resp))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("nginx script: %w: %s", err, stderr.String())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || pid <= 0 {
		return nil, fmt.Errorf("nginx script printed %q, want a PID", out)
	}
	inst := &Instance{Addr: netip.AddrPortFrom(loopback, port), PID: pid}
	confDir := nginxConfDir(pid)
	inst.stop = func() error {
		err := stopGroup(pid)
		if confDir != "" {
			os.RemoveAll(confDir)
		}
		return err
	}
	if err := WaitReply(inst.Addr, m.probe(), startTimeout); err != nil {
		inst.Stop()
		return nil, fmt.Errorf("nginx: %w", err)
	}
	return inst, nil
}

// nginxConfDir returns the script's temporary directory, from the
// master's command line (nginx -c DIR/nginx.conf), if it is one.
func nginxConfDir(pid int) string { return scriptDir(pid, "-c", "/tmp/peer-nginx.") }

// scriptDir returns the temporary directory a peer script made, from the
// argument after flag on pid's command line, if it starts with prefix.
func scriptDir(pid int, flag, prefix string) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return ""
	}
	// nginx rewrites its title ("nginx: master process nginx -c FILE"),
	// so the arguments may be one string separated by spaces.
	args := strings.Fields(strings.ReplaceAll(string(b), "\x00", " "))
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			dir := filepath.Dir(args[i+1])
			if strings.HasPrefix(dir, prefix) {
				return dir
			}
		}
	}
	return ""
}

// stopGroup stops the process group led by pid (the start scripts run the
// peer under setsid): SIGTERM, then SIGKILL if it has not exited within
// 2 s. It waits until the leader is gone.
func stopGroup(pid int) error {
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if !alive(pid) {
			return nil
		}
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if !alive(pid) {
			return nil
		}
	}
	return fmt.Errorf("process group %d survived SIGKILL", pid)
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z'
	}
	return true
}

// limitedBuffer keeps the first 64 KiB written to it.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := 64<<10 - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
