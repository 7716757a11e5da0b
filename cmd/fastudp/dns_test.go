package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fastudp/fastudp/dns"
)

// requirePeer finds a peer binary; without it the test skips, or fails
// when CI=true (CI installs every peer).
func requirePeer(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
			if _, serr := os.Stat(filepath.Join(dir, name)); serr == nil {
				return filepath.Join(dir, name)
			}
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed (CI installs it: .ci/run)", name)
		}
		pkg := name
		if name == "knotd" {
			pkg = "knot"
		}
		t.Skipf("%s is not installed: apt-get install %s", name, pkg)
	}
	return p
}

// knotZone is the zone the test's knot serves: 1,000 A records h1..h1000
// and a TXT RRset too large for a 512-byte UDP answer.
func knotZone() string {
	var b strings.Builder
	b.WriteString("$ORIGIN example.test.\n$TTL 3600\n@ IN SOA ns1 hostmaster 1 7200 3600 1209600 3600\n@ IN NS ns1\nns1 IN A 127.0.0.1\n")
	for i := 1; i <= 1000; i++ {
		fmt.Fprintf(&b, "h%d IN A 192.0.2.%d\n", i, i%250+1)
	}
	for i := range 30 {
		fmt.Fprintf(&b, "big IN TXT \"%03d %s\"\n", i, strings.Repeat("x", 180))
	}
	return b.String()
}

// startKnot runs knotd on a free loopback port (UDP and TCP) serving
// knotZone, and stops it when the test ends.
func startKnot(t *testing.T) netip.AddrPort {
	t.Helper()
	addr, _ := startKnotAt(t, freeTCPAndUDPPort(t))
	return addr
}

// startKnotAt runs knotd on port; stop stops it early (it is also stopped
// when the test ends).
func startKnotAt(t *testing.T, port int) (addr netip.AddrPort, stop func()) {
	t.Helper()
	knotd := requirePeer(t, "knotd")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "example.test.zone"), []byte(knotZone()), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`server:
    rundir: "%[1]s"
    user: root:root
    listen: 127.0.0.1@%[2]d
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "%[1]s/db"
log:
  - target: stderr
    any: error
zone:
  - domain: example.test
    file: "%[1]s/example.test.zone"
    storage: "%[1]s"
`, dir, port)
	if err := os.WriteFile(filepath.Join(dir, "knot.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(knotd, "-c", filepath.Join(dir, "knot.conf"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		})
	}
	t.Cleanup(stop)
	addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	if _, err := udpQuery(addr, mustQuery(t, 1, "h1.example.test.", 1, 0), 10*time.Second); err != nil {
		t.Fatalf("knot does not answer: %v\n%s", err, &out)
	}
	return addr, stop
}

// freeTCPAndUDPPort returns a loopback port free for both protocols. It
// picks below the kernel's ephemeral range, so no socket the kernel binds
// automatically meanwhile (a test's client socket, an outgoing TCP
// connection) can take the port before the process under test binds it;
// only another test picking the same random port could, and the range is
// large.
func freeTCPAndUDPPort(t *testing.T) int {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 12000 {
				low = n
			}
		}
	}
	for range 200 {
		port := 10000 + rand.IntN(low-10000)
		u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		if err != nil {
			continue
		}
		l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		u.Close()
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no port free for both UDP and TCP")
	return 0
}

func mustQuery(t testing.TB, id uint16, name string, qtype uint16, udpSize uint16) []byte {
	t.Helper()
	q, err := dns.AppendQuery(nil, id, name, qtype, udpSize)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// udpQuery sends q to addr and returns the first answer with q's ID,
// retrying every 200 ms until timeout.
func udpQuery(addr netip.AddrPort, q []byte, timeout time.Duration) ([]byte, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	buf := make([]byte, 65536)
	var lastErr error
	for end := time.Now().Add(timeout); time.Now().Before(end); {
		if _, err := c.Write(q); err != nil {
			lastErr = err
			time.Sleep(50 * time.Millisecond)
			continue
		}
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			lastErr = err
			continue
		}
		if n >= 2 && dns.ID(buf[:n]) == dns.ID(q) {
			return append([]byte(nil), buf[:n]...), nil
		}
	}
	return nil, fmt.Errorf("no answer from %v within %v: %v", addr, timeout, lastErr)
}

