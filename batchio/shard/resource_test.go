package shard

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/core"
)

// Each test here holds one resource condition on one backend and checks
// that the condition is counted (fastudp_resource_errors_total{kind}),
// logged once (rate-limited), and that a live flow on another listener and
// backend keeps working while it holds.

// resourceChildEnv marks a re-executed test binary that must run the test's
// body (in a network namespace, or under a lowered RLIMIT_NOFILE).
const resourceChildEnv = "FASTUDP_TEST_RESOURCE_CHILD"

// clusterPicker sends each cluster's flows to one backend.
type clusterPicker map[core.ClusterID]core.Backend

func (p clusterPicker) Pick(c core.ClusterID, _ uint64) (core.Backend, bool) {
	b, ok := p[c]
	return b, ok
}

// logBuffer collects a logger's text output.
type logBuffer struct{ syncBuffer }

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// lines returns the logged lines that contain s.
func (l *logBuffer) lines(s string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return out
}

// liveAndBad returns group options with listener 0 ("live", cluster 0, to
// backend 0 at live) and listener 1 ("bad", cluster 1, to backend 1 at bad).
func liveAndBad(liveAddr, badAddr string, live, bad netip.AddrPort, liveCC, badCC core.ClusterConfig) GroupOptions {
	liveCC.Cluster, badCC.Cluster = 0, 1
	return GroupOptions{
		Shards: 1,
		Listeners: []Listener{
			{Name: "live", Addr: netip.MustParseAddrPort(liveAddr), Cluster: liveCC},
			{Name: "bad", Addr: netip.MustParseAddrPort(badAddr), Cluster: badCC},
		},
		Backends: 2,
		Picker:   clusterPicker{0: {ID: 0, Addr: live}, 1: {ID: 1, Addr: bad}},
	}
}

// resource sums resource events of kind k over the group's shards.
func (g *testGroup) resource(k ResourceKind) uint64 {
	var v uint64
	for _, s := range g.Shards() {
		v += s.Counters().Resource(k)
	}
	return v
}

// longFlow keeps flows open for the whole test.
var longFlow = core.ClusterConfig{FrontTimeout: time.Minute, BackTimeout: time.Minute}

// checkLogged checks that exactly one line of kind was logged, however many
// events were counted (the rate limit is 10 s per kind).
func checkLogged(t *testing.T, logs *logBuffer, k ResourceKind, events uint64) {
	t.Helper()
	lines := logs.lines("kind=" + k.String())
	if len(lines) != 1 {
		t.Errorf("%d log lines of kind %s for %d events, want 1:\n%s", len(lines), k, events, strings.Join(lines, "\n"))
		return
	}
	if !strings.Contains(lines[0], "level=WARN") || !strings.Contains(lines[0], resourceMessages[k][:20]) {
		t.Errorf("log line %q: want a warning with the kind's message", lines[0])
	}
	t.Logf("%d events, logged once: %s", events, lines[0])
}

func TestResourceBackendRefused(t *testing.T) {
	t.Parallel()
	logs := &logBuffer{}
	o := liveAndBad("127.0.0.1:0", "127.0.0.1:0", echoBackend(t, "good"), closedPort(t), longFlow, longFlow)
	o.Logger = logs.logger()
	g := startGroup(t, o)
	live := newClient(t, g.Addrs()[0])
	live.roundTrip("good:", "before")
	bad := newClient(t, g.Addrs()[1])
	// Each datagram draws an ICMP port unreachable, reported as
	// ECONNREFUSED on the upstream socket's next receive or send.
	deadline := time.Now().Add(waitTimeout)
	for i := 0; g.resource(ResourceBackendRefused) < 5; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("refusals counted: %d after %d datagrams", g.resource(ResourceBackendRefused), i)
		}
		bad.send("x")
		live.roundTrip("good:", fmt.Sprint("during-", i))
		time.Sleep(10 * time.Millisecond)
	}
	live.roundTrip("good:", "after")
	if v := g.backend(1, BackendRefused); v == 0 {
		t.Error("upstream_refused_total of the refusing backend did not move")
	}
	if v := g.backend(0, BackendRefused); v != 0 {
		t.Errorf("the live backend has %d refusals", v)
	}
	checkLogged(t, logs, ResourceBackendRefused, g.resource(ResourceBackendRefused))
}

