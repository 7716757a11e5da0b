// Package soak is the bench harness's long-running scenario (`fastudp bench
// soak`): the fastudp binary under a mixed load for a long time, sampling
// its open descriptors, goroutines and resident memory, so a leak of any of
// them shows as a difference between the start and the end of the run.
//
// The load: long-lived flows (open loop), a new flow per request
// (responses = 1), DNS queries through a DNS-mode listener, bulk requests
// answered with GSO runs, new flows from many source addresses that idle
// out, and a reconfiguration through the control API every few seconds
// (add, reweight, drain, undrain and remove a backend; reload the file).
package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fastudp/fastudp/bench/loadgen"
	"github.com/fastudp/fastudp/bench/proc"
	"github.com/fastudp/fastudp/bench/target"
	"github.com/fastudp/fastudp/control"
)

// Options configure a soak run.
type Options struct {
	// Bin is the fastudp binary.
	Bin string
	// Duration is the time under load (default 10 minutes).
	Duration time.Duration
	// Warmup is the load before the start sample, long enough for flows
	// that idle out to reach a steady state (default 15s).
	Warmup time.Duration
	// Sample is the sampling interval (default 5s).
	Sample time.Duration
	// Reconfigure is the interval between control-API changes (default 2s).
	Reconfigure time.Duration
	// Shards is fastudp's shard count (default 2).
	Shards int
	// Progress receives a line per sample (nil: discarded).
	Progress io.Writer
}

