package harness

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/fastudp/fastudp/bench/loadgen"
	"github.com/fastudp/fastudp/bench/proc"
	"github.com/fastudp/fastudp/bench/target"
	"golang.org/x/sys/unix"
)

// scenario is one kind of load; measure runs it once against one target.
type scenario struct {
	name    string
	title   string // the report's heading
	about   string // what the load is, for the report
	applies func(target string) bool
	measure func(ctx context.Context, h *harness, tg target.Target) (Measurement, error)
}

func isFastudp(name string) bool {
	name, _, _ = strings.Cut(name, "@") // fastudp@BIN: another binary (see harness.targets)
	return name == "fastudp" || strings.HasPrefix(name, "fastudp-")
}

// dnsOnly reports whether a target forwards DNS only: dnsdist, and fastudp
// in its DNS mode (fastudp-dns, fastudp-dns-N).
func dnsOnly(name string) bool { return name == "dnsdist" || strings.HasPrefix(name, "fastudp-dns") }

// notDNSOnly is for scenarios whose payloads are not DNS.
func notDNSOnly(name string) bool { return !dnsOnly(name) }

// fastudpGeneric is fastudp in its generic (udp) mode.
func fastudpGeneric(name string) bool { return isFastudp(name) && !dnsOnly(name) }

func all(string) bool { return true }

// quicTargets are those that relay any UDP on a long-lived flow: not the
// DNS-only ones, and not socat (a fork per client).
func quicTargets(name string) bool { return name != "socat" && !dnsOnly(name) }

// churnTargets leaves out socat (a fork per new client) and the DNS-only
// targets.
func churnTargets(name string) bool { return name != "socat" && !dnsOnly(name) }

