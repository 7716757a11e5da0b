// Package harness is the benchmark behind `fastudp bench`: it runs
// scenarios (DNS queries per second, small-datagram packets per second,
// bulk GSO runs, flow churn, latency at half load, memory per flow, a
// new-flow flood) through targets (fastudp, the floor forwarders of
// bench/floor, nginx, dnsdist, socat, or no proxy at all), each target
// repeatedly and interleaved, and reports medians and ratios as a markdown
// table and SVG charts.
//
// The headline figure is the proxy's CPU time per datagram (utime+stime of
// its process tree from /proc, divided by the datagrams that crossed it in
// both directions): on a small shared machine throughput is bounded by the
// load generator and backend as much as by the proxy, but the CPU a hop
// spends per datagram is its own.
package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
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
	"golang.org/x/sys/unix"
)

// Options configure a run.
type Options struct {
	Scenarios []string      // scenario names (default: DefaultScenarios)
	Targets   []string      // target names (default: DefaultTargets)
	Duration  time.Duration // measured window per target and run (default 2s)
	Warmup    time.Duration // load before the window (default 300ms)
	Drain     time.Duration // longest wait for replies after the window (default 1s)
	Runs      int           // repetitions, interleaved (default 3)
	OutDir    string        // report.md, results.json and the charts ("" writes nothing)

	// Bin is the fastudp binary: the fastudp target, and `Bin bench floor`
	// for the floor.
	Bin string
	// PeersDir holds the peers' start scripts and queries.txt (default:
	// ../shared/peers, then /work/shared/peers).
	PeersDir string
	// DNSBackend is "responder" (the built-in DNS responder, default) or
	// "knot" (knotd through start-knot.sh).
	DNSBackend string
	// Rate is small-pps's open-loop rate in requests per second (default
	// 25000; each is 2 datagrams through the proxy).
	Rate float64
	// BulkConns is the bulk-gso, bulk-gro and bulk-up client sockets, each with one
	// request in flight (default 8).
	BulkConns int
	// Flows is many-flows's flow count (default 100000).
	Flows int
	// FloodRate is new-flow-flood's rate of new flows per second (default
	// 50000) and FloodMaxFlows fastudp's max_flows in it (default 1000).
	FloodRate     float64
	FloodMaxFlows int
	// FloodRates are the rates of the shed-capacity sweep: scenario "flood"
	// runs flood-<rate> for each (default [DefaultFloodRates]).
	FloodRates []float64
	// FastudpArgs are extra `fastudp run` flags for the fastudp targets
	// (modes such as --affinity ip-port or --proxy-protocol every).
	FastudpArgs []string
	// Command is the command line to print in the report.
	Command string

	Stdout   io.Writer // the markdown report (nil: discarded)
	Progress io.Writer // progress bar or lines (nil: discarded)
	TTY      bool      // draw a progress bar instead of lines
}

// DefaultScenarios are the scenarios run when none are named, in report
// order: all but dnsperf, which needs dnsperf and knot and is run by name.
var DefaultScenarios = []string{"small-pps", "dns-qps", "bulk-gso", "bulk-gro", "quic-bulk", "flow-churn", "latency", "many-flows", "new-flow-flood"}

// scenarioNames lists every scenario.
func scenarioNames() string {
	var n []string
	for _, s := range scenarios {
		n = append(n, s.name)
	}
	n = append(n, floodScenarioName+" (flood-<rate>)")
	return strings.Join(n, ", ")
}

// DefaultTargets are the targets run when none are named.
var DefaultTargets = []string{"fastudp", "fastudp-2", "floor", "nginx", "dnsdist", "socat", "direct"}

