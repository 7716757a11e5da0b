package harness

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fastudp/fastudp/bench/loadgen"
	"github.com/fastudp/fastudp/bench/proc"
	"github.com/fastudp/fastudp/bench/target"
)

// The shed-capacity sweep: scenario "flood" stands for one scenario per
// rate of --flood-rates, named flood-<rate> (flood-50k), each a flood of
// new flows against a max_flows that is already full, so that every flood
// datagram in the window is shed.

// floodScenarioName is the name that expands into the sweep.
const floodScenarioName = "flood"

// DefaultFloodRates are the flood rates of the sweep (new flows per second).
var DefaultFloodRates = []float64{0, 25000, 50000, 100000, 200000}

// floodName names the sweep's scenario at rate: flood-0, flood-25k, flood-12.5k.
func floodName(rate float64) string {
	if rate == 0 {
		return "flood-0"
	}
	return "flood-" + strconv.FormatFloat(rate/1000, 'f', -1, 64) + "k"
}

// parseFloodName is the inverse of floodName.
func parseFloodName(name string) (float64, bool) {
	s, ok := strings.CutPrefix(name, "flood-")
	if !ok {
		return 0, false
	}
	if s == "0" {
		return 0, true
	}
	k, ok := strings.CutSuffix(s, "k")
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseFloat(k, 64)
	if err != nil || !(v > 0 && v <= 1e4) {
		return 0, false
	}
	return v * 1000, true
}

// expandFlood replaces "flood" in names by the sweep's scenarios.
func expandFlood(names []string, rates []float64) []string {
	var out []string
	for _, n := range names {
		if n != floodScenarioName {
			out = append(out, n)
			continue
		}
		for _, r := range rates {
			out = append(out, floodName(r))
		}
	}
	return out
}

// floodEstablished is the established load during a flood: its flows are
// opened before the flood fills max_flows.
var floodEstablished = loadgen.Config{Conns: 16, Size: 64, Rate: 2000}

func floodScenario(rate float64) *scenario {
	title := fmt.Sprintf("Shed capacity: %.0f new flows/s against a full max_flows", rate)
	if rate == 0 {
		title = "Shed capacity: no flood (the established load alone)"
	}
	return &scenario{
		name:  floodName(rate),
		title: title,
		about: fmt.Sprintf("%d established flows at %.0f requests/s (64 B, echo backend) through fastudp with --max-flows --flood-max-flows; "+
			"during the warm-up a flood from ever-new (address, port) pairs across 127.0.0.0/8 (64 sockets × 16,384 addresses, IP_PKTINFO) fills max_flows, "+
			"then the window measures pure shedding at the flood rate: flood sent and shed per second, datagrams the kernel dropped on the listener's full "+
			"receive queue (fastudp_kernel_drops_total, SO_RXQ_OVFL) and system-wide UDP RcvbufErrors (/proc/net/snmp, every socket), "+
			"flood datagrams sent in the window but not read by its end (the listener's queue grew), the proxy's CPU as a share of one core and per datagram read, datagrams per recvmmsg, and the established flows' loss and round trips. "+
			"The shard keeps up while kernel drops stay ~0; flood-0 is the established load alone, so "+
			"(CPU(flood-R) − CPU(flood-0)) ÷ shed is the CPU per shed datagram",
			floodEstablished.Conns, floodEstablished.Rate),
		applies: fastudpGeneric,
		measure: func(ctx context.Context, h *harness, tg target.Target) (Measurement, error) {
			return measureShed(ctx, h, tg, rate)
		},
	}
}

// floodCols are the sweep's columns.
var floodCols = []extraCol{{"flood sent/s", "flood_rate", "%.0f", 1}, {"shed/s", "shed_rate", "%.0f", 1},
	{"not read in window", "unread", "%.0f", 1}, {"kernel drops (listener)", "kernel_drops", "%.0f", 1}, {"UDP RcvbufErrors (all sockets)", "rcvbuf_errors", "%.0f", 1},
	{"proxy CPU % of a core", "cpu_core_pct", "%.1f", 1}, {"CPU µs/datagram read", "cpu_us_per_rx", "%.3f", 1},
	{"datagrams/recvmmsg", "rx_per_recvmmsg", "%.1f", 1}, {"established loss %", "established_loss", "%.3f", 100}}

