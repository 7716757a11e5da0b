package main

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// namedEcho answers every datagram with "<name>:" + payload.
func namedEcho(t *testing.T, name string) netip.AddrPort {
	t.Helper()
	return udpResponder(t, 0, func(b []byte, _ netip.AddrPort) []byte { return append([]byte(name+":"), b...) })
}

// udpResponder listens on a free 127.0.0.1 port (with a receive buffer of
// rcvbuf bytes unless 0) and answers every datagram with what reply returns
// for it, until the test ends.
func udpResponder(t *testing.T, rcvbuf int, reply func(b []byte, from netip.AddrPort) []byte) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if rcvbuf > 0 {
		_ = c.SetReadBuffer(rcvbuf)
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort(reply(buf[:n], from), from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// steadyFlow is one client socket sending a numbered datagram every period
// and recording which backend answered each.
type steadyFlow struct {
	mu       sync.Mutex
	backends map[string]int
	sent     int
	answered int
}

func startSteadyFlows(t *testing.T, front netip.AddrPort, n int, period time.Duration) ([]*steadyFlow, func()) {
	t.Helper()
	flows := make([]*steadyFlow, n)
	for i := range flows {
		flows[i] = &steadyFlow{backends: map[string]int{}}
	}
	stop := clientFlows(t, front, n, period, 0, 500*time.Millisecond,
		func(i, seq int, c *net.UDPConn) {
			f := flows[i]
			f.mu.Lock()
			f.sent++
			f.mu.Unlock()
			_, _ = c.Write([]byte(fmt.Sprintf("seq %d", seq)))
		},
		func(i int, reply []byte) {
			f := flows[i]
			name, _, _ := strings.Cut(string(reply), ":")
			f.mu.Lock()
			f.backends[name]++
			f.answered++
			f.mu.Unlock()
		})
	return flows, stop
}

// clientFlows dials n client sockets to front (with a receive buffer of
// rcvbuf bytes unless 0). On socket i a writer calls write(i, seq, conn)
// every period, seq counting from 0, and a reader hands every reply to
// read(i, reply). The returned stop ends the writers, waits drain for the
// last replies, closes the sockets and waits for the goroutines.
func clientFlows(t *testing.T, front netip.AddrPort, n int, period time.Duration, rcvbuf int, drain time.Duration,
	write func(i, seq int, c *net.UDPConn), read func(i int, reply []byte)) func() {
	t.Helper()
	conns := make([]*net.UDPConn, n)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range conns {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(front))
		if err != nil {
			t.Fatal(err)
		}
		if rcvbuf > 0 {
			_ = c.SetReadBuffer(rcvbuf)
		}
		conns[i] = c
		wg.Add(2)
		go func() { // reader
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				read(i, buf[:n])
			}
		}()
		go func() { // writer
			defer wg.Done()
			tick := time.NewTicker(period)
			defer tick.Stop()
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				write(i, seq, c)
			}
		}()
	}
	return func() {
		close(stop)
		time.Sleep(drain) // the last replies
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}
}

// startFromFile runs `fastudp run --config file` and returns a function that
// sends it a signal and its stderr.
func startFromFile(t *testing.T, file string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	cmd := exec.Command(fastudpBin, "run", "--config", file)
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("fastudp stderr:\n%s", &stderr)
		}
	})
	return cmd, &stderr
}

// startKilledAtEnd starts cmd with its stderr captured; cleanup kills it
// (graceful stops are tested elsewhere; this would wait out the grace period)
// and logs its stderr if the test failed.
func startKilledAtEnd(t *testing.T, cmd *exec.Cmd) *lockedBuffer {
	t.Helper()
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("stderr:\n%s", stderr)
		}
	})
	return stderr
}

// lockedBuffer is a bytes.Buffer safe for a writer goroutine (the child's
// stderr copier) and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func reloadConfig(front netip.AddrPort, backends map[string]netip.AddrPort, weights map[string]int, order []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "shards = 2\nlog_level = \"info\"\ngrace_period = \"1s\"\n[[listener]]\nname = \"l\"\naddress = %q\ncluster = \"c\"\n", front.String())
	b.WriteString("[[cluster]]\nname = \"c\"\naffinity = \"ip-port\"\n")
	for _, name := range order {
		w := weights[name]
		if w == 0 {
			w = 100
		}
		fmt.Fprintf(&b, "  [[cluster.backend]]\n  name = %q\n  address = %q\n  weight = %d\n", name, backends[name].String(), w)
	}
	return b.String()
}

