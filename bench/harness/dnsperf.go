package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/fastudp/fastudp/bench/loadgen"
	"github.com/fastudp/fastudp/bench/target"
)

// The dnsperf scenario (issue 5): dnsperf → target → knot. dnsperf is the
// load generator and knot the backend, both processes of their own; knot is
// started once and shared by every target and run of the scenario.

// dnsperfClients and dnsperfOutstanding are dnsperf's -c and -q, as in the
// peers' dnsperf-cpu.sh.
const (
	dnsperfClients     = 4
	dnsperfOutstanding = 200
)

// checkDnsperf reports whether the dnsperf scenario can run: dnsperf, and
// knot through the peers' start script.
func (h *harness) checkDnsperf() error {
	if _, err := exec.LookPath("dnsperf"); err != nil {
		return fmt.Errorf("dnsperf: %w (apt-get install dnsperf)", target.ErrMissing)
	}
	return target.Knot{Script: filepath.Join(h.o.PeersDir, "start-knot.sh")}.Check()
}

// sharedKnot returns the scenario's knot, starting it on first use, or
// again if it stopped answering.
func (h *harness) sharedKnot() (*target.Instance, error) {
	probe, _ := loadgen.EncodeQuery(nil, 1, h.queries[0])
	if h.knot != nil {
		if target.WaitReply(h.knot.Addr, probe, 2*time.Second) == nil {
			return h.knot, nil
		}
		h.knot.Stop()
		h.knot = nil
	}
	k, err := target.Knot{Script: filepath.Join(h.o.PeersDir, "start-knot.sh")}.Start(probe)
	if err != nil {
		return nil, err
	}
	h.knot = k
	return k, nil
}

// queryFile returns the dnsperf data file: the peers' queries.txt, or the
// generated queries written to a temporary file when there is none.
func (h *harness) queryFile() (string, error) {
	p := filepath.Join(h.o.PeersDir, "queries.txt")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if h.queriesTmp != "" {
		return h.queriesTmp, nil
	}
	f, err := os.CreateTemp("", "fastudp-bench-queries-*.txt")
	if err != nil {
		return "", err
	}
	w := bufio.NewWriter(f)
	for _, q := range h.queries {
		t := "TYPE" + strconv.Itoa(int(q.Type))
		if q.Type == 1 {
			t = "A"
		}
		fmt.Fprintf(w, "%s %s\n", q.Name, t)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	f.Close()
	h.queriesTmp = f.Name()
	return h.queriesTmp, nil
}

// dnsperfStats is what dnsperf prints at the end of a run.
type dnsperfStats struct {
	Sent, Completed, Lost uint64
	NoError               uint64 // completed with rcode NOERROR
	RunTime, QPS          float64
	AvgLatency            float64 // seconds
}

// parseDnsperf reads dnsperf's "Statistics:" block.
func parseDnsperf(out string) (dnsperfStats, error) {
	var st dnsperfStats
	seen := 0
	num := func(s string) float64 {
		f := strings.Fields(s)
		if len(f) == 0 {
			return math.NaN()
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return math.NaN()
		}
		return v
	}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		x := num(v)
		switch k {
		case "Queries sent":
			st.Sent, seen = uint64(x), seen+1
		case "Queries completed":
			st.Completed, seen = uint64(x), seen+1
		case "Queries lost":
			st.Lost, seen = uint64(x), seen+1
		case "Run time (s)":
			st.RunTime, seen = x, seen+1
		case "Queries per second":
			st.QPS, seen = x, seen+1
		case "Average Latency (s)":
			st.AvgLatency = x
		case "Response codes":
			f := strings.Fields(v)
			for i := 0; i+1 < len(f); i++ {
				if f[i] == "NOERROR" {
					n, _ := strconv.ParseUint(f[i+1], 10, 64)
					st.NoError = n
				}
			}
		}
	}
	if seen < 5 || math.IsNaN(st.RunTime) || math.IsNaN(st.QPS) {
		return st, fmt.Errorf("dnsperf: no statistics in its output:\n%s", tail(out, 2000))
	}
	return st, nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// runDnsperf runs dnsperf against addr for d and returns its output and
// its CPU time in µs. -t (a query's timeout) is the harness's drain: it
// bounds how long dnsperf waits for the last answers after the window.
func (h *harness) runDnsperf(ctx context.Context, addr netip.AddrPort, d time.Duration) (string, float64, error) {
	file, err := h.queryFile()
	if err != nil {
		return "", 0, err
	}
	secs := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }
	ctx, cancel := context.WithTimeout(ctx, d+h.o.Drain+20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "dnsperf", "-s", addr.Addr().String(), "-p", strconv.Itoa(int(addr.Port())),
		"-d", file, "-l", secs(d), "-c", strconv.Itoa(dnsperfClients), "-q", strconv.Itoa(dnsperfOutstanding),
		"-t", secs(max(h.o.Drain, 100*time.Millisecond)))
	var out limitedOutput
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	var cpu float64
	if cmd.ProcessState != nil {
		cpu = float64((cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Nanoseconds()) / 1e3
	}
	if err != nil {
		if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return out.String(), cpu, ctx.Err()
		}
		return out.String(), cpu, fmt.Errorf("dnsperf: %w: %s", err, tail(out.String(), 2000))
	}
	return out.String(), cpu, nil
}

// limitedOutput keeps the last 256 KiB written to it: dnsperf prints a
// line per timed-out query before its statistics.
type limitedOutput struct{ b []byte }

func (l *limitedOutput) Write(p []byte) (int, error) {
	l.b = append(l.b, p...)
	if len(l.b) > 256<<10 {
		l.b = append(l.b[:0], l.b[len(l.b)-128<<10:]...)
	}
	return len(p), nil
}

