package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// echoWithTCP is a named UDP echo plus a TCP listener on the same port, for
// TCP health probes; closing the TCP listener fails the probes while the
// UDP service goes on.
func echoWithTCP(t *testing.T, name string) (netip.AddrPort, net.Listener) {
	t.Helper()
	for range 50 {
		addr := namedEcho(t, name)
		l, err := net.Listen("tcp4", addr.String())
		if err != nil {
			continue // the port is taken for TCP: try another
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		return addr, l
	}
	t.Fatal("no port free for UDP and TCP")
	return netip.AddrPort{}, nil
}

// TestDownFlowsClose: with down_flows = "close", flows pinned to a backend
// that health checks take down move to a healthy backend at their next
// datagram, losing nothing; with "continue" they stay.
func TestDownFlowsClose(t *testing.T) {
	for _, policy := range []string{"close", "continue"} {
		t.Run(policy, func(t *testing.T) {
			a, aTCP := echoWithTCP(t, "a")
			b, _ := echoWithTCP(t, "b")
			front := netip.MustParseAddrPort(freeUDPPort(t))
			metrics := freeUDPPort(t)
			file := filepath.Join(t.TempDir(), "fastudp.toml")
			conf := fmt.Sprintf(`shards = 2
metrics = %q
grace_period = "1s"
[[listener]]
name = "l"
address = %q
cluster = "c"
[[cluster]]
name = "c"
affinity = "ip-port"
down_flows = %q
  [cluster.health]
  type = "tcp"
  interval = "200ms"
  timeout = "200ms"
  rise = 1
  fall = 2
  [[cluster.backend]]
  name = "a"
  address = %q
  [[cluster.backend]]
  name = "b"
  address = %q
`, metrics, front, policy, a, b)
			if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			_, stderr := startFromFile(t, file)
			waitEcho(t, front, stderr)
			flows, stop := startSteadyFlows(t, front, 20, 20*time.Millisecond)
			time.Sleep(time.Second)
			onA := map[int]bool{}
			for i, f := range flows {
				f.mu.Lock()
				onA[i] = f.backends["a"] > 0
				f.mu.Unlock()
			}
			nA := 0
			for _, on := range onA {
				if on {
					nA++
				}
			}
			if nA == 0 {
				t.Fatal("no flow on a")
			}
			aTCP.Close()
			url := "http://" + metrics + "/metrics"
			for end := time.Now().Add(20 * time.Second); ; {
				if v, ok := metricLabeled(t, url, "fastudp_backend_up", `backend="`+a.String()+`"`); ok && v == 0 {
					break
				}
				if time.Now().After(end) {
					t.Fatal("a never marked down")
				}
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(time.Second)
			stop()
			moved := 0
			for i, f := range flows {
				if f.answered != f.sent {
					t.Errorf("flow %d: %d sent, %d answered", i, f.sent, f.answered)
				}
				switch {
				case !onA[i] && len(f.backends) != 1:
					t.Errorf("flow %d on b moved: %v", i, f.backends)
				case onA[i] && policy == "continue" && len(f.backends) != 1:
					t.Errorf("flow %d on a moved under continue: %v", i, f.backends)
				case onA[i] && policy == "close":
					if f.backends["b"] == 0 {
						t.Errorf("flow %d on a did not move to b: %v", i, f.backends)
					}
					moved++
				}
			}
			if policy == "close" && moved != nA {
				t.Errorf("%d of %d flows on a moved", moved, nA)
			}
			t.Logf("%s: %d flows on a, %d moved", policy, nA, moved)
		})
	}
}