var scenarios = []*scenario{
	{
		name: "small-pps", title: "Small datagrams (64 B), established flows",
		about:   "open loop at --rate requests/s (default 25,000) over 64 client sockets on 16 source addresses (64 flows), 64-byte payloads, echo backend; flows stay up (responses 0)",
		applies: notDNSOnly,
		measure: func(ctx context.Context, h *harness, tg target.Target) (Measurement, error) {
			return h.simple(ctx, tg, h.echo, target.Mode{}, loadgen.Config{
				Conns: 64, Sources: loadgen.LoopbackSources(16), Size: 64, Rate: h.o.Rate})
		},
	},
	{
		name: "dns-qps", title: "DNS queries per second",
		about:   "closed loop, 32 client sockets on 8 source addresses with one query in flight each, names from queries.txt; the DNS responder (or knot) behind; proxies close each flow after its answer (responses 1); floor = the ID-rewriting DNS forwarder",
		applies: all,
		measure: func(ctx context.Context, h *harness, tg target.Target) (Measurement, error) {
			if f, ok := tg.(floorTarget); ok {
				tg = f.withDNS()
			}
			probe, _ := loadgen.EncodeQuery(nil, 1, h.queries[0])
			return h.simple(ctx, tg, h.dnsBackend, target.Mode{Responses: 1, Probe: probe}, loadgen.Config{
				Conns: 32, Sources: loadgen.LoopbackSources(8), DNS: h.queries})
		},
	},
	{
		name: "bulk-gso", title: "Bulk: each request answered with 32 × 1200 B (one GSO send)",
		about:   "closed loop, --bulk-conns client sockets (default 8) with one 64-byte request in flight each; the blaster answers each with a run of 32 datagrams of 1200 bytes sent as one UDP GSO message; the client reads without GRO (see bulk-gro); bytes/s is reply payload; proxy and harness CPU per MB of reply payload, fastudp's recvmmsg + sendmmsg calls per MB (from its metrics)",
		applies: notDNSOnly,
		measure: func(ctx context.Context, h *harness, tg target.Target) (Measurement, error) {
			return h.simple(ctx, tg, h.blaster, target.Mode{}, loadgen.Config{
				Conns: h.o.BulkConns, Size: 64, ReplyDatagrams: 32, RecvBuffer: 8 << 20})
		},
	},
	{
		name: "bulk-gro", title: "Bulk, client reading with GRO: each request answered with 32 × 1200 B (one GSO send)",
		about: "bulk-gso with the client's sockets reading with UDP_GRO, as a bulk client (a QUIC stack) does: a run that the proxy (or the backend, direct) " +
			"forwards as one GSO send reaches the client as one message instead of being segmented for it, so the load generator's per-datagram cost, " +
			"which bounds bulk-gso on a small machine, drops and the proxy's own cost shows; proxy and harness CPU per MB of reply payload, " +
			"fastudp's recvmmsg + sendmmsg calls per MB (from its metrics)",
		applies: notDNSOnly,
		measure: func(ctx context.Context, h *harness, tg target.Target) (Measurement, error) {
			return h.simple(ctx, tg, h.blaster, target.Mode{}, loadgen.Config{
				Conns: h.o.BulkConns, Size: 64, ReplyDatagrams: 32, RecvBuffer: 8 << 20, GRO: true})
		},
	},
	{
		name: "bulk-up", title: "Bulk upload: each request is 32 × 1200 B (one GSO send), acked",
		about: "closed loop, --bulk-conns client sockets with one request in flight each; a request is a run of 32 datagrams of 1200 bytes " +
			"sent as one UDP GSO message (an uploading client); the upload sink reads with UDP_GRO, skips a PROXY v2 header in front of " +
			"each datagram and acks the run's last one; bytes/s is request payload; proxy and harness CPU per MB of it, fastudp's " +
			"recvmmsg + sendmmsg calls and GSO sends per MB. With --fastudp-args \"--proxy-protocol every\" each datagram gets a header " +
			"(not a default scenario)",
		applies: notDNSOnly,
		measure: func(ctx context.Context, h *harness, tg target.Target) (Measurement, error) {
			return h.simple(ctx, tg, h.uploadSink, target.Mode{}, loadgen.Config{
				Conns: h.o.BulkConns, Size: 1200, RequestDatagrams: 32, SendBuffer: 8 << 20})
		},
	},
	{
		name: "quic-bulk", title: "QUIC bulk: quic-go transfers of 16 MB through the target",
		about: "a quic-go server in the harness (self-signed certificate made at start) sends 16 MiB on every stream its quic-go client opens, " +
			"2 streams in flight on one connection, repeated for the window; both ends send with UDP GSO and read with UDP_GRO where the kernel allows, " +
			"flow-control windows up to 32 MiB per stream; proxies keep the flow (responses 0). req/s is transfers per second, " +
			"datagrams are QUIC packets as the client counts them (sent and received), loss is the server's packets declared lost ÷ sent, " +
			"RTT p50 is the client's smoothed RTT at the end of the window; CPU per MB of stream payload",
		applies: quicTargets,
		measure: measureQUICBulk,
	},
	{
		name: "flow-churn", title: "Flow churn: a new flow per request",
		about:   "closed loop, 32 client sockets, each closed and reopened (new source port) after every answer; proxies close each flow after one reply (responses 1)",
		applies: churnTargets,
		measure: func(ctx context.Context, h *harness, tg target.Target) (Measurement, error) {
			return h.simple(ctx, tg, h.echo, target.Mode{Responses: 1}, loadgen.Config{
				Conns: 32, Sources: loadgen.LoopbackSources(8), Size: 64, Churn: true})
		},
	},
	{
		name: "latency", title: "Latency at 50% load",
		about:   "first the target's maximum: a closed loop of 64 sockets for 1 s; then an open loop at half that rate, paced every 200 µs, every round trip timed from its scheduled send time; 64-byte payloads, echo backend; \"added\" is the target's percentile minus that of the same load sent straight to the backend right after (direct, at the target's rate), median over runs",
		applies: notDNSOnly,
		measure: measureLatency,
	},
	{
		name: "many-flows", title: "Memory per flow",
		about:   "--flows (default 100,000) flows opened through fastudp, one datagram each, from distinct (address, port) pairs across 127.0.0.0/8 (64 sockets × 1,563 addresses); VmRSS of the proxy before and after, and the kernel's UDP socket memory (/proc/net/sockstat). Each flow holds an upstream socket, so the count stays 2,000 below the open-file hard limit (raised when the harness may), and the figures are scaled to 100k",
		applies: fastudpGeneric,
		measure: measureManyFlows,
	},
	{
		name: "new-flow-flood", title: "New-flow flood against a small max_flows",
		about:   "16 established flows at 2,000 requests/s, then new flows at --flood-rate (default 50,000/s, each datagram from a new (address, port) pair) against fastudp with --max-flows 1000; counts shed and served, CPU per datagram, and the established flows' loss and p99",
		applies: fastudpGeneric,
		measure: measureFlood,
	},
	{
		name: "dnsperf", title: "DNS: dnsperf → proxy → knot (issue 5)",
		about: fmt.Sprintf("dnsperf (-c %d -q %d, names from queries.txt, -t = --drain) against the target for --duration after --warmup of the same, "+
			"knot (start-knot.sh, one UDP worker) behind, started once for the scenario and shared by every target and run; "+
			"proxies close each flow after its answer (responses 1), fastudp-dns is `fastudp run --mode dns`, floor = the ID-rewriting DNS forwarder, "+
			"direct = dnsperf straight at knot. req/s and loss are dnsperf's; the harness CPU column counts dnsperf's and knot's CPU "+
			"(they are processes of their own here), so \"other processes\" is the rest of the machine", dnsperfClients, dnsperfOutstanding),
		applies: all,
		measure: measureDnsperf,
	},
}