// tcpQuery sends q over a new TCP connection and returns the answer.
func tcpQuery(addr netip.AddrPort, q []byte) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := binary.BigEndian.AppendUint16(nil, uint16(len(q)))
	if _, err := c.Write(append(msg, q...)); err != nil {
		return nil, err
	}
	var n [2]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return nil, err
	}
	a := make([]byte, binary.BigEndian.Uint16(n[:]))
	_, err = io.ReadFull(c, a)
	return a, err
}

// startDNSProxy runs `fastudp run --mode dns` in front of backend and
// returns its listen address and metrics URL.
func startDNSProxy(t *testing.T, backend netip.AddrPort, extra ...string) (netip.AddrPort, string) {
	t.Helper()
	return startDNSProxyN(t, []netip.AddrPort{backend}, extra...)
}

// startDNSProxyN is startDNSProxy with several backends.
func startDNSProxyN(t *testing.T, backends []netip.AddrPort, extra ...string) (netip.AddrPort, string) {
	t.Helper()
	front := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freeTCPAndUDPPort(t)))
	metrics := freeUDPPort(t) // a free port number for the TCP metrics listener is likely free too
	args := []string{"run", "--listen", front.String(), "--mode", "dns", "--shards", "1", "--metrics", metrics, "--log-level", "warn"}
	for _, b := range backends {
		args = append(args, "--backend", b.String())
	}
	args = append(args, extra...)
	cmd := exec.Command(fastudpBin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("fastudp exit: %v; stderr:\n%s", err, &stderr)
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("fastudp did not exit after SIGTERM; stderr:\n%s", &stderr)
		}
		if t.Failed() {
			t.Logf("fastudp stderr:\n%s", &stderr)
		}
	})
	if _, err := udpQuery(front, mustQuery(t, 2, "h2.example.test.", 1, 0), 10*time.Second); err != nil {
		t.Fatalf("proxy does not answer: %v; stderr:\n%s", err, &stderr)
	}
	return front, "http://" + metrics + "/metrics"
}