func (o *Options) defaults() error {
	if len(o.Scenarios) == 0 {
		o.Scenarios = DefaultScenarios
	}
	if len(o.Targets) == 0 {
		o.Targets = DefaultTargets
	}
	if o.Duration == 0 {
		o.Duration = 2 * time.Second
	}
	if o.Warmup == 0 {
		o.Warmup = 300 * time.Millisecond
	}
	if o.Drain == 0 {
		o.Drain = time.Second
	}
	if o.Runs == 0 {
		o.Runs = 3
	}
	if o.DNSBackend == "" {
		o.DNSBackend = "responder"
	}
	if o.Rate == 0 {
		o.Rate = 25000
	}
	if o.BulkConns == 0 {
		o.BulkConns = 8
	}
	if o.Flows == 0 {
		o.Flows = 100000
	}
	if o.FloodRate == 0 {
		o.FloodRate = 50000
	}
	if o.FloodMaxFlows == 0 {
		o.FloodMaxFlows = 1000
	}
	if len(o.FloodRates) == 0 {
		o.FloodRates = DefaultFloodRates
	}
	o.Scenarios = expandFlood(o.Scenarios, o.FloodRates)
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.PeersDir == "" {
		o.PeersDir = "../shared/peers"
		if _, err := os.Stat(o.PeersDir); err != nil {
			o.PeersDir = "/work/shared/peers"
		}
	}
	if o.Duration < 100*time.Millisecond || o.Runs < 1 {
		return errors.New("bench: --duration must be at least 100ms and --runs at least 1")
	}
	if o.DNSBackend != "responder" && o.DNSBackend != "knot" {
		return fmt.Errorf("bench: --dns-backend %q: want responder or knot", o.DNSBackend)
	}
	for _, s := range o.Scenarios {
		if findScenario(s) == nil {
			return fmt.Errorf("bench: unknown scenario %q (have %s)", s, scenarioNames())
		}
	}
	if o.Bin == "" {
		return errors.New("bench: no fastudp binary")
	}
	return nil
}

// Measurement is one target in one scenario in one run.
type Measurement struct {
	Scenario string
	Target   string
	Run      int
	Err      string `json:",omitempty"`

	Window         float64 // seconds from the window's start to the end of its last send
	Requests       uint64  // requests sent in the window (attempts included)
	Replies        uint64  // reply datagrams received for them
	Completed      uint64  // requests fully answered
	Loss           float64 // share of expected reply datagrams missing
	Datagrams      uint64  // datagrams through the proxy: requests + replies
	Rate           float64 // completed requests per second
	BytesSec       float64 // reply payload bytes per second
	P50, P99, P999 float64 // round-trip µs

	CPUus          float64 // proxy CPU in the window, µs
	CPUPerDatagram float64 // µs per datagram through it (0 for direct)
	HarnessCPUus   float64 // this process: generator and backend
	OtherBusy      float64 // share of the machine used by neither

	// Scenario-specific figures (see the report's column headings).
	Extra map[string]float64 `json:",omitempty"`
}

func (m *Measurement) set(k string, v float64) {
	if m.Extra == nil {
		m.Extra = map[string]float64{}
	}
	m.Extra[k] = v
}

// setRTT sets the round-trip percentiles, in µs, from h.
func (m *Measurement) setRTT(h *loadgen.Hist) {
	m.P50 = float64(h.Quantile(0.5)) / 1e3
	m.P99 = float64(h.Quantile(0.99)) / 1e3
	m.P999 = float64(h.Quantile(0.999)) / 1e3
}

// Result is what Run returns.
type Result struct {
	Options      Options
	Measurements []Measurement
	Skipped      []string // targets left out, and why
	Took         time.Duration
	Started      time.Time
}