func findScenario(name string) *scenario {
	for _, s := range scenarios {
		if s.name == name {
			return s
		}
	}
	if rate, ok := parseFloodName(name); ok {
		return floodScenario(rate)
	}
	return nil
}

// backend starts a backend and returns its address and a stop function.
type backend func() (netip.AddrPort, func(), error)

func (h *harness) echo() (netip.AddrPort, func(), error) {
	e, err := loadgen.StartEcho(loadgen.EchoConfig{})
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	return e.Addr(), func() { e.Close() }, nil
}

func (h *harness) dnsBackend() (netip.AddrPort, func(), error) {
	if h.o.DNSBackend == "knot" {
		probe, _ := loadgen.EncodeQuery(nil, 1, h.queries[0])
		inst, err := target.Knot{Script: h.o.PeersDir + "/start-knot.sh"}.Start(probe)
		if err != nil {
			return netip.AddrPort{}, nil, err
		}
		return inst.Addr, func() { inst.Stop() }, nil
	}
	d, err := loadgen.StartDNS(loadgen.DNSConfig{})
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	return d.Addr(), func() { d.Close() }, nil
}

func (h *harness) blaster() (netip.AddrPort, func(), error) {
	b, err := loadgen.StartBlaster(loadgen.BlasterConfig{Run: 32, SegmentSize: 1200})
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	return b.Addr(), func() { b.Close() }, nil
}

func (h *harness) uploadSink() (netip.AddrPort, func(), error) {
	b, err := loadgen.StartBlaster(loadgen.BlasterConfig{Upload: 32})
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	return b.Addr(), func() { b.Close() }, nil
}

// snapshot is what is sampled at both ends of a window.
type snapshot struct {
	at      time.Time
	proxy   proc.Ticks
	self    float64 // µs
	idle    float64 // ticks
	metrics map[string]float64
}

var fastudpMetrics = []string{"go_memstats_mallocs_total", "fastudp_flows_created_total", "fastudp_flows_shed_total", "fastudp_flows_active",
	"fastudp_shard_syscalls_total", "fastudp_gso_sends_total", "fastudp_gro_runs_total",
	"fastudp_listener_rx_datagrams_total", "fastudp_listener_tx_datagrams_total", "fastudp_kernel_drops_total"}