// blackhole is a backend that reads every datagram and never answers.
func blackhole(t *testing.T) (netip.AddrPort, func() int) {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
			mu.Lock()
			n++
			mu.Unlock()
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

func TestResourceBackendBlackhole(t *testing.T) {
	t.Parallel()
	logs := &logBuffer{}
	hole, got := blackhole(t)
	// The blackholed cluster expects one reply per flow and gives up on a
	// flow after 200 ms without one.
	short := core.ClusterConfig{Responses: 1, FrontTimeout: 200 * time.Millisecond, BackTimeout: 200 * time.Millisecond}
	o := liveAndBad("127.0.0.1:0", "127.0.0.1:0", echoBackend(t, "good"), hole, longFlow, short)
	o.Logger = logs.logger()
	g := startGroup(t, o)
	live := newClient(t, g.Addrs()[0])
	live.roundTrip("good:", "before")
	const flows = 4
	for i := range flows {
		c := newClient(t, g.Addrs()[1])
		c.send(fmt.Sprint("q", i))
		live.roundTrip("good:", fmt.Sprint("during-", i))
	}
	waitUntil(t, waitTimeout, "the blackholed flows to idle out", func() bool {
		live.roundTrip("good:", "meanwhile")
		return g.resource(ResourceBackendNoReply) == flows
	})
	live.roundTrip("good:", "after")
	if n := got(); n != flows {
		t.Errorf("the blackhole read %d datagrams, want %d", n, flows)
	}
	if v := g.backend(1, BackendNoReply); v != flows {
		t.Errorf("no-reply flows of the blackhole = %d, want %d", v, flows)
	}
	if v := g.backend(0, BackendNoReply); v != 0 {
		t.Errorf("no-reply flows of the live backend = %d", v)
	}
	checkLogged(t, logs, ResourceBackendNoReply, flows)
}

// runResourceChild runs test name again in a child process (inside network
// namespace ns when ns is not "") and fails unless it passes there.
func runResourceChild(t *testing.T, name, ns string) {
	t.Helper()
	args := []string{os.Args[0], "-test.run=^" + name + "$", "-test.v", "-test.count=1"}
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), resourceChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: "+name)) {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
}

