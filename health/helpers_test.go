package health

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fastudp/fastudp/balance"
)

// Timing for monitor tests: short intervals, generous waits (2 shared cores).
const (
	testInterval = 50 * time.Millisecond
	testTimeout  = 200 * time.Millisecond
	waitLimit    = 20 * time.Second
)

// waitFor polls cond until it holds or waitLimit passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newTable returns a Maglev table over addrs with weight 1 each.
func newTable(t *testing.T, addrs ...netip.AddrPort) *balance.Table {
	t.Helper()
	bs := make([]balance.Backend, len(addrs))
	for i, a := range addrs {
		bs[i] = balance.Backend{Addr: a, Weight: 1}
	}
	tb, err := balance.NewMaglev(42, bs, 1021)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// testLogger writes the monitor's log lines to a buffer the test can read.
type testLogger struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *testLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *testLogger) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// newMonitor returns a started monitor logging to the returned logger, closed
// (and checked for leftover goroutines) at the end of the test.
func newMonitor(t *testing.T, o Options) (*Monitor, *testLogger) {
	t.Helper()
	lg := &testLogger{}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(lg, testWriter{t}), nil))
	}
	m := NewMonitor(o)
	ctx, cancel := context.WithCancel(context.Background())
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		m.Close()
		checkNoGoroutines(t)
	})
	return m, lg
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// checkNoGoroutines fails if a goroutine of this package's monitor is alive.
func checkNoGoroutines(t *testing.T) {
	t.Helper()
	var left string
	for range 100 {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		left = ""
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "health.(*Cluster).probeLoop") || strings.Contains(g, "health.(*Cluster).passiveLoop") {
				left += g + "\n\n"
			}
		}
		if left == "" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("goroutines left after Close:\n%s", left)
}

// udpAddr returns the address of a UDP socket.
func udpAddr(c net.PacketConn) netip.AddrPort {
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// startEcho starts a UDP server on loopback that answers each datagram with
// reply(datagram), or not at all when reply returns nil.
func startEcho(t *testing.T, reply func([]byte) []byte) netip.AddrPort {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if r := reply(buf[:n]); r != nil {
				_, _ = c.WriteTo(r, from)
			}
		}
	}()
	t.Cleanup(func() { _ = c.Close(); <-done })
	return udpAddr(c)
}

// closedUDPPort returns a loopback address where nothing listens (the port of
// a socket just closed).
func closedUDPPort(t *testing.T) netip.AddrPort {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := udpAddr(c)
	_ = c.Close()
	return a
}

// needPeer skips (or, under CI=true, fails) a test whose peer binary is
// missing.
func needPeer(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("peer %s missing under CI: %v", path, err)
		}
		t.Skipf("peer %s missing: %v", path, err)
	}
}

const (
	knotd     = "/usr/sbin/knotd"
	startKnot = "/work/shared/peers/start-knot.sh"
)

// knot is a knotd serving example.test on 127.0.0.1:port.
type knot struct {
	t    *testing.T
	port int
	pid  int
	dirs []string // made by start-knot.sh, removed at the end
}

// runKnot starts knot on a free port; it is killed at the end of the test.
func runKnot(t *testing.T) *knot {
	t.Helper()
	needPeer(t, knotd)
	needPeer(t, startKnot)
	k := &knot{t: t, port: freeUDPPort(t)}
	k.start()
	t.Cleanup(func() {
		k.stop()
		for _, d := range k.dirs {
			_ = os.RemoveAll(d)
		}
	})
	return k
}

func (k *knot) addr() netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(k.port))
}

// start starts knot on k.port and waits until it answers.
func (k *knot) start() {
	k.t.Helper()
	out, err := exec.Command(startKnot, strconv.Itoa(k.port)).Output()
	if err != nil {
		k.t.Fatalf("start knot: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		k.t.Fatalf("start knot: pid %q: %v", out, err)
	}
	k.pid = pid
	// knotd -c DIR/knot.conf: remember DIR for the cleanup.
	if cmd, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil {
		args := strings.Split(string(cmd), "\x00")
		for i, a := range args {
			if a == "-c" && i+1 < len(args) && strings.HasPrefix(args[i+1], "/tmp/peer-knot.") {
				k.dirs = append(k.dirs, filepath.Dir(args[i+1]))
			}
		}
	}
	p := &dnsProber{name: "www.example.test.", qtype: 1}
	waitFor(k.t, "knot to answer", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		return p.probe(ctx, k.addr(), make([]byte, maxReply)) == nil
	})
}

// stop kills knot and waits until it is gone.
func (k *knot) stop() {
	if k.pid == 0 {
		return
	}
	pid := k.pid
	k.pid = 0
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for range 500 {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		// A zombie (not our child, so not ours to reap) has closed its sockets.
		if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
			if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freeUDPPort returns a loopback UDP port free at the time of the call.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	return int(closedUDPPort(t).Port())
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func textLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