// Keys of the syscall counter by call (target.Scrape sums each label).
const (
	recvmmsgKey = `fastudp_shard_syscalls_total{call="recvmmsg"}`
	sendmmsgKey = `fastudp_shard_syscalls_total{call="sendmmsg"}`
)

func (h *harness) snap(inst *target.Instance) (snapshot, error) {
	s := snapshot{at: time.Now(), self: selfCPU(), idle: systemIdle()}
	var err error
	if s.proxy, err = inst.CPU(); err != nil {
		return s, err
	}
	if inst.Metrics != "" {
		if s.metrics, err = target.Scrape(inst.Metrics, fastudpMetrics...); err != nil {
			return s, err
		}
	}
	return s, nil
}

// fill sets the CPU figures of m from two snapshots over datagrams.
func fill(m *Measurement, inst *target.Instance, s0, s1 snapshot, datagrams uint64) {
	m.CPUus = (s1.proxy - s0.proxy).Micros()
	m.HarnessCPUus = s1.self - s0.self
	if inst.PID != 0 && datagrams > 0 {
		m.CPUPerDatagram = m.CPUus / float64(datagrams)
	}
	m.OtherBusy = otherBusy(s0, s1, m.CPUus+m.HarnessCPUus)
	if s0.metrics != nil && s1.metrics != nil && datagrams > 0 {
		d := func(k string) float64 { return s1.metrics[k] - s0.metrics[k] }
		m.set("mallocs_per_datagram", d("go_memstats_mallocs_total")/float64(datagrams))
		if _, ok := s1.metrics[recvmmsgKey]; ok {
			m.set("recvmmsg_per_1k_datagrams", 1000*d(recvmmsgKey)/float64(datagrams))
			m.set("sendmmsg_per_1k_datagrams", 1000*d(sendmmsgKey)/float64(datagrams))
		}
	}
}

// fillBulk sets the per-MB figures of a bulk measurement, MB being the
// reply payload the client received in the window (m.BytesSec ×
// m.Window; requests are under 0.2% of the bytes): the proxy's and the
// harness's CPU, and fastudp's recvmmsg and sendmmsg calls (all shards,
// both legs) from its metrics.
func fillBulk(m *Measurement, s0, s1 snapshot) {
	mb := m.BytesSec * m.Window / 1e6
	if mb <= 0 {
		return
	}
	if m.CPUus > 0 {
		m.set("cpu_us_per_mb", m.CPUus/mb)
	}
	m.set("harness_cpu_us_per_mb", m.HarnessCPUus/mb)
	if s0.metrics == nil || s1.metrics == nil {
		return
	}
	d := func(k string) float64 { return s1.metrics[k] - s0.metrics[k] }
	if _, ok := s1.metrics[recvmmsgKey]; ok {
		m.set("recvmmsg_per_mb", d(recvmmsgKey)/mb)
		m.set("sendmmsg_per_mb", d(sendmmsgKey)/mb)
		m.set("syscalls_per_mb", (d(recvmmsgKey)+d(sendmmsgKey))/mb)
	}
	m.set("gso_sends_per_mb", d("fastudp_gso_sends_total")/mb)
	m.set("gro_runs_per_mb", d("fastudp_gro_runs_total")/mb)
}

// otherBusy is the share of the machine's CPU between two snapshots that
// was busy but not with the usedUs µs accounted for.
func otherBusy(s0, s1 snapshot, usedUs float64) float64 {
	if s0.idle < 0 || s1.idle < 0 {
		return 0
	}
	wall := s1.at.Sub(s0.at).Seconds()
	capacity := wall * float64(cpus()) * float64(proc.ClockTicks())
	if capacity <= 0 {
		return 0
	}
	busy := max(capacity-(s1.idle-s0.idle), 0)
	used := usedUs / 1e6 * float64(proc.ClockTicks())
	return max(busy-used, 0) / capacity
}