// newTestNetns creates a namespace with lo up, removed at cleanup.
func newTestNetns(t *testing.T) string {
	t.Helper()
	requireNetnsRoot(t)
	ns := newNetnsName()
	mustRun(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	mustRun(t, "ip", "-n", ns, "link", "set", "lo", "up")
	return ns
}

// echoAt is an echo backend on a fixed address (a fresh namespace has every
// port free; a port-0 bind would take one of the few ephemeral ports).
func echoAt(t *testing.T, addr, name string) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort(append([]byte(name+":"), buf[:n]...), from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// clientAt is newClient bound to a fixed address.
func clientAt(t *testing.T, bind string, to netip.AddrPort) *testClient {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(bind)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &testClient{t: t, conn: c, to: to, buf: make([]byte, 70000), oob: make([]byte, 128)}
}

// TestResourcePortsExhausted runs in a namespace whose ephemeral port range
// holds 4 ports: the live flow takes one, three flows of the other listener
// take the rest, and the next new flows are shed (EAGAIN from connect's
// automatic bind) while the live flow goes on.
func TestResourcePortsExhausted(t *testing.T) {
	if os.Getenv(resourceChildEnv) == "" {
		ns := newTestNetns(t)
		mustRun(t, "ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=40000 40003")
		runResourceChild(t, t.Name(), ns)
		return
	}
	logs := &logBuffer{}
	o := liveAndBad("127.0.0.1:7001", "127.0.0.1:7002", echoAt(t, "127.0.0.1:6001", "good"), echoAt(t, "127.0.0.1:6002", "other"), longFlow, longFlow)
	o.Logger = logs.logger()
	g := startGroup(t, o)
	live := clientAt(t, "127.0.0.1:8000", g.Addrs()[0])
	live.roundTrip("good:", "before")
	served := 0
	for i := range 10 {
		c := clientAt(t, fmt.Sprintf("127.0.0.1:%d", 8001+i), g.Addrs()[1])
		c.send("x")
		if _, err := c.recv(200 * time.Millisecond); err == nil {
			served++
		}
		live.roundTrip("good:", fmt.Sprint("during-", i))
	}
	waitUntil(t, waitTimeout, "open failures counted", func() bool { return g.backend(1, BackendOpenFailures) == uint64(10-served) })
	live.roundTrip("good:", "after")
	if served != 3 {
		t.Errorf("%d flows of the other listener served, want 3 (4 ephemeral ports, one held by the live flow)", served)
	}
	if v := g.resource(ResourcePortsExhausted); v != uint64(10-served) {
		t.Errorf("ports_exhausted = %d, want %d (open_error %d, fd_limit %d)", v, 10-served,
			g.resource(ResourceOpenError), g.resource(ResourceFDLimit))
	}
	checkLogged(t, logs, ResourcePortsExhausted, g.resource(ResourcePortsExhausted))
}

// TestResourceSocketBufferFull runs in a namespace where the second
// backend sits behind a veth whose qdisc lets 1 kB/s through: the upstream
// socket (a 4 KiB send buffer) fills, sends return EAGAIN, datagrams queue
// and then drop; the live flow to a backend on lo goes on.
func TestResourceSocketBufferFull(t *testing.T) {
	if os.Getenv(resourceChildEnv) == "" {
		ns := newTestNetns(t)
		mustRun(t, "ip", "-n", ns, "link", "add", "fudp-slow", "type", "veth", "peer", "name", "fudp-sink")
		mustRun(t, "ip", "-n", ns, "link", "set", "fudp-slow", "up")
		mustRun(t, "ip", "-n", ns, "link", "set", "fudp-sink", "up")
		mustRun(t, "ip", "-n", ns, "addr", "add", "10.199.9.1/24", "dev", "fudp-slow")
		mustRun(t, "ip", "-n", ns, "neigh", "add", "10.199.9.2", "lladdr", "02:00:00:00:00:02", "dev", "fudp-slow")
		if out, err := exec.Command("tc", "-n", ns, "qdisc", "add", "dev", "fudp-slow", "root", "tbf",
			"rate", "8kbit", "burst", "1600", "latency", "60s").CombinedOutput(); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("tc tbf: %v\n%s", err, out)
			}
			t.Skipf("tc tbf: %v\n%s", err, out)
		}
		runResourceChild(t, t.Name(), ns)
		return
	}
	logs := &logBuffer{}
	o := liveAndBad("127.0.0.1:7001", "127.0.0.1:7002", echoAt(t, "127.0.0.1:6001", "good"),
		netip.MustParseAddrPort("10.199.9.2:9"), longFlow, longFlow)
	o.SocketSendBuffer = 4096
	o.Logger = logs.logger()
	g := startGroup(t, o)
	live := clientAt(t, "127.0.0.1:8000", g.Addrs()[0])
	live.roundTrip("good:", "before")
	slow := clientAt(t, "127.0.0.1:8001", g.Addrs()[1])
	payload := strings.Repeat("s", 1000)
	const sent = 2 * upstreamQueueLimit
	for i := range sent {
		slow.send(payload)
		if i%16 == 0 {
			live.roundTrip("good:", fmt.Sprint("during-", i))
		}
	}
	waitUntil(t, waitTimeout, "every datagram read", func() bool { return g.Shards()[0].Counters().Listener(1, ListenerRxDatagrams) == sent })
	waitUntil(t, waitTimeout, "the queue to overflow", func() bool { return g.backend(1, BackendQueueFull) > 0 })
	live.roundTrip("good:", "after")
	if g.resource(ResourceSocketBufferFull) == 0 {
		t.Fatal("socket_buffer_full not counted")
	}
	if v := g.backend(0, BackendQueueFull) + g.backend(0, BackendSendErrors); v != 0 {
		t.Errorf("the live backend lost %d datagrams", v)
	}
	t.Logf("sent %d: to the slow backend's socket %d, dropped on a full queue %d",
		sent, g.backend(1, BackendDatagramsIn), g.backend(1, BackendQueueFull))
	checkLogged(t, logs, ResourceSocketBufferFull, g.resource(ResourceSocketBufferFull))
}