// TestReloadUnderLoad: under steady load over three backends, a SIGHUP
// reload removes one, another re-adds it and changes a weight, and an
// invalid file is refused. Live flows on untouched backends lose nothing and
// keep their backend; flows on the removed backend continue; new flows
// follow the new table.
func TestReloadUnderLoad(t *testing.T) {
	backends := map[string]netip.AddrPort{"a": namedEcho(t, "a"), "b": namedEcho(t, "b"), "c": namedEcho(t, "c")}
	front := netip.MustParseAddrPort(freeUDPPort(t))
	file := filepath.Join(t.TempDir(), "fastudp.toml")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(reloadConfig(front, backends, nil, []string{"a", "b", "c"}))
	cmd, stderr := startFromFile(t, file)
	waitEcho(t, front, stderr)
	flows, stop := startSteadyFlows(t, front, 30, 20*time.Millisecond)
	time.Sleep(time.Second)
	sample := func(n int) map[string]int {
		t.Helper()
		return sampleNewFlows(t, front, n)
	}
	hup := func(want string) {
		t.Helper()
		before := strings.Count(stderr.String(), want)
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		for end := time.Now().Add(10 * time.Second); strings.Count(stderr.String(), want) == before; {
			if time.Now().After(end) {
				t.Fatalf("no %q in the log after SIGHUP:\n%s", want, stderr)
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
	}
	// 1. Remove c.
	write(reloadConfig(front, backends, nil, []string{"a", "b"}))
	hup("msg=reloaded")
	if got := sample(60); got["c"] != 0 || got["a"] == 0 || got["b"] == 0 {
		t.Fatalf("new flows after removing c: %v", got)
	}
	// 2. An invalid file is refused; the running config stays.
	write("this is not toml =")
	hup("reload refused")
	if got := sample(30); got["c"] != 0 {
		t.Fatalf("new flows after a refused reload: %v", got)
	}
	// 3. c back, a's weight up.
	write(reloadConfig(front, backends, map[string]int{"a": 300}, []string{"a", "b", "c"}))
	hup("msg=reloaded")
	if got := sample(90); got["c"] == 0 || got["a"] <= got["b"] {
		t.Fatalf("new flows after re-adding c with a at weight 300: %v", got)
	}
	time.Sleep(500 * time.Millisecond)
	stop()
	for i, f := range flows {
		if len(f.backends) != 1 {
			t.Errorf("flow %d moved between backends: %v", i, f.backends)
		}
		if f.answered != f.sent {
			t.Errorf("flow %d: %d sent, %d answered (backends %v)", i, f.sent, f.answered, f.backends)
		}
	}
}

// waitEcho waits until the proxy at front answers a datagram.
func waitEcho(t *testing.T, front netip.AddrPort, stderr fmt.Stringer) {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(front))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
		_, _ = c.Write([]byte("probe"))
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.Read(buf); err == nil {
			return
		}
	}
	t.Fatalf("the proxy at %v does not answer:\n%s", front, stderr)
}

// sampleNewFlows opens n new flows (fresh sockets) through front and counts
// which backend answered each. The sockets stay open until the test ends:
// a closed one's port could be reused by the next, whose datagram would then
// join the old flow (still live in the proxy) instead of opening a new one.
func sampleNewFlows(t *testing.T, front netip.AddrPort, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(front))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_, _ = c.Write([]byte("new"))
		buf := make([]byte, 100)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, err := c.Read(buf)
		if err != nil {
			t.Fatalf("new flow: %v", err)
		}
		name, _, _ := strings.Cut(string(buf[:k]), ":")
		got[name]++
	}
	return got
}

// TestAffinityDatagram: with affinity = "datagram" one client socket's
// datagrams spread over the backends, and every one is answered.
func TestAffinityDatagram(t *testing.T) {
	backends := map[string]netip.AddrPort{"a": namedEcho(t, "a"), "b": namedEcho(t, "b")}
	front := netip.MustParseAddrPort(freeUDPPort(t))
	file := filepath.Join(t.TempDir(), "fastudp.toml")
	conf := strings.Replace(reloadConfig(front, backends, nil, []string{"a", "b"}), `affinity = "ip-port"`, `affinity = "datagram"`, 1)
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr := startFromFile(t, file)
	waitEcho(t, front, stderr)
	flows, stop := startSteadyFlows(t, front, 1, 10*time.Millisecond)
	time.Sleep(time.Second)
	stop()
	f := flows[0]
	if f.answered != f.sent || f.backends["a"] == 0 || f.backends["b"] == 0 {
		t.Fatalf("one socket's datagrams: %d sent, %d answered, by backend %v", f.sent, f.answered, f.backends)
	}
}