// measureShed runs one point of the sweep.
func measureShed(ctx context.Context, h *harness, tg target.Target, rate float64) (Measurement, error) {
	var m Measurement
	inst, stop, err := startFloodTarget(h, tg)
	if err != nil {
		return m, err
	}
	defer stop()
	if inst.Metrics == "" {
		return m, errors.New("flood: the target exports no metrics")
	}
	cfg := floodEstablished
	cfg.Target = inst.Addr
	g, err := loadgen.New(cfg)
	if err != nil {
		return m, err
	}
	defer g.Close()
	g.Start()
	defer g.Stop(0)
	var sp *loadgen.Sprayer
	if rate > 0 {
		sp, err = loadgen.NewSprayer(loadgen.SprayConfig{Target: inst.Addr, Sockets: 64,
			Sources: loadgen.LoopbackSources(16384), Rate: rate})
		if err != nil {
			return m, err
		}
		defer sp.Close()
		if err := sleep(ctx, 100*time.Millisecond); err != nil { // the established flows first
			return m, err
		}
		sp.Start()
		defer sp.Stop(0)
		// Fill: wait until max_flows is reached (the first shed).
		deadline := time.Now().Add(10 * time.Second)
		for {
			v, err := target.Scrape(inst.Metrics, "fastudp_flows_shed_total")
			if err != nil {
				return m, err
			}
			if v["fastudp_flows_shed_total"] > 0 {
				break
			}
			if time.Now().After(deadline) {
				return m, errors.New("flood: max_flows not reached within 10 s")
			}
			if err := sleep(ctx, 20*time.Millisecond); err != nil {
				return m, err
			}
		}
	}
	if err := sleep(ctx, h.o.Warmup); err != nil {
		return m, err
	}
	g.SetPhase(1)
	if sp != nil {
		sp.SetPhase(1)
	}
	u0, err := proc.UDP()
	if err != nil {
		return m, err
	}
	s0, err := h.snap(inst)
	if err != nil {
		return m, err
	}
	if err := sleep(ctx, h.o.Duration); err != nil {
		return m, err
	}
	s1, err := h.snap(inst)
	if err != nil {
		return m, err
	}
	u1, err := proc.UDP()
	if err != nil {
		return m, err
	}
	m.Window = s1.at.Sub(s0.at).Seconds()
	g.SetPhase(2) // what is sent after the window is not counted
	var fl loadgen.SprayStats
	if sp != nil {
		sp.SetPhase(2)
		sp.Stop(0)
		fl = sp.Stats(1)
	}
	g.Stop(h.o.Drain)
	est := g.Stats(1)
	d := func(k string) float64 { return s1.metrics[k] - s0.metrics[k] }
	rx := d("fastudp_listener_rx_datagrams_total")
	m.Requests = est.Attempted() + fl.Sent + fl.SendErrors
	m.Replies = est.Received
	m.Completed = est.Completed
	m.Datagrams = uint64(rx + d("fastudp_listener_tx_datagrams_total"))
	m.Rate = float64(fl.Sent) / m.Window
	m.Loss = est.Loss()
	m.setRTT(&est.RTT)
	fill(&m, inst, s0, s1, m.Datagrams)
	m.set("flood_rate", float64(fl.Sent)/m.Window)
	m.set("shed_rate", d("fastudp_flows_shed_total")/m.Window)
	// What the flood sent in the window that the proxy had not read by its
	// end: the listener's queue grew by it (or the kernel dropped it).
	m.set("unread", float64(fl.Sent)-(rx-float64(est.Attempted())))
	m.set("kernel_drops", d("fastudp_kernel_drops_total"))
	m.set("rcvbuf_errors", float64(u1.RcvbufErrors-u0.RcvbufErrors))
	m.set("cpu_core_pct", 100*m.CPUus/(m.Window*1e6))
	if rx > 0 {
		m.set("cpu_us_per_rx", m.CPUus/rx)
	}
	if n := d(recvmmsgKey); n > 0 {
		// recvmmsg calls on every socket: listener and upstream ones.
		m.set("rx_per_recvmmsg", (rx+d("fastudp_listener_tx_datagrams_total"))/n)
	}
	m.set("established_loss", est.Loss())
	if est.Received == 0 {
		return m, errors.New("the established flows got no replies")
	}
	return m, nil
}
