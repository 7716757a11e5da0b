package harness

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

type stat struct{ med, lo, hi float64 }

func summarize(xs []float64) stat {
	if len(xs) == 0 {
		return stat{math.NaN(), math.NaN(), math.NaN()}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{med, s[0], s[len(s)-1]}
}

// table indexes the successful measurements.
type table struct {
	res     *Result
	by      map[[2]string][]Measurement // (scenario, target)
	byRun   map[[2]string]map[int]Measurement
	targets []string // in the order given
}

func newTable(res *Result) *table {
	t := &table{res: res, by: map[[2]string][]Measurement{}, byRun: map[[2]string]map[int]Measurement{}}
	seen := map[string]bool{}
	for _, name := range res.Options.Targets {
		for _, m := range res.Measurements {
			if m.Target == name && !seen[name] {
				seen[name] = true
				t.targets = append(t.targets, name)
			}
		}
	}
	for _, m := range res.Measurements {
		if m.Err != "" {
			continue
		}
		k := [2]string{m.Scenario, m.Target}
		t.by[k] = append(t.by[k], m)
		if t.byRun[k] == nil {
			t.byRun[k] = map[int]Measurement{}
		}
		t.byRun[k][m.Run] = m
	}
	return t
}

func (t *table) col(sc, tg string, f func(Measurement) float64) stat {
	var xs []float64
	for _, m := range t.by[[2]string{sc, tg}] {
		xs = append(xs, f(m))
	}
	return summarize(xs)
}

func cpuOf(m Measurement) float64 { return m.CPUPerDatagram }

// ratio is the median over runs of a's CPU per datagram over b's in the
// same run.
func (t *table) ratio(sc, a, b string) (float64, bool) {
	var xs []float64
	for run, ma := range t.byRun[[2]string{sc, a}] {
		mb, ok := t.byRun[[2]string{sc, b}][run]
		if ok && mb.CPUPerDatagram > 0 && ma.CPUPerDatagram > 0 {
			xs = append(xs, ma.CPUPerDatagram/mb.CPUPerDatagram)
		}
	}
	if len(xs) == 0 {
		return 0, false
	}
	return summarize(xs).med, true
}

// extraCol is a scenario-specific column.
type extraCol struct {
	head, key, format string
	scale             float64
}

var extraCols = map[string][]extraCol{
	"dns-qps":   {{"recvmmsg/1k datagrams", "recvmmsg_per_1k_datagrams", "%.1f", 1}, {"sendmmsg/1k datagrams", "sendmmsg_per_1k_datagrams", "%.1f", 1}},
	"bulk-gso":  bulkCols,
	"bulk-gro":  bulkCols,
	"bulk-up":   bulkCols,
	"quic-bulk": bulkCols,
	"latency":   {{"max req/s", "max_rate", "%.0f", 1}, {"offered req/s", "offered_rate", "%.0f", 1}},
	"many-flows": {{"flows live", "flows", "%.0f", 1}, {"RSS B/flow", "rss_bytes_per_flow", "%.0f", 1},
		{"RSS MiB/100k flows", "rss_mib_per_100k", "%.1f", 1}, {"kernel UDP memory MiB/100k (sockstat)", "kernel_mib_per_100k", "%.1f", 1},
		{"UDP sockets/flow", "udp_sockets_per_flow", "%.2f", 1}, {"CPU µs/new flow", "cpu_us_per_new_flow", "%.1f", 1},
		{"open-file limit", "nofile_limit", "%.0f", 1}},
	"new-flow-flood": {{"flood sent", "flood_sent", "%.0f", 1}, {"flood served", "flood_served", "%.0f", 1},
		{"shed", "shed", "%.0f", 1}, {"flows created", "created", "%.0f", 1}, {"established loss %", "established_loss", "%.3f", 100}},
	"dnsperf": {{"CPU µs/query", "cpu_us_per_query", "%.2f", 1}, {"dnsperf CPU µs/query", "dnsperf_us_per_query", "%.2f", 1},
		{"knot CPU µs/query", "knot_us_per_query", "%.2f", 1}, {"avg latency µs", "avg_latency_us", "%.0f", 1},
		{"answers not NOERROR", "not_noerror", "%.0f", 1}},
}

// bulkCols are the bulk scenarios' columns: per MB of reply payload.
var bulkCols = []extraCol{{"MB/s", "", "%.1f", 0}, {"proxy CPU µs/MB", "cpu_us_per_mb", "%.0f", 1},
	{"harness CPU µs/MB", "harness_cpu_us_per_mb", "%.0f", 1}, {"syscalls/MB", "syscalls_per_mb", "%.1f", 1},
	{"recvmmsg/MB", "recvmmsg_per_mb", "%.1f", 1}, {"sendmmsg/MB", "sendmmsg_per_mb", "%.1f", 1},
	{"GSO sends/MB", "gso_sends_per_mb", "%.1f", 1}}

// bulkScenarios get a table of throughput ratios.
var bulkScenarios = map[string]bool{"bulk-gso": true, "bulk-gro": true, "bulk-up": true, "quic-bulk": true}

// bytesRatios writes, for a bulk scenario, each target's bytes/s over
// direct's and each fastudp target's over its -nogso twin, as medians of
// per-run ratios (the targets of a run are measured back to back).
func bytesRatios(b *strings.Builder, t *table, sc string) {
	ratio := func(a, c string) (float64, bool) {
		var xs []float64
		for run, ma := range t.byRun[[2]string{sc, a}] {
			if mc, ok := t.byRun[[2]string{sc, c}][run]; ok && mc.BytesSec > 0 {
				xs = append(xs, ma.BytesSec/mc.BytesSec)
			}
		}
		if len(xs) == 0 {
			return 0, false
		}
		return summarize(xs).med, true
	}
	var rows []string
	for _, tg := range t.targets {
		if tg == "direct" || len(t.by[[2]string{sc, tg}]) == 0 {
			continue
		}
		d, dok := ratio(tg, "direct")
		off, ook := ratio(tg, tg+noGSOSuffix)
		if !dok && !ook {
			continue
		}
		f := func(v float64, ok bool) string {
			if !ok {
				return "—"
			}
			return fmt.Sprintf("%.2f", v)
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s |", tg, f(d, dok), f(off, ook)))
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(b, "Bytes/s ratios (median of per-run ratios):\n\n| target | ÷ direct | ÷ same with GRO and GSO off (-nogso) |\n|---|---:|---:|\n%s\n\n", strings.Join(rows, "\n"))
}

// peers are the targets fastudp is compared with, in ratio columns.
var peers = []string{"floor", "nginx", "dnsdist", "socat"}

func fmtStat(s stat, format string) string {
	if math.IsNaN(s.med) {
		return "—"
	}
	return fmt.Sprintf(format, s.med)
}

// fmtRTT is fmtStat for latencies: 0 means not measured.
func fmtRTT(s stat) string {
	if math.IsNaN(s.med) || s.med == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f", s.med)
}

func markdown(res *Result) string {
	t := newTable(res)
	o := res.Options
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("## fastudp bench: %s\n\n", res.Started.UTC().Format("2006-01-02 15:04 UTC"))
	p("- Machine: %s.\n", machine())
	if o.Command != "" {
		p("- Command: `%s` (%.0f s in all).\n", o.Command, res.Took.Seconds())
	}
	p("- Each figure is the median of %d runs; the targets are interleaved, their order rotated from run to run, "+
		"each with a fresh process and backend (in dnsperf, one knot serves the whole scenario). "+
		"A window is %v of load after %v of warm-up, plus up to %v of drain.\n",
		o.Runs, o.Duration, o.Warmup, o.Drain)
	p("- CPU: utime+stime of the target's process tree (and reaped children) from /proc, divided by the datagrams " +
		"that crossed it in both directions (requests + replies): **µs per datagram** (twice that per round trip). " +
		"Ratios are medians of per-run ratios. floor = bench/floor's minimal recvmmsg/sendmmsg forwarders (the opaque " +
		"relay; the ID-rewriting DNS forwarder in dns-qps and dnsperf). Latencies are round trips.\n")
	for _, s := range res.Skipped {
		p("- Skipped: %s.\n", s)
	}
	p("\n")

	var scs []string
	for _, s := range o.Scenarios {
		for _, tg := range t.targets {
			if len(t.by[[2]string{s, tg}]) > 0 {
				scs = append(scs, s)
				break
			}
		}
	}
	p("### Proxy CPU per datagram (µs, median)\n\n| scenario |")
	var cpuTargets []string
	for _, tg := range t.targets {
		if tg != "direct" {
			cpuTargets = append(cpuTargets, tg)
			p(" %s |", tg)
		}
	}
	p("\n|---|%s\n", strings.Repeat("---:|", len(cpuTargets)))
	for _, s := range scs {
		p("| %s |", s)
		for _, tg := range cpuTargets {
			p(" %s |", fmtStat(t.col(s, tg, cpuOf), "%.2f"))
		}
		p("\n")
	}
	p("\n### Ratios of CPU per datagram (median of per-run ratios; < 1 means fastudp spends less)\n\n")
	p("| scenario | target |")
	for _, pe := range peers {
		p(" ÷ %s |", pe)
	}
	p("\n|---|---|%s\n", strings.Repeat("---:|", len(peers)))
	for _, s := range scs {
		for _, tg := range t.targets {
			if !isFastudp(tg) || len(t.by[[2]string{s, tg}]) == 0 {
				continue
			}
			p("| %s | %s |", s, tg)
			for _, pe := range peers {
				if r, ok := t.ratio(s, tg, pe); ok {
					p(" %.2f |", r)
				} else {
					p(" — |")
				}
			}
			p("\n")
		}
	}
	p("\n")

	for _, s := range scs {
		sc := findScenario(s)
		p("### %s (`%s`)\n\n%s.\n\n", sc.title, s, capitalize(sc.about))
		cols := extraCols[s]
		p("| target | req/s | loss %% | CPU µs/datagram (min–max) | RTT p50 / p99 / p99.9 µs |")
		for _, c := range cols {
			p(" %s |", c.head)
		}
		p(" allocs/datagram | harness CPU µs/datagram | other processes %% |\n|---|%s\n", strings.Repeat("---:|", 7+len(cols)))
		for _, tg := range t.targets {
			g := t.by[[2]string{s, tg}]
			if len(g) == 0 {
				continue
			}
			cpu := t.col(s, tg, cpuOf)
			cpuS := "—"
			if tg != "direct" && !math.IsNaN(cpu.med) {
				cpuS = fmt.Sprintf("%.2f (%.2f–%.2f)", cpu.med, cpu.lo, cpu.hi)
			}
			p("| %s | %s | %s | %s | %s / %s / %s |", tg,
				fmtStat(t.col(s, tg, func(m Measurement) float64 { return m.Rate }), "%.0f"),
				fmtStat(t.col(s, tg, func(m Measurement) float64 { return 100 * m.Loss }), "%.3f"),
				cpuS,
				fmtRTT(t.col(s, tg, func(m Measurement) float64 { return m.P50 })),
				fmtRTT(t.col(s, tg, func(m Measurement) float64 { return m.P99 })),
				fmtRTT(t.col(s, tg, func(m Measurement) float64 { return m.P999 })))
			for _, c := range cols {
				if c.key == "" { // bytes per second
					p(" %s |", fmtStat(t.col(s, tg, func(m Measurement) float64 { return m.BytesSec / 1e6 }), c.format))
					continue
				}
				p(" %s |", fmtStat(t.col(s, tg, func(m Measurement) float64 {
					if v, ok := m.Extra[c.key]; ok {
						return v * c.scale
					}
					return math.NaN()
				}), c.format))
			}
			allocs := "—"
			if isFastudp(tg) {
				allocs = fmtStat(t.col(s, tg, func(m Measurement) float64 { return m.Extra["mallocs_per_datagram"] }), "%.4f")
			}
			p(" %s | %s | %s |\n", allocs,
				fmtStat(t.col(s, tg, func(m Measurement) float64 { return m.HarnessCPUus / float64(max(m.Datagrams, 1)) }), "%.2f"),
				fmtStat(t.col(s, tg, func(m Measurement) float64 { return 100 * m.OtherBusy }), "%.0f"))
		}
		p("\n")
		if s == "latency" {
			addedLatency(&b, t)
		}
		if s == "dnsperf" {
			dnsperfReport(&b, t)
		}
		if bulkScenarios[s] {
			bytesRatios(&b, t, s)
		}
	}
	var failed []string
	for _, m := range res.Measurements {
		if m.Err != "" {
			failed = append(failed, fmt.Sprintf("- run %d, %s, %s: %s", m.Run, m.Scenario, m.Target, m.Err))
		}
	}
	if len(failed) > 0 {
		p("### Failed measurements\n\n%s\n\n", strings.Join(failed, "\n"))
	}
	return b.String()
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// writeOutputs writes report.md, results.json, cpu.svg and latency.svg.
func writeOutputs(dir string, res *Result, report string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(res.Measurements, "", "  ")
	if err != nil {
		return err
	}
	t := newTable(res)
	files := map[string]string{
		"report.md":    report,
		"results.json": string(js) + "\n",
		"cpu.svg":      cpuChart(t),
		"latency.svg":  latencyChart(t),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// addedLatency writes the latency each hop adds over direct at the same
// rate, and that added latency over the floor's (goal R3: ≤ 1.3× at p50,
// ≤ 1.5× at p99).
func addedLatency(b *strings.Builder, t *table) {
	get := func(k string) func(Measurement) float64 {
		return func(m Measurement) float64 {
			if v, ok := m.Extra[k]; ok {
				return v
			}
			return math.NaN()
		}
	}
	ratio := func(tg, k string) string {
		var xs []float64
		for run, m := range t.byRun[[2]string{"latency", tg}] {
			f, ok := t.byRun[[2]string{"latency", "floor"}][run]
			if ok && f.Extra[k] > 0 && m.Extra[k] > 0 {
				xs = append(xs, m.Extra[k]/f.Extra[k])
			}
		}
		if len(xs) == 0 {
			return "—"
		}
		return fmt.Sprintf("%.2f", summarize(xs).med)
	}
	var rows []string
	for _, tg := range t.targets {
		a50 := t.col("latency", tg, get("added_p50"))
		if tg == "direct" || math.IsNaN(a50.med) {
			continue
		}
		rows = append(rows, fmt.Sprintf("| %s | %.0f / %.0f | %.0f | %.0f | %s | %s |", tg,
			t.col("latency", tg, get("base_p50")).med, t.col("latency", tg, get("base_p99")).med,
			a50.med, t.col("latency", tg, get("added_p99")).med, ratio(tg, "added_p50"), ratio(tg, "added_p99")))
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(b, "Latency added by the hop: µs over the same load sent straight to the backend (direct p50 / p99 at that rate); ÷ floor is the median of per-run ratios of added latencies (only runs where both added latency count):\n\n")
	fmt.Fprintf(b, "| target | direct at this rate p50 / p99 | added p50 | added p99 | ÷ floor p50 | ÷ floor p99 |\n|---|---:|---:|---:|---:|---:|\n%s\n\n", strings.Join(rows, "\n"))
}

// Replot rewrites the charts in dir from its results.json, for the given
// scenario and target order (nil: the defaults), without running anything.
func Replot(dir string, scenarios, targets []string) error {
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		return err
	}
	var ms []Measurement
	if err := json.Unmarshal(b, &ms); err != nil {
		return fmt.Errorf("%s/results.json: %w", dir, err)
	}
	if len(scenarios) == 0 {
		scenarios = DefaultScenarios
	}
	if len(targets) == 0 {
		targets = DefaultTargets
	}
	t := newTable(&Result{Options: Options{Scenarios: scenarios, Targets: targets}, Measurements: ms})
	for name, body := range map[string]string{"cpu.svg": cpuChart(t), "latency.svg": latencyChart(t)} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}