func (o *Options) defaults() error {
	if o.Duration == 0 {
		o.Duration = 10 * time.Minute
	}
	if o.Warmup == 0 {
		o.Warmup = 15 * time.Second
	}
	if o.Sample == 0 {
		o.Sample = 5 * time.Second
	}
	if o.Reconfigure == 0 {
		o.Reconfigure = 2 * time.Second
	}
	if o.Shards == 0 {
		o.Shards = 2
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Bin == "" {
		return errors.New("soak: no fastudp binary")
	}
	if o.Duration < time.Second || o.Sample <= 0 || o.Reconfigure <= 0 {
		return errors.New("soak: --duration must be at least 1s, --sample and --reconfigure positive")
	}
	return nil
}

// Sample is one reading of the proxy process.
type Sample struct {
	At         time.Duration // since the load started
	FDs        int           // entries in /proc/PID/fd
	Goroutines int           // go_goroutines from its metrics
	RSS        uint64        // VmRSS, bytes
	Heap       uint64        // go_memstats_heap_inuse_bytes: the Go heap's share of RSS
	Flows      int           // fastudp_flows_active, all listeners
}

// Result is what a soak run measured.
type Result struct {
	Options Options
	// Idle is the proxy before any load; Start after the warmup; End the
	// last sample under load; After once the load stopped and its flows
	// idled out; Max the highest of each figure under load.
	Idle, Start, End, After, Max Sample
	Samples                      []Sample
	// Requests and Replies count the datagrams of every generator.
	Requests, Replies uint64
	// Reconfigs counts the control-API changes made, ReconfigErrors those
	// refused.
	Reconfigs, ReconfigErrors int
	// ResourceErrors is fastudp_resource_errors_total at the end, by kind.
	ResourceErrors map[string]float64
	Took           time.Duration
}

// clusters of the soak config: a timeout short enough that flows idle out
// many times over the run.
const flowTimeout = 2 * time.Second

// Run runs the soak and returns its figures.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	began := time.Now()
	r := &Result{Options: o}
	echo1, err := loadgen.StartEcho(loadgen.EchoConfig{})
	if err != nil {
		return nil, err
	}
	defer echo1.Close()
	echo2, err := loadgen.StartEcho(loadgen.EchoConfig{})
	if err != nil {
		return nil, err
	}
	defer echo2.Close()
	echo3, err := loadgen.StartEcho(loadgen.EchoConfig{})
	if err != nil {
		return nil, err
	}
	defer echo3.Close()
	dnsSrv, err := loadgen.StartDNS(loadgen.DNSConfig{})
	if err != nil {
		return nil, err
	}
	defer dnsSrv.Close()
	blaster, err := loadgen.StartBlaster(loadgen.BlasterConfig{Run: 32, SegmentSize: 1200})
	if err != nil {
		return nil, err
	}
	defer blaster.Close()

	p, err := startProxy(o, []netip.AddrPort{echo1.Addr(), echo2.Addr()}, dnsSrv.Addr(), blaster.Addr())
	if err != nil {
		return nil, err
	}
	defer p.stop()
	if r.Idle, err = p.sample(0); err != nil {
		return nil, err
	}

	queries := loadgen.GenerateQueries(256)
	gens := []loadgen.Config{
		{Target: p.addrs["long"], Conns: 32, Sources: loadgen.LoopbackSources(8), Size: 64, Rate: 1000},
		{Target: p.addrs["short"], Conns: 16, Sources: loadgen.LoopbackSources(4), Size: 100, Rate: 500},
		{Target: p.addrs["dns"], Conns: 8, DNS: queries, Rate: 500},
		{Target: p.addrs["bulk"], Conns: 2, Size: 64, ReplyDatagrams: 32, Rate: 20, RecvBuffer: 8 << 20},
	}
	var running []*loadgen.Generator
	defer func() {
		for _, g := range running {
			g.Stop(0)
			g.Close()
		}
	}()
	for _, c := range gens {
		g, err := loadgen.New(c)
		if err != nil {
			return nil, err
		}
		running = append(running, g)
		g.SetPhase(1)
		g.Start()
	}
	sp, err := loadgen.NewSprayer(loadgen.SprayConfig{Target: p.addrs["long"], Sockets: 16,
		Sources: loadgen.LoopbackSources(64), Rate: 300})
	if err != nil {
		return nil, err
	}
	defer sp.Close()
	sp.SetPhase(1)
	sp.Start()
	spStopped := false
	defer func() {
		if !spStopped {
			sp.Stop(0)
		}
	}()

	rcCtx, stopRC := context.WithCancel(ctx)
	rcDone := make(chan struct{})
	go func() {
		defer close(rcDone)
		r.Reconfigs, r.ReconfigErrors = reconfigure(rcCtx, p.control, o.Reconfigure, echo1.Addr(), echo2.Addr(), echo3.Addr())
	}()
	defer func() { stopRC(); <-rcDone }()

	loadStart := time.Now()
	if err := sleep(ctx, o.Warmup); err != nil {
		return nil, err
	}
	if r.Start, err = p.sample(time.Since(loadStart)); err != nil {
		return nil, err
	}
	r.Max = r.Start
	r.Samples = append(r.Samples, r.Start)
	fmt.Fprintf(o.Progress, "soak: start %s\n", r.Start)
	end := loadStart.Add(o.Warmup + o.Duration)
	for time.Now().Before(end) {
		if err := sleep(ctx, min(o.Sample, time.Until(end))); err != nil {
			return nil, err
		}
		s, err := p.sample(time.Since(loadStart))
		if err != nil {
			return nil, err
		}
		r.Samples = append(r.Samples, s)
		r.Max = maxSample(r.Max, s)
		fmt.Fprintf(o.Progress, "soak: %s\n", s)
	}
	r.End = r.Samples[len(r.Samples)-1]
	stopRC()
	<-rcDone
	for _, g := range running {
		g.Stop(time.Second)
		st := g.Stats(1)
		r.Requests += st.Attempted()
		r.Replies += st.Received
	}
	sp.Stop(time.Second)
	spStopped = true
	fs := sp.Stats(1)
	r.Requests += fs.Sent + fs.SendErrors
	r.Replies += fs.Received
	if r.ResourceErrors, err = target.Scrape(p.metrics, "fastudp_resource_errors_total"); err != nil {
		return nil, err
	}
	// Let every flow idle out, then read the figures once more.
	if err := sleep(ctx, 2*flowTimeout+2*time.Second); err != nil {
		return nil, err
	}
	if r.After, err = p.sample(time.Since(loadStart)); err != nil {
		return nil, err
	}
	if r.Replies == 0 {
		return r, errors.New("soak: no replies came back through fastudp")
	}
	r.Took = time.Since(began)
	return r, nil
}