func (l *limitedOutput) String() string { return string(l.b) }

func measureDnsperf(ctx context.Context, h *harness, tg target.Target) (Measurement, error) {
	var m Measurement
	knot, err := h.sharedKnot()
	if err != nil {
		return m, fmt.Errorf("backend: %w", err)
	}
	if f, ok := tg.(floorTarget); ok {
		tg = f.withDNS()
	}
	probe, _ := loadgen.EncodeQuery(nil, 1, h.queries[0])
	inst, err := tg.Start(knot.Addr, target.Mode{Responses: 1, Probe: probe})
	if err != nil {
		return m, err
	}
	defer inst.Stop()
	if h.o.Warmup > 0 {
		if _, _, err := h.runDnsperf(ctx, inst.Addr, h.o.Warmup); err != nil {
			return m, fmt.Errorf("warm-up: %w", err)
		}
	}
	s0, err := h.snap(inst)
	if err != nil {
		return m, err
	}
	k0, err := knot.CPU()
	if err != nil {
		return m, fmt.Errorf("knot: %w", err)
	}
	out, perfCPU, err := h.runDnsperf(ctx, inst.Addr, h.o.Duration)
	if err != nil {
		return m, err
	}
	s1, err := h.snap(inst)
	if err != nil {
		return m, err
	}
	k1, err := knot.CPU()
	if err != nil {
		return m, fmt.Errorf("knot: %w", err)
	}
	st, err := parseDnsperf(out)
	if err != nil {
		return m, err
	}
	m.Window = st.RunTime
	m.Requests, m.Replies, m.Completed = st.Sent, st.Completed, st.Completed
	if st.Sent > 0 {
		m.Loss = float64(st.Lost) / float64(st.Sent)
	}
	m.Datagrams = st.Sent + st.Completed
	m.Rate = st.QPS
	fill(&m, inst, s0, s1, m.Datagrams)
	knotCPU := (k1 - k0).Micros()
	// The generator and the backend are processes of their own here:
	// count them with the harness, so "other processes" is the rest.
	m.HarnessCPUus += perfCPU + knotCPU
	m.OtherBusy = otherBusy(s0, s1, m.CPUus+m.HarnessCPUus)
	m.set("dnsperf_cpu_us", perfCPU)
	m.set("knot_cpu_us", knotCPU)
	m.set("avg_latency_us", st.AvgLatency*1e6)
	m.set("not_noerror", float64(st.Completed-min(st.NoError, st.Completed)))
	if st.Completed > 0 {
		q := float64(st.Completed)
		if inst.PID != 0 {
			m.set("cpu_us_per_query", m.CPUus/q)
		}
		m.set("dnsperf_us_per_query", perfCPU/q)
		m.set("knot_us_per_query", knotCPU/q)
	}
	if st.Completed == 0 {
		return m, errors.New("dnsperf: no query answered (100% loss)")
	}
	return m, nil
}

// dnsperfReport writes the issue-5 summary: per target qps, loss and CPU
// per query, and their ratios to dnsdist, the floor and direct, each the
// median of per-run ratios.
func dnsperfReport(b *strings.Builder, t *table) {
	const sc = "dnsperf"
	extra := func(k string) func(Measurement) float64 {
		return func(m Measurement) float64 {
			if v, ok := m.Extra[k]; ok {
				return v
			}
			return math.NaN()
		}
	}
	perQuery := extra("cpu_us_per_query")
	qps := func(m Measurement) float64 { return m.Rate }
	ratio := func(tg, base string, f func(Measurement) float64) string {
		var xs []float64
		for run, m := range t.byRun[[2]string{sc, tg}] {
			o, ok := t.byRun[[2]string{sc, base}][run]
			if a, c := f(m), f(o); ok && a > 0 && c > 0 {
				xs = append(xs, a/c)
			}
		}
		if len(xs) == 0 {
			return "—"
		}
		return fmt.Sprintf("%.2f", summarize(xs).med)
	}
	var rows []string
	for _, tg := range t.targets {
		if len(t.by[[2]string{sc, tg}]) == 0 {
			continue
		}
		cpu := t.col(sc, tg, perQuery)
		cpuS := "—"
		if !math.IsNaN(cpu.med) {
			cpuS = fmt.Sprintf("**%.2f** (%.2f–%.2f)", cpu.med, cpu.lo, cpu.hi)
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", tg,
			fmtStat(t.col(sc, tg, qps), "%.0f"),
			fmtStat(t.col(sc, tg, func(m Measurement) float64 { return 100 * m.Loss }), "%.3f"),
			cpuS,
			ratio(tg, "dnsdist", perQuery), ratio(tg, "floor", perQuery),
			ratio(tg, "dnsdist", qps), ratio(tg, "floor", qps), ratio(tg, "direct", qps),
			fmtStat(t.col(sc, tg, extra("dnsperf_us_per_query")), "%.2f"),
			fmtStat(t.col(sc, tg, extra("knot_us_per_query")), "%.2f")))
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(b, "Per query (issue 5: goals for fastudp-dns are CPU/query ≤ 0.9 × dnsdist's and qps ≥ 1.05 × dnsdist's); "+
		"ratios are medians of per-run ratios; dnsperf and knot share the machine, so their CPU per query is given too:\n\n")
	fmt.Fprintf(b, "| target | qps | lost %% | proxy CPU µs/query (min–max) | CPU/query ÷ dnsdist | CPU/query ÷ floor | qps ÷ dnsdist | qps ÷ floor | qps ÷ direct | dnsperf CPU µs/query | knot CPU µs/query |\n"+
		"|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n%s\n\n", strings.Join(rows, "\n"))
}
