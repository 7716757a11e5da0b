package target

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastudp/fastudp/bench/loadgen"
	"github.com/fastudp/fastudp/bench/proc"
)

func TestParseMetrics(t *testing.T) {
	text := `# HELP go_memstats_mallocs_total Total number of mallocs.
# TYPE go_memstats_mallocs_total counter
go_memstats_mallocs_total 12345
fastudp_flows_created_total{cluster="default",listener="127.0.0.1:53"} 7
fastudp_flows_created_total{cluster="x",listener="a } b"} 3 1700000000000
fastudp_flows_created_totalish 99
go_gc_duration_seconds{quantile="0.5"} 1.5e-05
`
	got, err := parseMetrics(strings.NewReader(text), map[string]bool{
		"go_memstats_mallocs_total": true, "fastudp_flows_created_total": true, "absent": true})
	if err != nil {
		t.Fatal(err)
	}
	if got["go_memstats_mallocs_total"] != 12345 || got["fastudp_flows_created_total"] != 10 {
		t.Errorf("got %v", got)
	}
	// Per label: sums over the other labels.
	for k, want := range map[string]float64{
		`fastudp_flows_created_total{cluster="default"}`:       7,
		`fastudp_flows_created_total{cluster="x"}`:             3,
		`fastudp_flows_created_total{listener="127.0.0.1:53"}`: 7,
		`fastudp_flows_created_total{listener="a } b"}`:        3,
	} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], want, got)
		}
	}
	if len(got) != 6 {
		t.Errorf("%d keys, want 6: %v", len(got), got)
	}
	sum, err := parseMetrics(strings.NewReader(`s{shard="0",call="recvmmsg"} 5
s{shard="1",call="recvmmsg"} 6
s{shard="0",call="sendmmsg"} 2
s{shard="0",call="a,b"} 1
`), map[string]bool{"s": true})
	if err != nil || sum["s"] != 14 || sum[`s{call="recvmmsg"}`] != 11 || sum[`s{call="sendmmsg"}`] != 2 ||
		sum[`s{shard="0"}`] != 8 || sum[`s{call="a,b"}`] != 1 {
		t.Errorf("got %v, %v", sum, err)
	}
	if _, err := parseMetrics(strings.NewReader("x{a=\"b\" 1\n"), map[string]bool{"x": true}); err == nil {
		t.Error("accepted an unclosed label set")
	}
}

func TestDirectAndWaitEcho(t *testing.T) {
	e, err := loadgen.StartEcho(loadgen.EchoConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	inst, err := Direct{}.Start(e.Addr(), Mode{})
	if err != nil || inst.Addr != e.Addr() || inst.PID != 0 {
		t.Fatalf("Direct.Start = %+v, %v", inst, err)
	}
	if c, err := inst.CPU(); c != 0 || err != nil {
		t.Errorf("direct CPU = %v, %v", c, err)
	}
	if err := WaitEcho(inst.Addr, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	port, _ := FreeUDPPort()
	if err := WaitEcho(netip.AddrPortFrom(loopback, port), 200*time.Millisecond); err == nil {
		t.Error("WaitEcho succeeded against a closed port")
	}
}

// TestNginxMissing checks that a missing peer gives a clear error. The
// benchmark itself decides whether that is fatal (it is when CI=true).
func TestNginxMissing(t *testing.T) {
	n := Nginx{Script: "/nonexistent/start-nginx-udp.sh"}
	if err := n.Check(); err == nil || !strings.Contains(err.Error(), "start script") {
		t.Errorf("Check = %v", err)
	}
	if _, err := n.Start(netip.MustParseAddrPort("127.0.0.1:9"), Mode{}); err == nil {
		t.Error("Start succeeded without a script")
	}
	t.Setenv("PATH", t.TempDir())
	dir := t.TempDir()
	script := dir + "/start.sh"
	if err := os.WriteFile(script, []byte("exit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := (Nginx{Script: script}).Check(); !errors.Is(err, ErrMissing) {
		t.Errorf("Check without nginx on PATH = %v, want ErrMissing", err)
	}
}

// TestNginxLifecycle starts nginx through the peers' script, checks that
// it forwards and that Stop leaves no process or temporary directory.
// Without nginx it skips, except under CI=true, where it fails.
func TestNginxLifecycle(t *testing.T) {
	n := Nginx{Script: filepath.Join("..", "..", "..", "shared", "peers", "start-nginx-udp.sh")}
	if _, err := os.Stat(n.Script); err != nil {
		n.Script = "/work/shared/peers/start-nginx-udp.sh"
	}
	if err := n.Check(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("nginx is required under CI=true: %v", err)
		}
		t.Skipf("nginx not available: %v", err)
	}
	e, err := loadgen.StartEcho(loadgen.EchoConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	inst, err := n.Start(e.Addr(), Mode{Responses: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Stop()
	dir := nginxConfDir(inst.PID)
	kids, err := proc.Descendants(inst.PID)
	if err != nil || len(kids) == 0 || dir == "" {
		t.Fatalf("nginx master %d: workers %v (%v), conf dir %q", inst.PID, kids, err, dir)
	}
	if _, err := inst.CPU(); err != nil {
		t.Error(err)
	}
	if err := inst.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, p := range append(kids, inst.PID) {
		if alive(p) {
			t.Errorf("process %d survived Stop", p)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s not removed: %v", dir, err)
	}
}