func (s Sample) String() string {
	return fmt.Sprintf("t=%v fds=%d goroutines=%d rss=%.1fMiB heap=%.1fMiB flows=%d", s.At.Round(time.Second), s.FDs, s.Goroutines, float64(s.RSS)/(1<<20), float64(s.Heap)/(1<<20), s.Flows)
}

func maxSample(a, b Sample) Sample {
	a.FDs = max(a.FDs, b.FDs)
	a.Goroutines = max(a.Goroutines, b.Goroutines)
	a.RSS = max(a.RSS, b.RSS)
	a.Heap = max(a.Heap, b.Heap)
	a.Flows = max(a.Flows, b.Flows)
	a.At = 0
	return a
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reconfigure makes one control-API change every interval until ctx ends,
// cycling through add, reweight, drain, undrain, reweight back, remove and
// reload, and returns the changes made and those refused.
func reconfigure(ctx context.Context, c *control.Client, every time.Duration, a, b, spare netip.AddrPort) (n, failed int) {
	steps := []func(context.Context) error{
		func(ctx context.Context) error { _, err := c.AddBackend(ctx, "echo", spare, 1); return err },
		func(ctx context.Context) error { _, err := c.SetWeight(ctx, "echo", a, 3); return err },
		func(ctx context.Context) error { _, err := c.DrainBackend(ctx, "echo", b, true); return err },
		func(ctx context.Context) error { _, err := c.DrainBackend(ctx, "echo", b, false); return err },
		func(ctx context.Context) error { _, err := c.SetWeight(ctx, "echo", a, 1); return err },
		func(ctx context.Context) error { _, err := c.RemoveBackend(ctx, "echo", spare); return err },
		func(ctx context.Context) error { _, err := c.Reload(ctx); return err },
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return n, failed
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := steps[i%len(steps)](cctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			failed++
		}
		n++
	}
}

// proxy is the running fastudp.
type proxy struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	dir     string
	addrs   map[string]netip.AddrPort
	metrics string
	control *control.Client
	out     *syncBuffer
}

// syncBuffer collects the proxy's output; exec writes it from a goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b.Len() > 64<<10 {
		return len(p), nil
	}
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func startProxy(o Options, echo []netip.AddrPort, dnsAddr, bulk netip.AddrPort) (*proxy, error) {
	dir, err := os.MkdirTemp("", "fastudp-soak-")
	if err != nil {
		return nil, err
	}
	p := &proxy{dir: dir, addrs: map[string]netip.AddrPort{}, exited: make(chan struct{}), out: &syncBuffer{}}
	mp, err := target.FreeTCPPort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	maddr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), mp)
	p.metrics = "http://" + maddr.String() + "/metrics"
	sock := filepath.Join(dir, "control.sock")
	var b strings.Builder
	fmt.Fprintf(&b, "shards = %d\nlog_level = \"warn\"\nmetrics = %q\ncontrol = %q\nmax_flows = 65536\n", o.Shards, maddr, sock)
	clusters := []struct {
		name, extra string
		backends    []netip.AddrPort
	}{
		{"long", "name = \"echo\"\nresponses = 0\n", echo},
		{"short", "name = \"short\"\nresponses = 1\n", echo},
		{"dns", "name = \"dns\"\nmode = \"dns\"\n", []netip.AddrPort{dnsAddr}},
		{"bulk", "name = \"bulk\"\nresponses = 0\n", []netip.AddrPort{bulk}},
	}
	for _, c := range clusters {
		port, err := target.FreeUDPPort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)
		p.addrs[c.name] = addr
		cl := strings.TrimPrefix(strings.SplitN(c.extra, "\n", 2)[0], "name = ")
		fmt.Fprintf(&b, "\n[[listener]]\nname = %q\naddress = %q\ncluster = %s\n", c.name, addr, cl)
	}
	for _, c := range clusters {
		fmt.Fprintf(&b, "\n[[cluster]]\n%sfront_timeout = %q\nback_timeout = %q\n", c.extra, flowTimeout, flowTimeout)
		for _, be := range c.backends {
			fmt.Fprintf(&b, "  [[cluster.backend]]\n  address = %q\n", be)
		}
	}
	conf := filepath.Join(dir, "soak.toml")
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p.cmd = exec.Command(o.Bin, "run", "--config", conf)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("soak: fastudp: %w", err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	p.control = control.NewClient(sock)
	if err := target.WaitEcho(p.addrs["long"], 10*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("soak: fastudp did not start: %w; output: %s", err, p.out.String())
	}
	return p, nil
}

