// Command proxycpu measures what a UDP proxy hop costs in CPU: fastudp (1
// and 2 shards), nginx stream UDP (1 worker) and no proxy at all, in one
// interleaved run, with the same load generator and echo backend.
//
//	go run ./bench/cmd/proxycpu -duration 3s -runs 3
//
// For each scenario (long-lived flows at a fixed open-loop rate; a new flow
// per request, closed loop) and payload size, every target is measured
// once per run, the targets' order rotating from run to run (A B C, B C A,
// ...), and the report gives medians over the runs. The headline figure is
// the proxy's CPU time (utime+stime of its process tree, from /proc) per
// round trip, since on a small shared machine throughput is bounded by the
// load generator and backend as much as by the proxy. For fastudp it also
// reads go_memstats_mallocs_total from its metrics endpoint before and
// after the window and reports allocations per round trip, less a no-load
// scrape-to-scrape baseline.
//
// The load generator and echo backend run in this process (bench/loadgen:
// recvmmsg/sendmmsg, no allocation per datagram). A missing nginx is
// skipped with a warning, or is an error when CI=true.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fastudp/fastudp/bench/loadgen"
	"github.com/fastudp/fastudp/bench/proc"
	"github.com/fastudp/fastudp/bench/target"
)

type options struct {
	duration, warmup, drain time.Duration
	runs                    int
	rate                    float64
	conns, inflight         int
	tick                    time.Duration
	sizes                   []int
	scenarios               []string
	targets                 []string
	fastudpBin, nginxScript string
	out, jsonOut, perfDir   string
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "proxycpu:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("proxycpu", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&o.duration, "duration", 3*time.Second, "measured window per target and run")
	fs.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "load before the window (flows are set up here)")
	fs.DurationVar(&o.drain, "drain", time.Second, "longest wait for replies after the window's last send")
	fs.IntVar(&o.runs, "runs", 3, "repetitions of the whole matrix (medians are taken over them)")
	fs.Float64Var(&o.rate, "rate", 25000, "established flows: total datagrams per second (open loop)")
	fs.IntVar(&o.conns, "conns", 64, "established flows: client sockets (one flow each)")
	fs.IntVar(&o.inflight, "inflight", 32, "new flow per request: client sockets, one request in flight each (closed loop)")
	fs.DurationVar(&o.tick, "tick", time.Millisecond, "open-loop pacing interval")
	sizes := fs.String("sizes", "64,1200", "payload sizes in bytes, comma-separated")
	scen := fs.String("scenarios", "established,newflow", "scenarios: established (responses=0, open loop), newflow (responses=1, closed loop)")
	targets := fs.String("targets", "fastudp-1,fastudp-2,nginx,direct", "targets: fastudp-N (N shards), nginx, direct")
	fs.StringVar(&o.fastudpBin, "fastudp", "", "fastudp binary (default: go build ./cmd/fastudp into a temporary directory)")
	fs.StringVar(&o.nginxScript, "nginx-script", "", "start-nginx-udp.sh (default: ../shared/peers/ from the module root, then /work/shared/peers/)")
	fs.StringVar(&o.out, "out", "", "also write the markdown report to `FILE`")
	fs.StringVar(&o.jsonOut, "json", "", "write every measurement as JSON to `FILE`")
	fs.StringVar(&o.perfDir, "perf", "", "profile each proxy during its window with `perf record -e cpu-clock -g` into `DIR` (inflates the CPU figures: for finding where time goes, not for the table)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < loadgen.HeaderLen || n > 1400 {
			return fmt.Errorf("-sizes: %q is not a size in [%d, 1400]", s, loadgen.HeaderLen)
		}
		o.sizes = append(o.sizes, n)
	}
	for _, s := range strings.Split(*scen, ",") {
		if s = strings.TrimSpace(s); s != "established" && s != "newflow" {
			return fmt.Errorf("-scenarios: unknown %q", s)
		}
		o.scenarios = append(o.scenarios, strings.TrimSpace(s))
	}
	if o.runs < 1 || o.duration <= 0 || o.rate <= 0 || o.conns < 1 || o.inflight < 1 {
		return errors.New("-runs, -duration, -rate, -conns and -inflight must be positive")
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()

	root, err := moduleRoot()
	if err != nil {
		return err
	}
	var tgs []target.Target
	for _, name := range strings.Split(*targets, ",") {
		name = strings.TrimSpace(name)
		switch {
		case name == "direct":
			tgs = append(tgs, target.Direct{})
		case name == "nginx":
			n := target.Nginx{Script: o.nginxScript}
			if n.Script == "" {
				n.Script = findPeerScript(root, "start-nginx-udp.sh")
			}
			if err := n.Check(); err != nil {
				if os.Getenv("CI") == "true" {
					return fmt.Errorf("target nginx: %w", err)
				}
				fmt.Fprintf(stderr, "proxycpu: skipping nginx: %v\n", err)
				continue
			}
			tgs = append(tgs, n)
		case strings.HasPrefix(name, "fastudp-"):
			shards, err := strconv.Atoi(strings.TrimPrefix(name, "fastudp-"))
			if err != nil || shards < 1 {
				return fmt.Errorf("-targets: %q: want fastudp-N with N ≥ 1", name)
			}
			if o.fastudpBin == "" {
				if o.fastudpBin, err = buildFastudp(ctx, root, stderr); err != nil {
					return err
				}
				defer os.RemoveAll(filepath.Dir(o.fastudpBin))
			}
			tgs = append(tgs, target.Fastudp{Bin: o.fastudpBin, Shards: shards, Metrics: true})
		default:
			return fmt.Errorf("-targets: unknown %q", name)
		}
	}
	if len(tgs) == 0 {
		return errors.New("no target to measure")
	}

	start := time.Now()
	var ms []Measurement
	total := o.runs * len(o.scenarios) * len(o.sizes) * len(tgs)
	for r := range o.runs {
		for _, sc := range o.scenarios {
			for _, size := range o.sizes {
				for k := range tgs {
					tg := tgs[(k+r)%len(tgs)] // rotate the order every run
					m, err := measure(ctx, o, tg, sc, size)
					m.Run = r + 1
					if err != nil {
						if ctx.Err() != nil {
							return ctx.Err()
						}
						m.Err = err.Error()
					}
					ms = append(ms, m)
					fmt.Fprintf(stderr, "[%3d/%d %5.0fs] %s\n", len(ms), total, time.Since(start).Seconds(), m.line())
				}
			}
		}
	}
	report := markdown(o, fs, tgs, ms, time.Since(start))
	fmt.Fprint(stdout, report)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
			return err
		}
	}
	if o.jsonOut != "" {
		b, _ := json.MarshalIndent(ms, "", "  ")
		if err := os.WriteFile(o.jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	for _, m := range ms {
		if m.Err != "" {
			return errors.New("some measurements failed (see the report)")
		}
	}
	return nil
}

// Measurement is one target, scenario and size in one run.
type Measurement struct {
	Run      int
	Scenario string
	Size     int
	Target   string
	Err      string `json:",omitempty"`

	Window     float64 // seconds from the window's start to the end of the drain
	SendTime   float64 // seconds from the window's start to its last send
	Sent       uint64  // client datagrams sent in the window
	SendErrors uint64
	Forwarded  uint64 // of those, datagrams the backend received
	Returned   uint64 // replies back at the clients
	Late       uint64
	Loss       float64 // 1 - Returned/(Sent+SendErrors)
	RTTp50us   float64
	RTTp99us   float64

	ProxyCPUus   float64 // CPU of the target's process tree in the window
	ProxyUsPerRT float64 // ProxyCPUus / Returned
	HarnessUsRT  float64 // this process (generator + echo) per round trip
	MachineBusy  float64 // share of all CPUs busy during the window
	OtherBusy    float64 // share of all CPUs used by neither the target nor this process

	// fastudp only (from its metrics endpoint)
	Mallocs         float64 `json:",omitempty"` // go_memstats_mallocs_total delta over the window
	MallocsBaseline float64 `json:",omitempty"` // median delta between back-to-back scrapes after the load
	MallocsSpread   float64 `json:",omitempty"` // max - min of those deltas: the resolution
	MallocsPerRT    float64 `json:",omitempty"` // (Mallocs - MallocsBaseline) / Returned
	FlowsCreated    float64 `json:",omitempty"`
	BatchFill       float64 `json:",omitempty"` // datagrams per listener recvmmsg
	LoopsPerRT      float64 `json:",omitempty"` // event-loop iterations per round trip
	ProxyDrops      float64 `json:",omitempty"` // drops_total + kernel_drops_total delta
}

func (m *Measurement) line() string {
	s := fmt.Sprintf("run %d %-11s %4dB %-9s ", m.Run, m.Scenario, m.Size, m.Target)
	if m.Err != "" {
		return s + "ERROR " + m.Err
	}
	s += fmt.Sprintf("sent %7d fwd %7d ret %7d loss %5.2f%% cpu %6.2f µs/rt harness %5.2f µs/rt busy %3.0f%% others %3.0f%% rtt p50 %5.0fµs p99 %6.0fµs",
		m.Sent, m.Forwarded, m.Returned, 100*m.Loss, m.ProxyUsPerRT, m.HarnessUsRT, 100*m.MachineBusy, 100*m.OtherBusy, m.RTTp50us, m.RTTp99us)
	if strings.HasPrefix(m.Target, "fastudp") {
		s += fmt.Sprintf(" mallocs/rt %.4f (Δ %.0f, base %.0f ±%.0f) flows %.0f fill %.2f", m.MallocsPerRT, m.Mallocs, m.MallocsBaseline, m.MallocsSpread/2, m.FlowsCreated, m.BatchFill)
	}
	return s
}

var fastudpMetrics = []string{
	"go_memstats_mallocs_total", "fastudp_flows_created_total", "fastudp_shard_batches_total",
	"fastudp_shard_batch_datagrams_total", "fastudp_shard_loop_iterations_total",
	"fastudp_drops_total", "fastudp_kernel_drops_total",
}

// measure runs one target in one scenario: a fresh echo backend and a
// fresh target, a warm-up in phase 0, the window in phase 1, a drain.
func measure(ctx context.Context, o options, tg target.Target, scenario string, size int) (m Measurement, err error) {
	m = Measurement{Scenario: scenario, Size: size, Target: tg.Name()}
	echo, err := loadgen.StartEcho(loadgen.EchoConfig{})
	if err != nil {
		return m, err
	}
	defer echo.Close()
	mode := target.Mode{}
	cfg := loadgen.Config{Size: size, Rate: o.rate, Conns: o.conns, Tick: o.tick}
	if scenario == "newflow" {
		mode.Responses = 1
		cfg.Rate, cfg.Conns = 0, o.inflight
	}
	inst, err := tg.Start(echo.Addr(), mode)
	if err != nil {
		return m, err
	}
	defer inst.Stop()

	scrape := func() (map[string]float64, error) { return target.Scrape(inst.Metrics, fastudpMetrics...) }
	cfg.Target = inst.Addr
	g, err := loadgen.New(cfg)
	if err != nil {
		return m, err
	}
	defer g.Close()
	g.Start()
	stopped := false
	defer func() {
		if !stopped {
			g.Stop(0)
		}
	}()
	if err := sleep(ctx, o.warmup); err != nil {
		return m, err
	}
	g.SetPhase(1)
	var s0, s1 map[string]float64
	if inst.Metrics != "" {
		if s0, err = scrape(); err != nil {
			return m, err
		}
	}
	c0, err := inst.CPU()
	if err != nil {
		return m, err
	}
	var perf *exec.Cmd
	if o.perfDir != "" && inst.PID != 0 {
		name := fmt.Sprintf("%s-%d-%s.data", scenario, size, tg.Name())
		pids := []string{strconv.Itoa(inst.PID)} // and its children: nginx's worker
		if kids, err := proc.Descendants(inst.PID); err == nil {
			for _, k := range kids {
				pids = append(pids, strconv.Itoa(k))
			}
		}
		perf = exec.Command("perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "--call-graph", "fp",
			"-p", strings.Join(pids, ","), "-o", filepath.Join(o.perfDir, name))
		if err := perf.Start(); err != nil {
			return m, fmt.Errorf("perf: %w", err)
		}
		defer perf.Process.Kill()
	}
	h0, sys0 := selfCPU(), system()
	t0 := time.Now()

	if err := sleep(ctx, o.duration); err != nil {
		return m, err
	}
	m.SendTime = time.Since(t0).Seconds()
	g.Stop(o.drain)
	stopped = true
	if perf != nil {
		perf.Process.Signal(os.Interrupt)
		perf.Wait()
	}

	c1, err := inst.CPU()
	if err != nil {
		return m, err
	}
	h1, sys1 := selfCPU(), system()
	m.Window = time.Since(t0).Seconds()
	capacity := m.Window * float64(runtime.NumCPU()) * float64(proc.ClockTicks()) // in ticks
	if inst.Metrics != "" {
		if s1, err = scrape(); err != nil {
			return m, err
		}
	}

	st := g.Stats(1)
	m.Sent, m.SendErrors, m.Returned, m.Late = st.Sent, st.SendErrors, st.Received, st.Late
	m.Forwarded = echo.Stats().PerPhase[1]
	m.Loss = st.Loss()
	m.RTTp50us = float64(st.RTT.Quantile(0.5)) / 1e3
	m.RTTp99us = float64(st.RTT.Quantile(0.99)) / 1e3
	m.ProxyCPUus = (c1 - c0).Micros()
	m.HarnessUsRT = float64(h1-h0) / 1e3 / float64(max(st.Received, 1))
	if sys1.Total > 0 && sys0.Total > 0 {
		// Idle time is exact on a tickless kernel, busy time is not (see
		// proc.CPUTimes): busy = wall-clock capacity - idle.
		busy := max(capacity-float64(sys1.Idle-sys0.Idle), 0)
		m.MachineBusy = min(busy/capacity, 1)
		harness := float64(h1-h0) / 1e9 * float64(proc.ClockTicks())
		m.OtherBusy = max(busy-float64(c1-c0)-harness, 0) / capacity
	}
	if st.Received == 0 {
		return m, errors.New("no replies in the window")
	}
	rt := float64(st.Received)
	if inst.PID != 0 {
		m.ProxyUsPerRT = m.ProxyCPUus / rt
	}
	if s1 != nil {
		d := func(k string) float64 { return s1[k] - s0[k] }
		m.Mallocs = d("go_memstats_mallocs_total")
		m.FlowsCreated = d("fastudp_flows_created_total")
		if b := d("fastudp_shard_batches_total"); b > 0 {
			m.BatchFill = d("fastudp_shard_batch_datagrams_total") / b
		}
		m.LoopsPerRT = d("fastudp_shard_loop_iterations_total") / rt
		m.ProxyDrops = d("fastudp_drops_total") + d("fastudp_kernel_drops_total")
		// No-load baseline: what a scrape itself allocates (it varies a lot
		// from one scrape to the next: the collectors run concurrently).
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return m, err
		}
		var deltas []float64
		prev := s1["go_memstats_mallocs_total"]
		for range 4 {
			b, err := scrape()
			if err != nil {
				return m, err
			}
			deltas = append(deltas, b["go_memstats_mallocs_total"]-prev)
			prev = b["go_memstats_mallocs_total"]
		}
		bs := summarize(deltas)
		m.MallocsBaseline, m.MallocsSpread = bs.med, bs.hi-bs.lo
		m.MallocsPerRT = (m.Mallocs - m.MallocsBaseline) / rt
	}
	return m, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// selfCPU returns this process's user+system time in ns.
func selfCPU() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func system() proc.CPUTimes {
	t, _ := proc.System()
	return t
}

// moduleRoot returns the directory of the main module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run proxycpu from inside the fastudp module")
	}
	return filepath.Dir(mod), nil
}