// metric sums the samples of a metric family in a Prometheus text page.
func metric(t *testing.T, url, name string) float64 {
	t.Helper()
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	out, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	sum := 0.0
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? ([0-9.eE+-]+)$`)
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		sum += v
	}
	return sum
}

// TestDNSModeAnswersMatchKnot: through `fastudp run --mode dns`, every
// answer is byte for byte knot's direct answer (but for the ID, which is
// the client's), for 200 names and both with and without EDNS.
func TestDNSModeAnswersMatchKnot(t *testing.T) {
	knot := startKnot(t)
	front, _ := startDNSProxy(t, knot)
	for i := 1; i <= 200; i++ {
		for _, udp := range []uint16{0, 1232} {
			q := mustQuery(t, uint16(i), fmt.Sprintf("H%d.Example.test.", i), 1, udp)
			direct, err := udpQuery(knot, q, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			proxied, err := udpQuery(front, q, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(direct, proxied) {
				t.Fatalf("h%d (edns %d): through the proxy\n%x\ndirect\n%x", i, udp, proxied, direct)
			}
		}
	}
	nx := mustQuery(t, 7, "nope.example.test.", 1, 0)
	a, err := udpQuery(front, nx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := dns.ParseHeader(a); h.RCode() != 3 {
		t.Fatalf("rcode %s for a missing name, want NXDOMAIN", dns.RCodeString(h.RCode()))
	}
}

// TestDNSModeTCPFallback: a large answer comes back truncated (TC) over
// UDP, passed through untouched; the client's retry over TCP to the same
// address reaches knot through the forwarder and gets every record.
func TestDNSModeTCPFallback(t *testing.T) {
	knot := startKnot(t)
	front, metrics := startDNSProxy(t, knot)
	q := mustQuery(t, 0x5151, "big.example.test.", 16, 0) // TXT, no EDNS: 512-byte limit
	a, err := udpQuery(front, q, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := dns.ParseHeader(a)
	if !h.Truncated() || len(a) > 512 {
		t.Fatalf("UDP answer: TC=%v, %d bytes; want a truncated answer of at most 512 bytes", h.Truncated(), len(a))
	}
	full, err := tcpQuery(front, q)
	if err != nil {
		t.Fatalf("TCP retry through the proxy: %v", err)
	}
	direct, err := tcpQuery(knot, q)
	if err != nil {
		t.Fatal(err)
	}
	fh, _ := dns.ParseHeader(full)
	if fh.Truncated() || fh.ANCount != 30 || !bytes.Equal(full, direct) {
		t.Fatalf("TCP answer: TC=%v, %d answers, %d bytes (direct %d bytes); want the full RRset of 30", fh.Truncated(), fh.ANCount, len(full), len(direct))
	}
	if n := metric(t, metrics, "fastudp_dns_truncated_answers_total"); n < 1 {
		t.Fatalf("truncated answers counted: %v", n)
	}
	if n := metric(t, metrics, "fastudp_dns_tcp_answers_total"); n != 1 {
		t.Fatalf("TCP answers counted: %v, want 1", n)
	}
}

// TestDNSModeDnsperfNoLoss drives dnsperf through the proxy to knot at a
// moderate rate: no query may be lost, and the proxy's counters agree.
func TestDNSModeDnsperfNoLoss(t *testing.T) {
	dnsperf := requirePeer(t, "dnsperf")
	knot := startKnot(t)
	front, metrics := startDNSProxy(t, knot)
	var qs strings.Builder
	for i := 1; i <= 1000; i++ {
		fmt.Fprintf(&qs, "h%d.example.test A\n", i)
	}
	qfile := filepath.Join(t.TempDir(), "queries.txt")
	if err := os.WriteFile(qfile, []byte(qs.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(dnsperf, "-s", front.Addr().String(), "-p", strconv.Itoa(int(front.Port())),
		"-d", qfile, "-l", "3", "-Q", "3000", "-c", "4", "-t", "5").CombinedOutput()
	if err != nil {
		t.Fatalf("dnsperf: %v\n%s", err, out)
	}
	completed := regexp.MustCompile(`Queries completed:\s+(\d+)`).FindSubmatch(out)
	lost := regexp.MustCompile(`Queries lost:\s+(\d+)`).FindSubmatch(out)
	if completed == nil || lost == nil {
		t.Fatalf("cannot read dnsperf's output:\n%s", out)
	}
	nc, _ := strconv.Atoi(string(completed[1]))
	nl, _ := strconv.Atoi(string(lost[1]))
	if nl != 0 || nc < 3000 {
		t.Fatalf("dnsperf: %d completed, %d lost; want 0 lost of at least 3000\n%s", nc, nl, out)
	}
	// +1: startDNSProxy's probe.
	if n := metric(t, metrics, "fastudp_dns_answers_total"); int(n) != nc+1 {
		t.Fatalf("fastudp counted %v answers, dnsperf %d (+1 probe)", n, nc)
	}
	for _, m := range []string{"fastudp_dns_timeouts_total", "fastudp_dns_mismatched_replies_total", "fastudp_dns_shed_total", "fastudp_dns_malformed_queries_total"} {
		if n := metric(t, metrics, m); n != 0 {
			t.Errorf("%s = %v, want 0", m, n)
		}
	}
	t.Logf("dnsperf: %d queries, 0 lost", nc)
}

// metricLabeled returns the value of the sample of name whose labels
// include every "key=\"value\"" pair of match.
func metricLabeled(t *testing.T, url, name string, match ...string) (float64, bool) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(line, m)
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		return v, err == nil
	}
	return 0, false
}

// TestDNSModeHealthMovesTraffic: two knot backends with a DNS probe. One
// is killed: after fall probes it is marked down and every query is
// answered by the other; restarted on its port it comes back after rise
// probes and gets queries again.
func TestDNSModeHealthMovesTraffic(t *testing.T) {
	a, stopA := startKnotAt(t, freeTCPAndUDPPort(t))
	b := startKnot(t)
	front, metrics := startDNSProxyN(t, []netip.AddrPort{a, b}, "--health", "dns", "--health-dns-name", "example.test.", "--affinity", "ip-port")
	up := func(addr netip.AddrPort) float64 {
		v, ok := metricLabeled(t, metrics, "fastudp_backend_up", `backend="`+addr.String()+`"`)
		if !ok {
			t.Fatalf("no fastudp_backend_up for %v", addr)
		}
		return v
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for end := time.Now().Add(30 * time.Second); !cond(); {
			if time.Now().After(end) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Many clients (source ports) so both backends get some.
	ask := func(n int) {
		t.Helper()
		for i := range n {
			if _, err := udpQuery(front, mustQuery(t, uint16(i), fmt.Sprintf("h%d.example.test.", i+1), 1, 0), 10*time.Second); err != nil {
				t.Fatalf("query %d: %v", i, err)
			}
		}
	}
	answered := func(addr netip.AddrPort) float64 {
		v, _ := metricLabeled(t, metrics, "fastudp_dns_answers_total", `backend="`+addr.String()+`"`)
		return v
	}
	ask(40)
	if answered(a) == 0 || answered(b) == 0 {
		t.Fatalf("answers a=%v b=%v: both backends should serve", answered(a), answered(b))
	}
	stopA()
	waitFor("backend a down", func() bool { return up(a) == 0 })
	before := answered(b)
	ask(40) // every query must be answered, all by b
	// Shards publish their counters a moment after the answers leave, so
	// wait for the count to settle rather than reading it at once.
	for end := time.Now().Add(5 * time.Second); answered(b)-before < 40 && time.Now().Before(end); {
		time.Sleep(50 * time.Millisecond)
	}
	if got := answered(b) - before; got != 40 {
		t.Fatalf("b answered %v of 40 queries while a was down", got)
	}
	startKnotAt(t, int(a.Port()))
	waitFor("backend a up again", func() bool { return up(a) == 1 })
	beforeA := answered(a)
	ask(40)
	if answered(a) == beforeA {
		t.Fatal("a gets no queries after coming back")
	}
}

// TestDNSModePassiveHealth: no active probe; a backend that stops answering
// draws ICMP refusals and timeouts, which the passive checks count until it
// is marked down; then every query goes to the other backend.
func TestDNSModePassiveHealth(t *testing.T) {
	a, stopA := startKnotAt(t, freeTCPAndUDPPort(t))
	b := startKnot(t)
	front, metrics := startDNSProxyN(t, []netip.AddrPort{a, b}, "--affinity", "ip-port", "--dns-timeout", "500ms")
	stopA()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for end := time.Now().Add(40 * time.Second); ; {
		// Queries from many source ports keep failing on a until it is down.
		for i := range 20 {
			s, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(front))
			if err != nil {
				t.Fatal(err)
			}
			_, _ = s.Write(mustQuery(t, uint16(i), "h1.example.test.", 1, 0))
			s.Close()
		}
		if v, ok := metricLabeled(t, metrics, "fastudp_backend_up", `backend="`+a.String()+`"`); ok && v == 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the dead backend was never marked down by passive checks")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for i := range 40 {
		if _, err := udpQuery(front, mustQuery(t, uint16(i), fmt.Sprintf("h%d.example.test.", i+1), 1, 0), 10*time.Second); err != nil {
			t.Fatalf("query %d after a was marked down: %v", i, err)
		}
	}
	if v, _ := metricLabeled(t, metrics, "fastudp_health_passive_failures_total", `backend="`+a.String()+`"`); v == 0 {
		t.Error("no passive failures counted for the dead backend")
	}
}