// startPair starts the backend and the target in front of it.
func startPair(b backend, tg target.Target, mode target.Mode) (*target.Instance, func(), error) {
	inst, _, stop, err := startPair2(b, tg, mode)
	return inst, stop, err
}

// startPair2 is startPair that also returns the backend's address.
func startPair2(b backend, tg target.Target, mode target.Mode) (*target.Instance, netip.AddrPort, func(), error) {
	addr, stopB, err := b()
	if err != nil {
		return nil, addr, nil, fmt.Errorf("backend: %w", err)
	}
	inst, err := tg.Start(addr, mode)
	if err != nil {
		stopB()
		return nil, addr, nil, err
	}
	return inst, addr, func() { inst.Stop(); stopB() }, nil
}

// simple runs cfg against tg in front of a fresh backend: warm-up in
// phase 0, the window in phase 1, then the drain.
func (h *harness) simple(ctx context.Context, tg target.Target, b backend, mode target.Mode, cfg loadgen.Config) (Measurement, error) {
	var m Measurement
	inst, stop, err := startPair(b, tg, mode)
	if err != nil {
		return m, err
	}
	defer stop()
	cfg.Target = inst.Addr
	if cfg.Timeout == 0 {
		cfg.Timeout = 500 * time.Millisecond
	}
	return h.window(ctx, inst, cfg, h.o.Duration)
}

// window runs a generator with cfg: warm-up, a window of d, drain.
func (h *harness) window(ctx context.Context, inst *target.Instance, cfg loadgen.Config, d time.Duration) (Measurement, error) {
	var m Measurement
	g, err := loadgen.New(cfg)
	if err != nil {
		return m, err
	}
	defer g.Close()
	g.Start()
	defer g.Stop(0)
	if err := sleep(ctx, h.o.Warmup); err != nil {
		return m, err
	}
	g.SetPhase(1)
	s0, err := h.snap(inst)
	if err != nil {
		return m, err
	}
	if err := sleep(ctx, d); err != nil {
		return m, err
	}
	m.Window = time.Since(s0.at).Seconds()
	g.Stop(h.o.Drain)
	s1, err := h.snap(inst)
	if err != nil {
		return m, err
	}
	st := g.Stats(1)
	m.Requests, m.Replies, m.Completed, m.Loss = st.Attempted(), st.Received, st.Completed, st.Loss()
	m.Datagrams = st.Sent + st.Received
	m.Rate = float64(st.Completed) / m.Window
	m.BytesSec = float64(st.Bytes) / m.Window
	if r := cfg.RequestDatagrams; r > 1 {
		// An upload: the payload is what the client sent in acked runs.
		m.BytesSec = float64(st.Completed*uint64(r*cfg.Size)) / m.Window
	}
	m.setRTT(&st.RTT)
	fill(&m, inst, s0, s1, m.Datagrams)
	if cfg.ReplyDatagrams > 1 || cfg.RequestDatagrams > 1 {
		fillBulk(&m, s0, s1)
	}
	if st.Received == 0 {
		return m, errors.New("no replies in the window (100% loss)")
	}
	return m, nil
}

func measureLatency(ctx context.Context, h *harness, tg target.Target) (Measurement, error) {
	var m Measurement
	inst, backendAddr, stop, err := startPair2(h.echo, tg, target.Mode{})
	if err != nil {
		return m, err
	}
	defer stop()
	cfg := loadgen.Config{Target: inst.Addr, Conns: 64, Sources: loadgen.LoopbackSources(16), Size: 64, Timeout: 500 * time.Millisecond,
		Tick: 200 * time.Microsecond} // short bursts: queueing within a burst is not the hop's latency
	probe, err := h.window(ctx, inst, cfg, min(h.o.Duration, time.Second))
	if err != nil {
		return m, fmt.Errorf("finding the maximum rate: %w", err)
	}
	maxRate := probe.Rate
	cfg.Rate = maxRate / 2
	m, err = h.window(ctx, inst, cfg, h.o.Duration)
	m.set("max_rate", maxRate)
	m.set("offered_rate", cfg.Rate)
	if err != nil || inst.Addr == backendAddr {
		return m, err
	}
	// The same load straight to the backend, right after: the latency the
	// hop adds at this rate.
	cfg.Target = backendAddr
	base, err := h.window(ctx, &target.Instance{Addr: backendAddr}, cfg, min(h.o.Duration, time.Second))
	if err != nil {
		return m, fmt.Errorf("direct baseline: %w", err)
	}
	m.set("added_p50", m.P50-base.P50)
	m.set("added_p99", m.P99-base.P99)
	m.set("base_p50", base.P50)
	m.set("base_p99", base.P99)
	return m, nil
}

