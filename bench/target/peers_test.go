package target

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastudp/fastudp/bench/loadgen"
	"github.com/fastudp/fastudp/bench/proc"
)

// peerScript finds a script of ../shared/peers.
func peerScript(name string) string {
	p := filepath.Join("..", "..", "..", "shared", "peers", name)
	if _, err := os.Stat(p); err != nil {
		return filepath.Join("/work/shared/peers", name)
	}
	return p
}

// requirePeer skips the test when the peer is missing, except under
// CI=true, where every peer must be installed (.ci/run installs them).
func requirePeer(t *testing.T, c Checker) {
	t.Helper()
	if err := c.Check(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("required under CI=true: %v", err)
		}
		t.Skipf("not available: %v", err)
	}
}

// TestMissingPeers checks that each peer, with an empty PATH, says which
// apt package to install.
func TestMissingPeers(t *testing.T) {
	script := filepath.Join(t.TempDir(), "start.sh")
	if err := os.WriteFile(script, []byte("exit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", t.TempDir())
	for _, tc := range []struct {
		name string
		c    Checker
		want string
	}{
		{"nginx", Nginx{Script: script}, "apt-get install nginx libnginx-mod-stream"},
		{"dnsdist", Dnsdist{Script: script}, "apt-get install dnsdist"},
		{"socat", Socat{}, "apt-get install socat"},
		{"knot", Knot{Script: script}, "apt-get install knot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Check()
			if !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Check = %v, want ErrMissing naming %q", err, tc.want)
			}
		})
	}
	if err := (Dnsdist{Script: "/nonexistent.sh"}).Check(); err == nil || !strings.Contains(err.Error(), "start script") {
		t.Errorf("Dnsdist without script: %v", err)
	}
}

func dnsProbe(t *testing.T) []byte {
	q, err := loadgen.EncodeQuery(nil, 7, loadgen.Query{Name: "www.example.test", Type: 1})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// checkLifecycle checks that inst forwards probe-shaped traffic, is charged
// CPU, and leaves no process behind after Stop.
func checkLifecycle(t *testing.T, inst *Instance, cfg loadgen.Config, maxLoss float64) {
	t.Helper()
	defer inst.Stop()
	cfg.Target = inst.Addr
	g, err := loadgen.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	g.Start()
	time.Sleep(500 * time.Millisecond)
	g.Stop(2 * time.Second)
	if s := g.Stats(0); s.Received == 0 || s.Loss() > maxLoss {
		t.Errorf("through the peer: %+v (loss %v)", s, s.Loss())
	}
	if _, err := inst.CPU(); err != nil {
		t.Error(err)
	}
	kids, _ := proc.Descendants(inst.PID)
	if err := inst.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, p := range append(kids, inst.PID) {
		if alive(p) {
			t.Errorf("process %d survived Stop", p)
		}
	}
}

func TestDnsdistLifecycle(t *testing.T) {
	d := Dnsdist{Script: peerScript("start-dnsdist.sh")}
	requirePeer(t, d)
	srv, err := loadgen.StartDNS(loadgen.DNSConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	inst, err := d.Start(srv.Addr(), Mode{Responses: 1, Probe: dnsProbe(t)})
	if err != nil {
		t.Fatal(err)
	}
	dir := scriptDir(inst.PID, "-C", "/tmp/peer-dnsdist.")
	checkLifecycle(t, inst, loadgen.Config{Conns: 4, DNS: loadgen.GenerateQueries(10), Timeout: time.Second}, 0.01)
	if dir == "" {
		t.Error("no config directory found")
	} else if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s not removed", dir)
	}
}

func TestSocatLifecycle(t *testing.T) {
	s := Socat{Idle: 1}
	requirePeer(t, s)
	e, err := loadgen.StartEcho(loadgen.EchoConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	inst, err := s.Start(e.Addr(), Mode{})
	if err != nil {
		t.Fatal(err)
	}
	// socat loses the datagrams of other clients that arrive while it
	// forks for a new one (its listening socket is handed to the child
	// and reopened): a short timeout resends them.
	checkLifecycle(t, inst, loadgen.Config{Conns: 4, Timeout: 50 * time.Millisecond}, 0.5)
}

func TestKnotLifecycle(t *testing.T) {
	k := Knot{Script: peerScript("start-knot.sh")}
	requirePeer(t, k)
	inst, err := k.Start(dnsProbe(t))
	if err != nil {
		t.Fatal(err)
	}
	checkLifecycle(t, inst, loadgen.Config{Conns: 4, DNS: loadgen.GenerateQueries(10), Timeout: time.Second}, 0.01)
}