// TestResourceFDLimit runs in a child process that lowers its own soft
// RLIMIT_NOFILE to a few descriptors above those open: new flows are shed
// (EMFILE) while the live flow goes on.
func TestResourceFDLimit(t *testing.T) {
	if os.Getenv(resourceChildEnv) == "" {
		t.Parallel()
		runResourceChild(t, t.Name(), "")
		return
	}
	logs := &logBuffer{}
	o := liveAndBad("127.0.0.1:0", "127.0.0.1:0", echoBackend(t, "good"), echoBackend(t, "other"), longFlow, longFlow)
	o.Logger = logs.logger()
	g := startGroup(t, o)
	live := newClient(t, g.Addrs()[0])
	live.roundTrip("good:", "before")
	const flows = 20
	clients := make([]*testClient, flows)
	for i := range clients {
		clients[i] = newClient(t, g.Addrs()[1])
	}
	// Every client socket is open before the limit is lowered.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	const spare = 4
	lim := unix.Rlimit{Cur: uint64(len(ents) + spare), Max: old.Max}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Setrlimit(unix.RLIMIT_NOFILE, &old) })
	t.Logf("RLIMIT_NOFILE soft limit %d (%d open)", lim.Cur, len(ents))
	served := 0
	for i, c := range clients {
		c.send("x")
		if _, err := c.recv(200 * time.Millisecond); err == nil {
			served++
		}
		live.roundTrip("good:", fmt.Sprint("during-", i))
	}
	waitUntil(t, waitTimeout, "open failures counted", func() bool { return g.backend(1, BackendOpenFailures) == uint64(flows-served) })
	live.roundTrip("good:", "after")
	// Reading /proc/self/fd held a descriptor of its own, and the runtime
	// may have closed one since: allow a little slack over spare.
	if served == 0 || served > spare+3 {
		t.Errorf("%d of %d flows served under a limit of %d spare descriptors", served, flows, spare)
	}
	if v := g.resource(ResourceFDLimit); v != uint64(flows-served) {
		t.Errorf("fd_limit = %d, want %d", v, flows-served)
	}
	checkLogged(t, logs, ResourceFDLimit, g.resource(ResourceFDLimit))
}

func TestClassifyOpenError(t *testing.T) {
	for _, c := range []struct {
		err  error
		want ResourceKind
	}{
		{fmt.Errorf("batchio: socket: %w", unix.EMFILE), ResourceFDLimit},
		{fmt.Errorf("batchio: socket: %w", unix.ENFILE), ResourceFDLimit},
		{fmt.Errorf("batchio: bind: %w", unix.EADDRINUSE), ResourcePortsExhausted},
		{fmt.Errorf("batchio: connect: %w", unix.EAGAIN), ResourcePortsExhausted},
		{fmt.Errorf("batchio: connect: %w", unix.EADDRNOTAVAIL), ResourcePortsExhausted},
		{fmt.Errorf("batchio: socket: %w", unix.ENOBUFS), ResourceOpenError},
		{errors.New("no upstream source address of the family"), ResourceOpenError},
	} {
		if got := ClassifyOpenError(c.err); got != c.want {
			t.Errorf("ClassifyOpenError(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if !isNoBufs(fmt.Errorf("x: %w", syscall.ENOBUFS)) || isNoBufs(unix.EAGAIN) {
		t.Error("isNoBufs")
	}
	if batchio.Classify(unix.ENOBUFS) != batchio.KindOther {
		t.Error("ENOBUFS must not queue (it is not EAGAIN)")
	}
}

// TestResourceLogRateLimit checks the limiter itself: one line per kind per
// interval, and the next line says how many events were not logged.
func TestResourceLogRateLimit(t *testing.T) {
	logs := &logBuffer{}
	s, err := New(Options{Picker: clusterPicker{}, Logger: logs.logger(), Backends: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.closeAll()
	s.start = time.Now()
	be := netip.MustParseAddrPort("192.0.2.1:53")
	for range 5 {
		s.resourceEvent(ResourceBackendRefused, 0, be, unix.ECONNREFUSED)
	}
	s.resourceEvent(ResourceFDLimit, 0, be, unix.EMFILE)
	if n := len(logs.lines("kind=backend_refused")); n != 1 {
		t.Fatalf("%d lines within the interval, want 1", n)
	}
	if n := len(logs.lines("kind=fd_limit")); n != 1 {
		t.Fatalf("another kind: %d lines, want 1 (kinds are limited separately)", n)
	}
	s.res.next[ResourceBackendRefused] = s.now() // the interval has passed
	s.resourceEvent(ResourceBackendRefused, 0, be, unix.ECONNREFUSED)
	lines := logs.lines("kind=backend_refused")
	if len(lines) != 2 || !strings.Contains(lines[1], "suppressed=4") || !strings.Contains(lines[1], "address=192.0.2.1:53") {
		t.Fatalf("after the interval: %q", lines)
	}
	s.counters.publish()
	if v := s.counters.Resource(ResourceBackendRefused); v != 6 {
		t.Errorf("counted %d, want 6", v)
	}
}

func TestFDCeiling(t *testing.T) {
	for _, c := range []struct {
		limit uint64
		want  int
	}{{0, 0}, {128, 96}, {1024, 896}, {1 << 20, 1<<20 - FDReserve}, {1 << 40, 0}} {
		if got := FDCeiling(c.limit); got != c.want {
			t.Errorf("FDCeiling(%d) = %d, want %d", c.limit, got, c.want)
		}
	}
}