// fastudpWith returns tg with extra flags or config, if it is fastudp.
func fastudpWith(tg target.Target, args []string, toml string) (target.Fastudp, error) {
	f, ok := tg.(target.Fastudp)
	if !ok {
		return f, fmt.Errorf("%s: this scenario runs fastudp only", tg.Name())
	}
	f.Args = append(append([]string{}, f.Args...), args...)
	f.TOML = toml
	return f, nil
}

// sockstatUDP returns the kernel's UDP sockets in use and their memory in
// bytes, from /proc/net/sockstat ("UDP: inuse N mem PAGES").
func sockstatUDP() (inuse, mem float64) {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return -1, -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 5 && f[0] == "UDP:" && f[1] == "inuse" && f[3] == "mem" {
			var n, p float64
			fmt.Sscan(f[2], &n)
			fmt.Sscan(f[4], &p)
			return n, p * float64(os.Getpagesize())
		}
	}
	return -1, -1
}

func measureManyFlows(ctx context.Context, h *harness, tg target.Target) (Measurement, error) {
	var m Measurement
	flows := h.o.Flows
	// Every flow holds an upstream socket in fastudp, which inherits this
	// process's open-file limit: stay below it (and say so).
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil && lim.Max < uint64(flows)+2000 {
		flows = int(lim.Max) - 2000
		m.set("nofile_limit", float64(lim.Max))
	}
	// Each flow has its own upstream socket; one source address gives
	// about 28k ports, so spread them over enough addresses.
	var srcs []string
	for i := range flows/20000 + 1 {
		srcs = append(srcs, fmt.Sprintf("%q", fmt.Sprintf("127.0.100.%d", i+1)))
	}
	toml := fmt.Sprintf("max_flows = %d\nupstream_sources = [%s]\n", 2*flows, strings.Join(srcs, ", "))
	f, err := fastudpWith(tg, nil, toml)
	if err != nil {
		return m, err
	}
	inst, stop, err := startPair(h.echo, f, target.Mode{})
	if err != nil {
		return m, err
	}
	defer stop()
	const sockets = 64
	sources := loadgen.LoopbackSources((flows + sockets - 1) / sockets)
	rate := max(float64(flows)/max(h.o.Duration.Seconds(), 1), 20000)
	sp, err := loadgen.NewSprayer(loadgen.SprayConfig{Target: inst.Addr, Sockets: sockets, Sources: sources,
		Flows: flows, Rate: rate, Count: uint64(flows)})
	if err != nil {
		return m, err
	}
	defer sp.Close()
	if err := sleep(ctx, 200*time.Millisecond); err != nil {
		return m, err
	}
	rss0, err := proc.RSS(inst.PID)
	if err != nil {
		return m, err
	}
	inuse0, mem0 := sockstatUDP()
	s0, err := h.snap(inst)
	if err != nil {
		return m, err
	}
	sp.Start()
	select {
	case <-sp.Done():
	case <-ctx.Done():
		sp.Stop(0)
		return m, ctx.Err()
	}
	sp.Stop(h.o.Drain + time.Second)
	m.Window = time.Since(s0.at).Seconds()
	s1, err := h.snap(inst)
	if err != nil {
		return m, err
	}
	rss1, err := proc.RSS(inst.PID)
	if err != nil {
		return m, err
	}
	inuse1, mem1 := sockstatUDP()
	st := sp.Stats(0)
	m.Requests, m.Replies, m.Completed = st.Sent+st.SendErrors, st.Received, st.Received
	m.Datagrams = st.Sent + st.Received
	if m.Requests > 0 {
		m.Loss = 1 - float64(min(st.Received, m.Requests))/float64(m.Requests)
	}
	m.Rate = float64(st.Received) / m.Window
	fill(&m, inst, s0, s1, m.Datagrams)
	active := s1.metrics["fastudp_flows_active"]
	m.set("flows", active)
	if active > 0 {
		per := (float64(rss1) - float64(rss0)) / active
		m.set("rss_bytes_per_flow", per)
		m.set("rss_mib_per_100k", per*1e5/(1<<20))
		m.set("cpu_us_per_new_flow", m.CPUus/active)
		if inuse0 >= 0 && inuse1 >= 0 {
			m.set("udp_sockets_per_flow", (inuse1-inuse0)/active)
			m.set("kernel_mib_per_100k", (mem1-mem0)/active*1e5/(1<<20))
		}
	}
	if active < 0.9*float64(flows) {
		return m, fmt.Errorf("only %.0f of %d flows live", active, flows)
	}
	return m, nil
}

