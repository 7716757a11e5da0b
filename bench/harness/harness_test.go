package harness

import (
	"bytes"
	"context"
	"encoding/xml"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastudp/fastudp/bench/loadgen"
	"github.com/fastudp/fastudp/bench/target"
)

// countBars parses an SVG document and returns its <rect class="bar">
// elements' count; it fails the test if the document is not XML.
func countBars(t *testing.T, svg string) int {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(svg))
	bars, root := 0, ""
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not XML: %v\n%s", err, svg)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			if se.Name.Local != "rect" {
				continue
			}
			for _, a := range se.Attr {
				if a.Name.Local == "class" && a.Value == "bar" {
					bars++
				}
			}
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q", root)
	}
	return bars
}

func fakeResult() *Result {
	o := Options{Scenarios: []string{"small-pps", "latency"}, Targets: []string{"fastudp", "floor", "nginx", "direct"}, Runs: 2}
	res := &Result{Options: o, Started: time.Now()}
	for run := 1; run <= 2; run++ {
		for i, tg := range o.Targets {
			for _, sc := range o.Scenarios {
				m := Measurement{Scenario: sc, Target: tg, Run: run, Rate: 1000, Datagrams: 2000,
					P50: 50 * float64(i+1), P99: 200 * float64(i+1), P999: 900 * float64(i+1)}
				if tg != "direct" {
					m.CPUPerDatagram = float64(i+1) + float64(run)/10
				}
				res.Measurements = append(res.Measurements, m)
			}
		}
	}
	res.Measurements = append(res.Measurements, Measurement{Scenario: "small-pps", Target: "nginx", Run: 3, Err: "boom"})
	return res
}

func TestCharts(t *testing.T) {
	tb := newTable(fakeResult())
	// 2 scenarios × 3 targets with CPU figures (direct has none).
	if n := countBars(t, cpuChart(tb)); n != 6 {
		t.Errorf("cpu chart: %d bars, want 6", n)
	}
	// 4 targets × 3 percentiles.
	if n := countBars(t, latencyChart(tb)); n != 12 {
		t.Errorf("latency chart: %d bars, want 12", n)
	}
	// Names that need escaping, and an empty chart, still give XML.
	countBars(t, barChart(`a<b & "c"`, "y", []string{"<g>"}, []string{"s&"}, [][]float64{{math.NaN()}}, true))
	if n := countBars(t, barChart("t", "y", []string{"g"}, []string{"s"}, [][]float64{{3}}, false)); n != 1 {
		t.Errorf("%d bars", n)
	}
}

func TestMarkdown(t *testing.T) {
	md := markdown(fakeResult())
	for _, want := range []string{
		"### Proxy CPU per datagram (µs, median)",
		"| small-pps | 1.15 | 2.15 | 3.15 |", // medians of runs 1 and 2
		"| small-pps | fastudp | 0.53 | 0.36 | — | — |",
		"### Latency at 50% load (`latency`)",
		"- run 3, small-pps, nginx: boom",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

// TestStoppedTarget checks that a run against a target that does not
// answer reports 100% loss, as an error, within the window plus the drain.
func TestStoppedTarget(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	h := &harness{o: Options{Duration: 300 * time.Millisecond, Warmup: 100 * time.Millisecond, Drain: 200 * time.Millisecond}}
	for _, rate := range []float64{0, 2000} {
		start := time.Now()
		m, err := h.window(context.Background(), &target.Instance{Addr: addr},
			loadgen.Config{Target: addr, Conns: 4, Rate: rate, Timeout: 50 * time.Millisecond}, h.o.Duration)
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("rate %v: took %v", rate, el)
		}
		if err == nil || !strings.Contains(err.Error(), "100% loss") || m.Loss != 1 || m.Requests == 0 {
			t.Errorf("rate %v: %+v, %v", rate, m, err)
		}
	}
}

// TestRunDirect runs the whole harness against the direct target (no
// binary, no peer) and checks the report and the files.
func TestRunDirect(t *testing.T) {
	dir := t.TempDir()
	var out, prog bytes.Buffer
	res, err := Run(context.Background(), Options{
		Scenarios: []string{"small-pps", "dns-qps", "bulk-gso", "bulk-gro", "bulk-up", "latency"}, Targets: []string{"direct"},
		Duration: 200 * time.Millisecond, Warmup: 50 * time.Millisecond, Drain: 300 * time.Millisecond, Runs: 1,
		Rate: 2000, OutDir: dir, Bin: "/nonexistent", PeersDir: t.TempDir(), Stdout: &out, Progress: &prog,
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, prog.String())
	}
	if len(res.Measurements) != 6 {
		t.Fatalf("%d measurements", len(res.Measurements))
	}
	for _, m := range res.Measurements {
		if m.Err != "" || m.Loss > 0.01 || m.Completed == 0 {
			t.Errorf("%+v", m)
		}
		if (m.Scenario == "bulk-gso" || m.Scenario == "bulk-gro") && (m.Replies != 32*m.Completed || m.BytesSec == 0 ||
			m.Extra["harness_cpu_us_per_mb"] <= 0) {
			t.Errorf("bulk: %+v", m)
		}
		if m.Scenario == "bulk-up" && (m.Replies != m.Completed || m.BytesSec < float64(32*1200)*m.Rate*0.99 ||
			m.Extra["harness_cpu_us_per_mb"] <= 0) {
			t.Errorf("bulk-up: %+v", m)
		}
		if m.Scenario == "latency" && m.Extra["offered_rate"] <= 0 {
			t.Errorf("latency: %+v", m)
		}
	}
	if strings.Count(prog.String(), "\n") != 6 || !strings.Contains(out.String(), "| direct |") {
		t.Errorf("progress:\n%s\nreport:\n%s", prog.String(), out.String())
	}
	for _, f := range []string{"report.md", "results.json"} {
		if b, err := os.ReadFile(filepath.Join(dir, f)); err != nil || len(b) == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "latency.svg"))
	if err != nil {
		t.Fatal(err)
	}
	if countBars(t, string(b)) != 3 {
		t.Errorf("latency chart:\n%s", b)
	}
}

