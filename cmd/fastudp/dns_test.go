package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
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
	knotd := requirePeer(t, "knotd")
	dir := t.TempDir()
	port := freeTCPAndUDPPort(t)
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
	t.Cleanup(func() {
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
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	if _, err := udpQuery(addr, mustQuery(t, 1, "h1.example.test.", 1, 0), 10*time.Second); err != nil {
		t.Fatalf("knot does not answer: %v\n%s", err, &out)
	}
	return addr
}

// freeTCPAndUDPPort returns a loopback port free for both protocols.
func freeTCPAndUDPPort(t *testing.T) int {
	t.Helper()
	for range 50 {
		u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
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
	front := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freeTCPAndUDPPort(t)))
	metrics := freeUDPPort(t) // a free port number for the TCP metrics listener is likely free too
	args := append([]string{"run", "--listen", front.String(), "--backend", backend.String(), "--mode", "dns",
		"--shards", "1", "--metrics", metrics, "--log-level", "warn"}, extra...)
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