// startFloodTarget starts fastudp with --max-flows at the flood cap in front
// of an echo backend.
func startFloodTarget(h *harness, tg target.Target) (*target.Instance, func(), error) {
	f, err := fastudpWith(tg, []string{"--max-flows", fmt.Sprint(h.o.FloodMaxFlows)}, "")
	if err != nil {
		return nil, nil, err
	}
	return startPair(h.echo, f, target.Mode{})
}

func measureFlood(ctx context.Context, h *harness, tg target.Target) (Measurement, error) {
	var m Measurement
	inst, stop, err := startFloodTarget(h, tg)
	if err != nil {
		return m, err
	}
	defer stop()
	g, err := loadgen.New(loadgen.Config{Target: inst.Addr, Conns: 16, Size: 64, Rate: 2000})
	if err != nil {
		return m, err
	}
	defer g.Close()
	sp, err := loadgen.NewSprayer(loadgen.SprayConfig{Target: inst.Addr, Sockets: 64,
		Sources: loadgen.LoopbackSources(4096), Rate: h.o.FloodRate})
	if err != nil {
		return m, err
	}
	defer sp.Close()
	g.Start()
	defer g.Stop(0)
	if err := sleep(ctx, h.o.Warmup); err != nil {
		return m, err
	}
	g.SetPhase(1)
	sp.SetPhase(1)
	s0, err := h.snap(inst)
	if err != nil {
		return m, err
	}
	sp.Start()
	defer sp.Stop(0)
	if err := sleep(ctx, h.o.Duration); err != nil {
		return m, err
	}
	m.Window = time.Since(s0.at).Seconds()
	sp.Stop(h.o.Drain)
	g.Stop(h.o.Drain)
	s1, err := h.snap(inst)
	if err != nil {
		return m, err
	}
	est, fl := g.Stats(1), sp.Stats(1)
	m.Requests = est.Attempted() + fl.Sent + fl.SendErrors
	m.Replies = est.Received + fl.Received
	m.Completed = est.Completed + fl.Received
	m.Datagrams = est.Sent + est.Received + fl.Sent + fl.Received
	m.Rate = float64(fl.Sent) / m.Window
	m.Loss = est.Loss()
	m.setRTT(&est.RTT)
	fill(&m, inst, s0, s1, m.Datagrams)
	d := func(k string) float64 { return s1.metrics[k] - s0.metrics[k] }
	m.set("flood_sent", float64(fl.Sent))
	m.set("flood_served", float64(fl.Received))
	m.set("shed", d("fastudp_flows_shed_total"))
	m.set("created", d("fastudp_flows_created_total"))
	m.set("established_loss", est.Loss())
	if est.Received == 0 {
		return m, errors.New("the established flows got no replies")
	}
	return m, nil
}