// TestMissingPeer checks that a peer whose script is missing is skipped
// with a note, and is an error under CI=true.
func TestMissingPeer(t *testing.T) {
	o := Options{Targets: []string{"nginx", "direct"}, PeersDir: t.TempDir(), Bin: "x"}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CI", "")
	h := &harness{o: o}
	tgs, skipped, err := h.targets()
	if err != nil || len(tgs) != 1 || len(skipped) != 1 || !strings.Contains(skipped[0], "nginx") {
		t.Errorf("targets %v, skipped %v, %v", tgs, skipped, err)
	}
	t.Setenv("CI", "true")
	if _, _, err := h.targets(); err == nil || !strings.Contains(err.Error(), "nginx") {
		t.Errorf("under CI=true: %v", err)
	}
	h.o.Targets = []string{"haproxy"}
	if _, _, err := h.targets(); err == nil {
		t.Error("accepted an unknown target")
	}
}

// TestNoGSOTargets checks the -nogso targets: the same fastudp with GRO
// and GSO turned off.
func TestNoGSOTargets(t *testing.T) {
	o := Options{Targets: []string{"fastudp", "fastudp-nogso", "fastudp-2-nogso", "fastudp-dns-nogso"}, Bin: "x",
		FastudpArgs: []string{"--lb", "rr"}}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	h := &harness{o: o}
	tgs, _, err := h.targets()
	if err != nil || len(tgs) != 4 {
		t.Fatalf("%v, %v", tgs, err)
	}
	for i, want := range []struct {
		shards int
		args   string
	}{{1, "--lb rr"}, {1, "--lb rr --gro=false --gso=false"}, {2, "--lb rr --gro=false --gso=false"},
		{1, "--lb rr --mode dns --gro=false --gso=false"}} {
		f := tgs[i].(target.Fastudp)
		if f.Name() != o.Targets[i] || f.Shards != want.shards || strings.Join(f.Args, " ") != want.args {
			t.Errorf("%s: %+v", o.Targets[i], f)
		}
	}
	if !dnsOnly("fastudp-dns-nogso") || dnsOnly("fastudp-nogso") || !isFastudp("fastudp-nogso") {
		t.Error("target classes")
	}
	for _, bad := range []string{"fastudp-x-nogso", "fastudp-0-nogso", "fastudp-nogso-nogso"} {
		h.o.Targets = []string{bad}
		if _, _, err := h.targets(); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestOptions(t *testing.T) {
	for _, o := range []Options{
		{Bin: "x", Scenarios: []string{"nope"}},
		{Bin: "x", DNSBackend: "bind"},
		{Bin: "x", Duration: time.Millisecond},
		{},
	} {
		if err := o.defaults(); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}

}

func TestReplot(t *testing.T) {
	dir := t.TempDir()
	res := fakeResult()
	if err := writeOutputs(dir, res, "x"); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "cpu.svg"))
	if err := Replot(dir, res.Options.Scenarios, res.Options.Targets); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "cpu.svg"))
	if err != nil || countBars(t, string(b)) != 6 {
		t.Errorf("replotted cpu.svg: %v\n%s", err, b)
	}
	if err := Replot(t.TempDir(), nil, nil); err == nil {
		t.Error("replotted without results.json")
	}
}

// TestFastudpQUICTarget: fastudp-quic runs fastudp with affinity quic and
// the quic-bulk server's server ID, and only the quic-bulk scenario.
func TestFastudpQUICTarget(t *testing.T) {
	o := Options{Targets: []string{"fastudp-quic"}, Bin: "x", Scenarios: []string{"small-pps", "dns-qps"}}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	h := &harness{o: o}
	tgs, _, err := h.targets()
	if err != nil || len(tgs) != 1 {
		t.Fatalf("%v, %v", tgs, err)
	}
	f := tgs[0].(target.Fastudp)
	if f.Name() != "fastudp-quic" || f.ServerID != "01" || strings.Join(f.Args, " ") != "--affinity quic --quic-sid-len 1 --quic-nonce-len 8" {
		t.Fatalf("%+v", f)
	}
	if _, err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "no scenario applies") {
		t.Fatalf("fastudp-quic ran a non-QUIC scenario: %v", err)
	}
}