// Run runs the scenarios against the targets, writes the report and
// charts, and returns the measurements. It fails when a requested peer is
// missing and CI=true, or when every measurement failed.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	raiseNoFile()
	h := &harness{o: o}
	defer h.close()
	res := &Result{Options: o, Started: time.Now()}
	tgs, skipped, err := h.targets()
	if err != nil {
		return nil, err
	}
	res.Skipped = skipped
	if slices.Contains(o.Scenarios, "dnsperf") {
		if err := h.checkDnsperf(); err != nil {
			if os.Getenv("CI") == "true" {
				return nil, fmt.Errorf("bench: scenario dnsperf: %w", err)
			}
			res.Skipped = append(res.Skipped, fmt.Sprintf("scenario dnsperf: %v", err))
			o.Scenarios = slices.DeleteFunc(slices.Clone(o.Scenarios), func(s string) bool { return s == "dnsperf" })
		}
	}
	if h.queries, err = loadQueries(o.PeersDir); err != nil {
		return nil, err
	}
	if o.DNSBackend == "knot" {
		k := target.Knot{Script: filepath.Join(o.PeersDir, "start-knot.sh")}
		if err := k.Check(); err != nil {
			return nil, fmt.Errorf("--dns-backend knot: %w", err)
		}
	}
	type job struct {
		sc  *scenario
		tg  target.Target
		run int
	}
	var jobs []job
	for r := range o.Runs {
		for _, name := range o.Scenarios {
			sc := findScenario(name)
			var these []target.Target
			for _, tg := range tgs {
				if sc.applies(tg.Name()) && (!quicOnly(tg.Name()) || sc.name == "quic-bulk") {
					these = append(these, tg)
				}
			}
			for k := range these {
				jobs = append(jobs, job{sc, these[(k+r)%len(these)], r + 1}) // rotate the order every run
			}
		}
	}
	if len(jobs) == 0 {
		if len(res.Skipped) > 0 {
			return nil, fmt.Errorf("bench: no scenario applies to the targets given (skipped: %s)", strings.Join(res.Skipped, "; "))
		}
		return nil, errors.New("bench: no scenario applies to the targets given")
	}
	pb := newProgress(o.Progress, o.TTY, len(jobs))
	for i, j := range jobs {
		pb.start(i, j.sc.name+" "+j.tg.Name()+" run "+strconv.Itoa(j.run))
		m, err := j.sc.measure(ctx, h, j.tg)
		m.Scenario, m.Target, m.Run = j.sc.name, j.tg.Name(), j.run
		if err != nil {
			if ctx.Err() != nil {
				pb.finish()
				return nil, ctx.Err()
			}
			m.Err = err.Error()
		}
		res.Measurements = append(res.Measurements, m)
		pb.done(i, m.summary())
	}
	pb.finish()
	res.Took = time.Since(res.Started)
	report := markdown(res)
	fmt.Fprint(o.Stdout, report)
	if o.OutDir != "" {
		if err := writeOutputs(o.OutDir, res, report); err != nil {
			return res, err
		}
	}
	failed := 0
	for _, m := range res.Measurements {
		if m.Err != "" {
			failed++
		}
	}
	if failed == len(res.Measurements) {
		return res, errors.New("bench: every measurement failed (see the report)")
	}
	if failed > 0 && os.Getenv("CI") == "true" {
		return res, fmt.Errorf("bench: %d measurements failed (see the report)", failed)
	}
	return res, nil
}

type harness struct {
	o       Options
	queries []loadgen.Query

	knot       *target.Instance // the dnsperf scenario's backend, shared by its runs
	queriesTmp string           // generated dnsperf data file, if queries.txt is missing
}

// close stops what the scenarios shared across measurements.
func (h *harness) close() {
	if h.knot != nil {
		h.knot.Stop()
		h.knot = nil
	}
	if h.queriesTmp != "" {
		os.Remove(h.queriesTmp)
	}
}

// targets builds the requested targets. A missing peer is an error under
// CI=true and is skipped with a note otherwise.
func (h *harness) targets() ([]target.Target, []string, error) {
	var out []target.Target
	var skipped []string
	seen := map[string]bool{}
	for _, name := range h.o.Targets {
		name = strings.TrimSpace(name)
		if name == "" || seen[name] {
			continue
		}
		seen[name] = true
		var tg target.Target
		switch {
		case name == "direct":
			tg = target.Direct{}
		case name == "floor":
			tg = floorTarget{relay: target.Floor{Command: []string{h.o.Bin, "bench", "floor"}},
				dns: target.Floor{Command: []string{h.o.Bin, "bench", "floor"}, DNS: true}}
		case name == "nginx":
			tg = target.Nginx{Script: filepath.Join(h.o.PeersDir, "start-nginx-udp.sh")}
		case name == "dnsdist":
			tg = target.Dnsdist{Script: filepath.Join(h.o.PeersDir, "start-dnsdist.sh")}
		case name == "socat":
			tg = target.Socat{Idle: 2}
		case quicOnly(name):
			tg = h.fastudpQUICTarget()
		case isFastudp(name) && strings.Contains(name, "@"):
			// fastudp[-N]@PATH: the same target run from the binary at
			// PATH, to compare two builds in one interleaved run.
			base, bin, _ := strings.Cut(name, "@")
			if bin == "" || strings.Contains(base, noGSOSuffix) {
				return nil, nil, fmt.Errorf("bench: target %q: want fastudp[-N]@PATH", name)
			}
			if _, err := os.Stat(bin); err != nil {
				return nil, nil, fmt.Errorf("bench: target %q: %w", name, err)
			}
			f, err := h.fastudpTarget(base)
			if err != nil {
				return nil, nil, err
			}
			f.Bin, f.Label = bin, name
			tg = f
		case isFastudp(name) && strings.HasSuffix(name, noGSOSuffix):
			// fastudp[-dns][-N]-nogso: the same target with GRO and GSO
			// off, to measure both in one interleaved run.
			f, err := h.fastudpTarget(strings.TrimSuffix(name, noGSOSuffix))
			if err != nil {
				return nil, nil, err
			}
			f.Label = name
			f.Args = append(slices.Clone(f.Args), "--gro=false", "--gso=false")
			tg = f
		case isFastudp(name):
			f, err := h.fastudpTarget(name)
			if err != nil {
				return nil, nil, err
			}
			tg = f
		default:
			return nil, nil, fmt.Errorf("bench: unknown target %q (have fastudp, fastudp-N, fastudp-dns, fastudp-dns-N, each also with -nogso or @PATH, fastudp-quic, floor, nginx, dnsdist, socat, direct)", name)
		}
		if c, ok := tg.(target.Checker); ok {
			if err := c.Check(); err != nil {
				if os.Getenv("CI") == "true" {
					return nil, nil, fmt.Errorf("bench: target %s: %w", name, err)
				}
				skipped = append(skipped, fmt.Sprintf("%s: %v", name, err))
				continue
			}
		}
		out = append(out, tg)
	}
	if len(out) == 0 {
		return nil, skipped, fmt.Errorf("bench: no target to run (skipped: %s)", strings.Join(skipped, "; "))
	}
	return out, skipped, nil
}

