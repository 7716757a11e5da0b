package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fastudp/fastudp/dns"
)

// dnsBurst sends n queries (distinct IDs from first) from one client socket
// through front at once and returns how many were answered, reading until
// the answers stop for half a second.
func dnsBurst(t *testing.T, front netip.AddrPort, first uint16, n int) int {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(front))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range n {
		if _, err := c.Write(mustQuery(t, first+uint16(i), "burst.example.test.", 1, 0)); err != nil {
			t.Fatal(err)
		}
	}
	got := map[uint16]bool{}
	buf := make([]byte, 2048)
	for {
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		k, err := c.Read(buf)
		if err != nil {
			return len(got)
		}
		if id := dns.ID(buf[:k]); id >= first && id < first+uint16(n) {
			got[id] = true
		}
	}
}

// waitLogCount waits until the log holds line at least n times.
func waitLogCount(t *testing.T, stderr fmt.Stringer, line string, n int) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); strings.Count(stderr.String(), line) < n; {
		if time.Now().After(end) {
			t.Fatalf("%q not logged %d times:\n%s", line, n, stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSourceLimitReloadDNS: source_flow_rate limits a DNS-mode listener's
// queries per source (burst 4 at 1/s: the probe's query and three more),
// a reload that turns it off applies at once, and one that turns it on
// again (burst 2, a fresh table) limits again.
func TestSourceLimitReloadDNS(t *testing.T) {
	be := udpResponder(t, 0, func(b []byte, _ netip.AddrPort) []byte {
		if len(b) > 2 {
			b[2] |= 0x80 // echo the query as its answer
		}
		return b
	})
	front := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freeTCPAndUDPPort(t)))
	file := filepath.Join(t.TempDir(), "fastudp.toml")
	write := func(rate, burst int) {
		t.Helper()
		conf := fmt.Sprintf("shards = 1\nsource_flow_rate = %d\nsource_flow_burst = %d\n[[listener]]\nname = \"l\"\naddress = %q\ncluster = \"c\"\n"+
			"[[cluster]]\nname = \"c\"\nmode = \"dns\"\n  [[cluster.backend]]\n  address = %q\n", rate, burst, front.String(), be.String())
		if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(1, 4)
	cmd, stderr := startFromFile(t, file)
	t0 := time.Now()
	if _, err := udpQuery(front, mustQuery(t, 1, "probe.example.test.", 1, 0), 10*time.Second); err != nil {
		t.Fatalf("proxy does not answer: %v", err)
	}
	got := dnsBurst(t, front, 100, 10)
	if most := 3 + int(time.Since(t0)/time.Second); got < 3 || got > most {
		t.Fatalf("%d of 10 queries answered under 1 query/s, burst 4; want 3..%d", got, most)
	}
	const logged = "per-source new-flow limit changed"
	write(0, 4)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLogCount(t, stderr, logged, 1)
	if got := dnsBurst(t, front, 200, 10); got != 10 {
		t.Fatalf("%d of 10 queries answered with the limit off, want 10", got)
	}
	write(1, 2)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLogCount(t, stderr, logged, 2)
	t1 := time.Now()
	got = dnsBurst(t, front, 300, 10)
	if most := 2 + int(time.Since(t1)/time.Second); got < 2 || got > most {
		t.Fatalf("%d of 10 queries answered with the limit on again (burst 2); want 2..%d", got, most)
	}
	if strings.Contains(stderr.String(), "need a restart") {
		t.Fatalf("the reload asked for a restart:\n%s", stderr)
	}
}
