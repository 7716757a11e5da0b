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
)

// burstFlows opens n new flows (fresh sockets) through front at once and
// returns how many were answered within two seconds.
func burstFlows(t *testing.T, front netip.AddrPort, n int) int {
	t.Helper()
	conns := make([]*net.UDPConn, n)
	for i := range conns {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(front))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
		_, _ = c.Write([]byte("new"))
	}
	answered := 0
	deadline := time.Now().Add(2 * time.Second)
	buf := make([]byte, 100)
	for _, c := range conns {
		_ = c.SetReadDeadline(deadline)
		if _, err := c.Read(buf); err == nil {
			answered++
		}
	}
	return answered
}

// TestSourceLimitReload: source_flow_rate limits one client address's new
// flows (burst 4: the probe's flow and three more), and a reload that turns
// it off applies at once.
func TestSourceLimitReload(t *testing.T) {
	be := namedEcho(t, "a")
	front := netip.MustParseAddrPort(freeUDPPort(t))
	file := filepath.Join(t.TempDir(), "fastudp.toml")
	conf := func(rate int) string {
		return fmt.Sprintf("shards = 1\nsource_flow_rate = %d\nsource_flow_burst = 4\n[[listener]]\nname = \"l\"\naddress = %q\ncluster = \"c\"\n"+
			"[[cluster]]\nname = \"c\"\n  [[cluster.backend]]\n  address = %q\n", rate, front.String(), be.String())
	}
	if err := os.WriteFile(file, []byte(conf(1)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd, stderr := startFromFile(t, file)
	t0 := time.Now()
	waitEcho(t, front, stderr)
	got := burstFlows(t, front, 10)
	// One token per second comes back after the probe's flow took one.
	if most := 3 + int(time.Since(t0)/time.Second); got < 3 || got > most {
		t.Fatalf("%d of 10 new flows answered under 1 flow/s, burst 4; want 3..%d", got, most)
	}
	if err := os.WriteFile(file, []byte(conf(0)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(10 * time.Second); !strings.Contains(stderr.String(), "per-source new-flow limit changed"); {
		if time.Now().After(end) {
			t.Fatalf("no reload in the log:\n%s", stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := burstFlows(t, front, 10); got != 10 {
		t.Fatalf("%d of 10 new flows answered with the limit off, want 10", got)
	}
	if strings.Contains(stderr.String(), "need a restart") {
		t.Fatalf("the reload asked for a restart:\n%s", stderr)
	}
}