// noGSOSuffix turns a fastudp target's GRO and GSO off.
const noGSOSuffix = "-nogso"

// fastudpTarget builds fastudp, fastudp-N, fastudp-dns or fastudp-dns-N.
func (h *harness) fastudpTarget(name string) (target.Fastudp, error) {
	switch {
	case name == "fastudp-dns" || strings.HasPrefix(name, "fastudp-dns-"):
		shards := 1
		if s, ok := strings.CutPrefix(name, "fastudp-dns-"); ok {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 256 {
				return target.Fastudp{}, fmt.Errorf("bench: target %q: want fastudp-dns or fastudp-dns-N, N shards", name)
			}
			shards = n
		}
		args := append(append([]string{}, h.o.FastudpArgs...), "--mode", "dns")
		return target.Fastudp{Bin: h.o.Bin, Shards: shards, Metrics: true, Label: name, Args: args}, nil
	default:
		shards := 1
		if s, ok := strings.CutPrefix(name, "fastudp-"); ok {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 256 {
				return target.Fastudp{}, fmt.Errorf("bench: target %q: want fastudp or fastudp-N, N shards (each also with %s)", name, noGSOSuffix)
			}
			shards = n
		}
		return target.Fastudp{Bin: h.o.Bin, Shards: shards, Metrics: true, Label: name, Args: h.o.FastudpArgs}, nil
	}
}

// floorTarget is the floor: the opaque relay, or the DNS forwarder for DNS
// scenarios.
type floorTarget struct {
	relay, dns target.Floor
	useDNS     bool
}

func (floorTarget) Name() string { return "floor" }

func (f floorTarget) Start(backend netip.AddrPort, m target.Mode) (*target.Instance, error) {
	if f.useDNS {
		return f.dns.Start(backend, m)
	}
	return f.relay.Start(backend, m)
}

func (f floorTarget) withDNS() floorTarget { f.useDNS = true; return f }

func loadQueries(dir string) ([]loadgen.Query, error) {
	q, err := loadgen.ReadQueryFile(filepath.Join(dir, "queries.txt"))
	if errors.Is(err, os.ErrNotExist) {
		return loadgen.GenerateQueries(1000), nil
	}
	return q, err
}

// raiseNoFile lifts this process's open-file limit as far as the kernel
// allows (root may raise the hard limit up to fs.nr_open), so the targets
// it starts inherit room for 100k flows, each with its upstream socket.
func raiseNoFile() {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) != nil {
		return
	}
	want := uint64(1 << 20)
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
			want = n
		}
	}
	if want > lim.Max {
		if unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: want, Max: want}) == nil {
			return
		}
	}
	_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: lim.Max, Max: lim.Max}) // best effort
}

// selfCPU returns this process's user+system time in µs.
func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e3
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

// machine describes the machine the report was measured on.
func machine() string {
	return fmt.Sprintf("%s, %d CPUs (GOMAXPROCS %d), Linux %s, %s", proc.CPUModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), proc.KernelRelease(), runtime.Version())
}

// systemIdle returns the machine's idle ticks.
func systemIdle() float64 {
	t, err := proc.System()
	if err != nil {
		return -1
	}
	return float64(t.Idle)
}