func (p *proxy) stop() {
	if p.cmd.Process != nil {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
	p.control.Close()
	os.RemoveAll(p.dir)
}

// sample reads the proxy's descriptors, goroutines, RSS and live flows.
func (p *proxy) sample(at time.Duration) (Sample, error) {
	s := Sample{At: at}
	select {
	case <-p.exited:
		return s, fmt.Errorf("soak: fastudp exited; output: %s", p.out.String())
	default:
	}
	pid := p.cmd.Process.Pid
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return s, fmt.Errorf("soak: descriptors: %w", err)
	}
	s.FDs = len(ents)
	if s.RSS, err = proc.RSS(pid); err != nil {
		return s, fmt.Errorf("soak: RSS: %w", err)
	}
	m, err := target.Scrape(p.metrics, "go_goroutines", "fastudp_flows_active", "go_memstats_heap_inuse_bytes")
	if err != nil {
		return s, fmt.Errorf("soak: metrics: %w", err)
	}
	s.Goroutines = int(m["go_goroutines"])
	s.Flows = int(m["fastudp_flows_active"])
	s.Heap = uint64(m["go_memstats_heap_inuse_bytes"])
	return s, nil
}

// Markdown writes the result as a table, with the command that produced it.
func (r *Result) Markdown(w io.Writer, command string) {
	fmt.Fprintf(w, "Command: `%s` (%d shards, %v under load after %v of warmup, took %v)\n\n",
		command, r.Options.Shards, r.Options.Duration, r.Options.Warmup, r.Took.Round(time.Second))
	fmt.Fprintln(w, "| sample | open fds | goroutines | RSS (MiB) | Go heap in use (MiB) | live flows |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|")
	row := func(name string, s Sample) {
		fmt.Fprintf(w, "| %s | %d | %d | %.1f | %.1f | %d |\n", name, s.FDs, s.Goroutines, float64(s.RSS)/(1<<20), float64(s.Heap)/(1<<20), s.Flows)
	}
	row("idle, before load", r.Idle)
	row(fmt.Sprintf("start (t=%v)", r.Start.At.Round(time.Second)), r.Start)
	row(fmt.Sprintf("end (t=%v)", r.End.At.Round(time.Second)), r.End)
	row("max under load", r.Max)
	row("idle, after load (flows timed out)", r.After)
	fmt.Fprintf(w, "\nDatagrams sent by the generators: %d, replies: %d; control-API changes: %d (%d refused).\n",
		r.Requests, r.Replies, r.Reconfigs, r.ReconfigErrors)
	var kinds []string
	for k, v := range r.ResourceErrors {
		if strings.HasPrefix(k, "fastudp_resource_errors_total{") && v > 0 {
			kinds = append(kinds, fmt.Sprintf("%s %.0f", strings.TrimSuffix(strings.TrimPrefix(k, "fastudp_resource_errors_total{kind=\""), "\"}"), v))
		}
	}
	if len(kinds) == 0 {
		fmt.Fprintln(w, "Resource errors: none.")
	} else {
		fmt.Fprintf(w, "Resource errors: %s.\n", strings.Join(kinds, ", "))
	}
}
