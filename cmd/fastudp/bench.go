package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/bench/floor"
	"github.com/fastudp/fastudp/bench/harness"
)

const benchUsage = `Usage: fastudp bench [SCENARIO...] [flags]

Runs each scenario through each target on loopback, interleaved and
repeated, then prints a markdown table and writes it, results.json and SVG
charts (cpu.svg, latency.svg) to --out. The headline figure is the proxy's
CPU time per datagram.

Scenarios (default: all):
  small-pps       64-byte datagrams on established flows, open loop at --rate
  dns-qps         DNS queries, closed loop, a new flow per query
  bulk-gso        each request answered with 32 × 1200 B in one GSO send
  bulk-gro        bulk-gso with the client reading with UDP_GRO
  bulk-up         each request is 32 × 1200 B sent in one GSO send (an upload),
                  acked; not in the default set; with --fastudp-args
                  "--proxy-protocol every" every datagram gets a PROXY v2 header
  quic-bulk       quic-go transfers of 16 MiB through the target (in-process
                  server and client, both with GSO/GRO)
  flow-churn      a new client socket (source port) per request
  latency         round-trip percentiles at 50% of each target's maximum
  many-flows      RSS per 100k flows (fastudp only)
  new-flow-flood  new flows at --flood-rate against a small max_flows (fastudp only)
  soak            fastudp alone under a mixed load for --duration (default 10m),
                  with open fds, goroutines and RSS at start and end (its own
                  flags: fastudp bench soak -h)
  dnsperf         dnsperf -> target -> knot (issue 5): qps, loss and CPU per
                  query; not in the default set (needs dnsperf and knot), e.g.
                  fastudp bench dnsperf --targets fastudp-dns,fastudp,dnsdist,nginx,floor,direct

Targets: fastudp (1 shard), fastudp-N (N shards), fastudp-dns and
fastudp-dns-N (fastudp run --mode dns; DNS scenarios only), each also with
-nogso (--gro=false --gso=false, e.g. fastudp-nogso), fastudp-quic
(--affinity quic with a QUIC-LB server ID; quic-bulk only), floor (minimal
recvmmsg/sendmmsg forwarders), nginx, dnsdist, socat, direct (no proxy).
Peers come from apt (nginx libnginx-mod-stream dnsdist socat knot dnsperf);
a missing one is skipped with a note, or is an error when CI=true.

"fastudp bench floor relay|dns --listen ADDR --backend ADDR [--responses N]"
runs one floor forwarder until killed; the benchmark starts it as a target.

Flags:
`

// benchCommand implements `fastudp bench`.
func benchCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "floor" {
		return floorCommand(args[1:], stderr)
	}
	if len(args) > 0 && args[0] == "soak" {
		return soakCommand(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("fastudp bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, benchUsage)
		fs.PrintDefaults()
	}
	var o harness.Options
	targets := fs.String("targets", strings.Join(harness.DefaultTargets, ","), "comma-separated `TARGETS`")
	fs.DurationVar(&o.Duration, "duration", 2*time.Second, "measured window per target and run")
	fs.DurationVar(&o.Warmup, "warmup", 300*time.Millisecond, "load before each window")
	fs.DurationVar(&o.Drain, "drain", time.Second, "longest wait for replies after a window")
	fs.IntVar(&o.Runs, "runs", 3, "repetitions, interleaved; the report gives medians")
	fs.StringVar(&o.OutDir, "out", "bench-out", "write report.md, results.json and the charts to `DIR` (\"\" for none)")
	fs.Float64Var(&o.Rate, "rate", 25000, "small-pps: requests per second (open loop)")
	fs.IntVar(&o.BulkConns, "bulk-conns", 8, "bulk-gso, bulk-gro, bulk-up: client sockets, one request in flight each")
	fs.IntVar(&o.Flows, "flows", 100000, "many-flows: flows to open")
	fs.Float64Var(&o.FloodRate, "flood-rate", 50000, "new-flow-flood: new flows per second")
	fs.IntVar(&o.FloodMaxFlows, "flood-max-flows", 1000, "new-flow-flood: fastudp's --max-flows")
	fs.StringVar(&o.DNSBackend, "dns-backend", "responder", "dns-qps backend: responder (built in) or knot")
	fs.StringVar(&o.PeersDir, "peers", "", "`DIR` with the peers' start scripts and queries.txt (default ../shared/peers, then /work/shared/peers)")
	fastudpArgs := fs.String("fastudp-args", "", "extra `FLAGS` for the fastudp targets' `fastudp run`, space-separated (e.g. \"--affinity ip-port\")")
	replot := fs.String("replot", "", "only redraw the charts in `DIR` from its results.json (scenarios and --targets give the order)")
	fs.StringVar(&o.Bin, "bin", "", "fastudp binary for the fastudp and floor targets (default: this one)")
	// Flags and scenario names may be mixed: parse, take one name, repeat.
	rest := args
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return &exitError{code: 2}
		}
		if fs.NArg() == 0 {
			break
		}
		o.Scenarios = append(o.Scenarios, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if *replot != "" {
		var tgs []string
		if *targets != strings.Join(harness.DefaultTargets, ",") {
			tgs = strings.Split(*targets, ",")
		}
		return harness.Replot(*replot, o.Scenarios, tgs)
	}
	if o.Runs < 1 || o.Duration < 100*time.Millisecond {
		return &exitError{code: 2, err: errors.New("bench: --runs must be at least 1 and --duration at least 100ms")}
	}
	o.Targets = strings.Split(*targets, ",")
	o.FastudpArgs = strings.Fields(*fastudpArgs)
	if o.Bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		o.Bin = exe
	}
	o.Command = strings.TrimSpace("fastudp bench " + strings.Join(args, " "))
	o.Stdout, o.Progress = stdout, stderr
	if f, ok := stderr.(*os.File); ok {
		_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
		o.TTY = err == nil
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	if _, err := harness.Run(ctx, o); err != nil {
		return err
	}
	if o.OutDir != "" {
		fmt.Fprintf(stderr, "bench: report, results and charts in %s/\n", o.OutDir)
	}
	return nil
}

// floorCommand runs one of the floor forwarders until killed:
// `fastudp bench floor relay|dns --listen ADDR --backend ADDR [--responses N]`.
// The benchmark starts it as a target of its own.
func floorCommand(args []string, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "relay" && args[0] != "dns") {
		return &exitError{code: 2, err: errors.New("bench floor: want relay or dns")}
	}
	fs := flag.NewFlagSet("fastudp bench floor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "client-side `ADDR`")
	backend := fs.String("backend", "", "backend `ADDR`")
	responses := fs.Int("responses", 0, "relay: close a client's upstream socket after `N` replies (0: never)")
	if err := fs.Parse(args[1:]); err != nil {
		return &exitError{code: 2}
	}
	var cfg floor.Config
	var err error
	if cfg.Listen, err = netip.ParseAddrPort(*listen); err != nil {
		return &exitError{code: 2, err: fmt.Errorf("bench floor: --listen: %w", err)}
	}
	if cfg.Backend, err = netip.ParseAddrPort(*backend); err != nil {
		return &exitError{code: 2, err: fmt.Errorf("bench floor: --backend: %w", err)}
	}
	cfg.Responses = *responses
	start := floor.StartRelay
	if args[0] == "dns" {
		start = floor.StartDNS
	}
	f, err := start(cfg)
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	errc := make(chan error, 1)
	go func() { errc <- f.Wait() }()
	select {
	case <-sigs:
		return f.Close()
	case err := <-errc:
		return err
	}
}
