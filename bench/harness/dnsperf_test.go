package harness

import (
	"bytes"
	"context"
	"flag"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fastudp/fastudp/bench/floor"
)

// floorEnv makes the test binary act as `fastudp bench floor dns|relay
// --listen ADDR --backend ADDR --responses N`, so the floor target runs
// without building cmd/fastudp.
const floorEnv = "FASTUDP_HARNESS_TEST_FLOOR"

func TestMain(m *testing.M) {
	if os.Getenv(floorEnv) == "1" {
		os.Exit(floorMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func floorMain(args []string) int {
	if len(args) < 3 || args[0] != "bench" || args[1] != "floor" {
		return 2
	}
	fs := flag.NewFlagSet("floor", flag.ContinueOnError)
	listen := fs.String("listen", "", "")
	backend := fs.String("backend", "", "")
	responses := fs.Int("responses", 0, "")
	if fs.Parse(args[3:]) != nil {
		return 2
	}
	var cfg floor.Config
	var err error
	if cfg.Listen, err = netip.ParseAddrPort(*listen); err != nil {
		return 2
	}
	if cfg.Backend, err = netip.ParseAddrPort(*backend); err != nil {
		return 2
	}
	cfg.Responses = *responses
	start := floor.StartRelay
	if args[2] == "dns" {
		start = floor.StartDNS
	}
	f, err := start(cfg)
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
	f.Close()
	return 0
}

// peersDir finds ../shared/peers from the repository root.
func peersDir() string {
	p := filepath.Join("..", "..", "..", "shared", "peers")
	if _, err := os.Stat(p); err != nil {
		return "/work/shared/peers"
	}
	return p
}

func TestParseDnsperf(t *testing.T) {
	out := `[Timeout] Query timed out: msg id 7
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         352321
  Queries completed:    352300 (99.99%)
  Queries lost:         21 (0.01%)

  Response codes:       NOERROR 352290 (100.00%), SERVFAIL 10 (0.00%)
  Average packet size:  request 34, response 50
  Run time (s):         2.000084
  Queries per second:   176153.101570

  Average Latency (s):  0.000297 (min 0.000012, max 0.002685)
  Latency StdDev (s):   0.000236
`
	st, err := parseDnsperf(out)
	if err != nil {
		t.Fatal(err)
	}
	want := dnsperfStats{Sent: 352321, Completed: 352300, Lost: 21, NoError: 352290, RunTime: 2.000084, QPS: 176153.101570, AvgLatency: 0.000297}
	if st != want {
		t.Errorf("got %+v\nwant %+v", st, want)
	}
	if _, err := parseDnsperf("[Status] Command line: dnsperf\nError: could not open file\n"); err == nil {
		t.Error("parsed output without statistics")
	}
}

func TestDnsperfReport(t *testing.T) {
	o := Options{Scenarios: []string{"dnsperf"}, Targets: []string{"fastudp-dns", "dnsdist", "floor", "direct"}, Runs: 2}
	res := &Result{Options: o, Started: time.Now()}
	cpu := map[string]float64{"fastudp-dns": 9, "dnsdist": 12, "floor": 8}
	qps := map[string]float64{"fastudp-dns": 80000, "dnsdist": 50000, "floor": 100000, "direct": 160000}
	for run := 1; run <= 2; run++ {
		for _, tg := range o.Targets {
			m := Measurement{Scenario: "dnsperf", Target: tg, Run: run, Rate: qps[tg], Completed: 1000, Datagrams: 2000}
			if c, ok := cpu[tg]; ok {
				m.CPUPerDatagram = c / 2
				m.set("cpu_us_per_query", c)
			}
			m.set("dnsperf_us_per_query", 6)
			res.Measurements = append(res.Measurements, m)
		}
	}
	md := markdown(res)
	for _, want := range []string{
		"### DNS: dnsperf → proxy → knot (issue 5) (`dnsperf`)",
		"| fastudp-dns | 80000 | 0.000 | **9.00** (9.00–9.00) | 0.75 | 1.12 | 1.60 | 0.80 | 0.50 | 6.00 | — |",
		"| direct | 160000 | 0.000 | — | — | — | 3.20 | 1.60 | 1.00 | 6.00 | — |",
		"| dnsperf | fastudp-dns | 1.12 | — | 0.75 | — |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

// TestDnsperfScenario runs the dnsperf scenario briefly against the floor
// and direct, with knot behind: it needs dnsperf and knotd (skipped without
// them, except under CI=true).
func TestDnsperfScenario(t *testing.T) {
	for _, bin := range []string{"dnsperf", "knotd"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required under CI=true: %v", bin, err)
			}
			t.Skipf("%s not installed (apt-get install dnsperf knot)", bin)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(floorEnv, "1") // the floor target runs this binary
	var out, prog bytes.Buffer
	res, err := Run(context.Background(), Options{
		Scenarios: []string{"dnsperf"}, Targets: []string{"floor", "direct"},
		Duration: time.Second, Warmup: 100 * time.Millisecond, Drain: 500 * time.Millisecond, Runs: 1,
		Bin: exe, PeersDir: peersDir(), Stdout: &out, Progress: &prog,
	})
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, prog.String(), out.String())
	}
	if len(res.Skipped) > 0 || len(res.Measurements) != 2 {
		t.Fatalf("skipped %v, %d measurements\n%s", res.Skipped, len(res.Measurements), out.String())
	}
	for _, m := range res.Measurements {
		if m.Err != "" || m.Rate <= 0 || m.Completed == 0 || m.Extra["dnsperf_us_per_query"] <= 0 {
			t.Errorf("%+v", m)
		}
		if m.Target == "floor" && (m.Extra["cpu_us_per_query"] <= 0 || m.CPUPerDatagram <= 0) {
			t.Errorf("floor has no CPU figure: %+v", m)
		}
	}
	if !strings.Contains(out.String(), "| floor |") || !strings.Contains(out.String(), "CPU/query ÷ floor") {
		t.Errorf("report:\n%s", out.String())
	}
}

// TestDnsperfMissing checks that the dnsperf scenario is skipped with a
// note when knot's start script is missing, and is an error under CI=true.
func TestDnsperfMissing(t *testing.T) {
	o := Options{Scenarios: []string{"dnsperf", "small-pps"}, Targets: []string{"direct"}, Duration: 100 * time.Millisecond,
		Warmup: 10 * time.Millisecond, Drain: 100 * time.Millisecond, Runs: 1, Rate: 1000, Bin: "/nonexistent", PeersDir: t.TempDir()}
	t.Setenv("CI", "")
	res, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Skipped) != 1 || !strings.Contains(res.Skipped[0], "dnsperf") || len(res.Measurements) != 1 {
		t.Errorf("skipped %v, %d measurements", res.Skipped, len(res.Measurements))
	}
	t.Setenv("CI", "true")
	if _, err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "dnsperf") {
		t.Errorf("under CI=true: %v", err)
	}
}