func findPeerScript(root, name string) string {
	for _, dir := range []string{filepath.Join(root, "..", "shared", "peers"), "/work/shared/peers"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return filepath.Join(root, "..", "shared", "peers", name)
}

func buildFastudp(ctx context.Context, root string, stderr io.Writer) (string, error) {
	dir, err := os.MkdirTemp("", "proxycpu-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "fastudp")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/fastudp")
	cmd.Dir, cmd.Stdout, cmd.Stderr = root, stderr, stderr
	fmt.Fprintln(stderr, "proxycpu: building ./cmd/fastudp")
	if err := cmd.Run(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("go build ./cmd/fastudp: %w", err)
	}
	return bin, nil
}

// ---- report ----

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

func markdown(o options, fs *flag.FlagSet, tgs []target.Target, ms []Measurement, took time.Duration) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	var set []string
	fs.Visit(func(f *flag.Flag) { set = append(set, "-"+f.Name+" "+f.Value.String()) })
	p("Machine: %s, %d CPUs (GOMAXPROCS %d), Linux %s, %s. Whole run: %.0f s.\n",
		proc.CPUModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), proc.KernelRelease(), runtime.Version(), took.Seconds())
	p("Command: `go run ./bench/cmd/proxycpu %s`\n\n", strings.Join(set, " "))
	p("Each figure is the median of %d runs (targets interleaved, order rotated per run); "+
		"the CPU column also gives min–max, and ÷ nginx is the median of the per-run ratios "+
		"(each fastudp run against the nginx run next to it). A window is %v of load after %v of warm-up, "+
		"plus the drain of the replies still in flight. rt = one round trip (client → proxy → "+
		"backend → proxy → client: 2 datagrams through the proxy). harness = this process "+
		"(load generator + echo backend); machine busy = 1 - idle time / (window × CPUs); "+
		"other processes = the busy time used by neither the target nor the harness: noise from the rest of the machine.\n\n", o.runs, o.duration, o.warmup)

	type key struct {
		sc     string
		size   int
		target string
	}
	type runKey struct {
		key
		run int
	}
	groups := map[key][]Measurement{}
	byRun := map[runKey]Measurement{}
	for _, m := range ms {
		if m.Err == "" {
			k := key{m.Scenario, m.Size, m.Target}
			groups[k] = append(groups[k], m)
			byRun[runKey{k, m.Run}] = m
		}
	}
	// pairedRatio is the median over runs of m's CPU per rt over nginx's
	// in the same run.
	pairedRatio := func(g []Measurement) (float64, bool) {
		var xs []float64
		for _, m := range g {
			n, ok := byRun[runKey{key{m.Scenario, m.Size, "nginx"}, m.Run}]
			if ok && n.ProxyUsPerRT > 0 {
				xs = append(xs, m.ProxyUsPerRT/n.ProxyUsPerRT)
			}
		}
		return summarize(xs).med, len(xs) > 0
	}
	col := func(g []Measurement, f func(Measurement) float64) stat {
		xs := make([]float64, len(g))
		for i, m := range g {
			xs[i] = f(m)
		}
		return summarize(xs)
	}
	for _, sc := range o.scenarios {
		for _, size := range o.sizes {
			if sc == "established" {
				p("### Established flows, %d-byte payload: open loop %.0f datagrams/s over %d client sockets\n\n", size, o.rate, o.conns)
			} else {
				p("### New flow per request (responses=1), %d-byte payload: closed loop, %d sockets × 1 in flight\n\n", size, o.inflight)
			}
			p("| target | round trips/s | sent | forwarded | returned | loss %% | proxy CPU µs/rt (min–max) | ÷ nginx | proxy + harness µs/rt | RTT p50 / p99 µs | harness µs/rt | machine busy %% | other processes %% |\n")
			p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
			for _, tg := range tgs {
				g := groups[key{sc, size, tg.Name()}]
				if len(g) == 0 {
					p("| %s | failed |||||||||| \n", tg.Name())
					continue
				}
				cpu := col(g, func(m Measurement) float64 { return m.ProxyUsPerRT })
				cpuS, ratio := "—", "—"
				if tg.Name() != "direct" {
					cpuS = fmt.Sprintf("%.2f (%.2f–%.2f)", cpu.med, cpu.lo, cpu.hi)
					if r, ok := pairedRatio(g); ok {
						ratio = fmt.Sprintf("%.2f", r)
					}
				}
				p("| %s | %.0f | %.0f | %.0f | %.0f | %.3f | %s | %s | %.2f | %.0f / %.0f | %.2f | %.0f | %.0f |\n", tg.Name(),
					col(g, func(m Measurement) float64 { return float64(m.Returned) / m.SendTime }).med,
					col(g, func(m Measurement) float64 { return float64(m.Sent) }).med,
					col(g, func(m Measurement) float64 { return float64(m.Forwarded) }).med,
					col(g, func(m Measurement) float64 { return float64(m.Returned) }).med,
					col(g, func(m Measurement) float64 { return 100 * m.Loss }).med,
					cpuS, ratio,
					col(g, func(m Measurement) float64 { return m.ProxyUsPerRT + m.HarnessUsRT }).med,
					col(g, func(m Measurement) float64 { return m.RTTp50us }).med,
					col(g, func(m Measurement) float64 { return m.RTTp99us }).med,
					col(g, func(m Measurement) float64 { return m.HarnessUsRT }).med,
					col(g, func(m Measurement) float64 { return 100 * m.MachineBusy }).med,
					col(g, func(m Measurement) float64 { return 100 * m.OtherBusy }).med)
			}
			p("\n")
		}
	}

	p("### fastudp internals and allocations (from its /metrics)\n\n")
	p("| scenario | size | target | mallocs/rt (min–max) | ± resolution /rt | mallocs Δ in window | scrape baseline | flows created / rt | batch fill | loop iterations / rt | proxy drops |\n")
	p("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	var keys []key
	for k := range groups {
		if strings.HasPrefix(k.target, "fastudp") {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b key) int {
		return cmp.Or(cmp.Compare(slices.Index(o.scenarios, a.sc), slices.Index(o.scenarios, b.sc)),
			cmp.Compare(a.size, b.size), cmp.Compare(a.target, b.target))
	})
	for _, k := range keys {
		g := groups[k]
		ma := col(g, func(m Measurement) float64 { return m.MallocsPerRT })
		p("| %s | %d | %s | %.4f (%.4f–%.4f) | %.4f | %.0f | %.0f | %.3f | %.2f | %.2f | %.0f |\n", k.sc, k.size, k.target,
			ma.med, ma.lo, ma.hi,
			col(g, func(m Measurement) float64 { return m.MallocsSpread / 2 / float64(max(m.Returned, 1)) }).med,
			col(g, func(m Measurement) float64 { return m.Mallocs }).med,
			col(g, func(m Measurement) float64 { return m.MallocsBaseline }).med,
			col(g, func(m Measurement) float64 { return m.FlowsCreated / float64(max(m.Returned, 1)) }).med,
			col(g, func(m Measurement) float64 { return m.BatchFill }).med,
			col(g, func(m Measurement) float64 { return m.LoopsPerRT }).med,
			col(g, func(m Measurement) float64 { return m.ProxyDrops }).med)
	}
	p("\n")
	var failed []string
	for _, m := range ms {
		if m.Err != "" {
			failed = append(failed, fmt.Sprintf("- run %d %s %dB %s: %s", m.Run, m.Scenario, m.Size, m.Target, m.Err))
		}
	}
	if len(failed) > 0 {
		p("Failed measurements:\n\n%s\n\n", strings.Join(failed, "\n"))
	}
	return b.String()
}
