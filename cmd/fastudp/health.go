package main

import (
	"context"
	"fmt"
	"time"

	"github.com/fastudp/fastudp/batchio/shard"
	"github.com/fastudp/fastudp/config"
	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/dns"
	"github.com/fastudp/fastudp/health"
)

// passiveReportEvery is how often the shards' failure and success counts
// are handed to the health monitor (it cuts them into its own windows).
const passiveReportEvery = 250 * time.Millisecond

// healthConfig converts a [cluster.health] table into the monitor's terms.
func healthConfig(h *config.Health) (health.ProbeConfig, health.PassiveConfig, error) {
	p := health.ProbeConfig{Interval: h.Interval, Timeout: h.Timeout, Rise: h.Rise, Fall: h.Fall}
	switch h.Type {
	case config.HealthNone:
		p.Kind = health.KindNone
	case config.HealthUDP:
		p.Kind = health.KindUDP
		p.Payload = []byte(h.Send)
		if h.Expect != "" {
			p.Expect = []byte(h.Expect)
		}
		p.ExpectRegexp = h.ExpectRegex
	case config.HealthDNS:
		p.Kind = health.KindDNS
		p.DNSName = h.DNSName
		t, err := dns.ParseType(h.DNSType)
		if err != nil {
			return p, health.PassiveConfig{}, err
		}
		rc, err := dns.ParseRCode(h.DNSRCode)
		if err != nil {
			return p, health.PassiveConfig{}, err
		}
		p.DNSType, p.DNSRcode = t, int(rc)
	case config.HealthTCP:
		p.Kind = health.KindTCP
	case config.HealthQUIC:
		p.Kind = health.KindQUIC
	default:
		return p, health.PassiveConfig{}, fmt.Errorf("unknown type %v", h.Type)
	}
	passive := health.PassiveConfig{
		Enabled:     h.Passive,
		Interval:    h.Interval,
		MinFailures: uint64(h.PassiveFailures),
		Cooldown:    h.PassiveCooldown,
	}
	return p, passive, nil
}

// reportPassive hands the shards' per-backend failure and success counts to
// the health monitor until ctx is done. Failures: DNS queries that timed
// out, ICMP refusals, flows that expected a reply and closed idle without
// one. Successes: datagrams the backend returned.
func (p *clusterPicker) reportPassive(ctx context.Context, shards []*shard.Shard) {
	t := time.NewTicker(passiveReportEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for id, ref := range p.snapshotRefs() {
			hc := p.clusters[ref.cluster].Load()
			if hc == nil || ref.removed {
				continue
			}
			b := core.BackendID(id)
			var fails, oks uint64
			for _, s := range shards {
				k := s.Counters()
				fails += k.Backend(b, shard.BackendDNSTimeouts) + k.Backend(b, shard.BackendRefused) + k.Backend(b, shard.BackendNoReply)
				oks += k.Backend(b, shard.BackendDatagramsOut)
			}
			_ = hc.ReportPassive(ref.addr, fails, oks) // only fails for an address the table no longer holds
		}
	}
}

// watchHealth tells every shard which backends the health checks hold down
// (ConfigBackendDown / ConfigBackendUp), so that flows of clusters with
// down_flows = "close" move at their client's next datagram. Draining is not
// down: a draining backend keeps its flows.
func (p *proxy) watchHealth(ctx context.Context, changed <-chan struct{}) {
	down := map[core.BackendID]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		now := map[core.BackendID]bool{}
		for _, cs := range p.health.Snapshot() {
			ci, err := p.picker.clusterIndex(cs.Name)
			if err != nil {
				continue
			}
			for _, b := range cs.Backends {
				if b.Healthy {
					continue
				}
				if id, ok := p.picker.idOf(ci, b.Addr); ok {
					now[id] = true
				}
			}
		}
		for id := range now {
			if !down[id] {
				p.group.Broadcast(core.ConfigEvent{Kind: core.ConfigBackendDown, Backend: id})
			}
		}
		for id := range down {
			if !now[id] {
				p.group.Broadcast(core.ConfigEvent{Kind: core.ConfigBackendUp, Backend: id})
			}
		}
		down = now
	}
}
