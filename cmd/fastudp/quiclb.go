package main

import (
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fastudp/fastudp/batchio/shard"
	"github.com/fastudp/fastudp/config"
	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/quiclb"
)

// quicRoutes is the QUIC-LB state of one cluster with affinity "quic", as
// the shards read it: the configuration and each server ID's backend. It is
// immutable; the registry publishes a new one with every change of the
// cluster's backends or configuration.
type quicRoutes struct {
	codec *quiclb.Codec             // decodes (and decrypts) the configuration's IDs
	addrs map[string]netip.AddrPort // server ID (raw bytes) -> backend address
}

// quicCounters count how the new flows of one cluster were routed.
type quicCounters struct {
	serverID, cidHash, fallback atomic.Uint64
}

// quicState is the registry's QUIC-LB bookkeeping, one entry per cluster.
type quicState struct {
	routes   []atomic.Pointer[quicRoutes] // nil: the cluster is not "quic"
	counters []quicCounters
	// on and cfg are the clusters' settings, guarded by the registry's mu.
	on  []bool
	cfg []quiclb.Config
}

func newQUICState(cfg *config.Config) quicState {
	q := quicState{
		routes:   make([]atomic.Pointer[quicRoutes], len(cfg.Clusters)),
		counters: make([]quicCounters, len(cfg.Clusters)),
	}
	for _, cl := range cfg.Clusters {
		q.on = append(q.on, cl.Affinity == core.AffinityQUIC)
		q.cfg = append(q.cfg, cl.QUICLB)
	}
	return q
}

var _ shard.PayloadPicker = (*clusterPicker)(nil)

// PickPayload implements shard.PayloadPicker: for a cluster with affinity
// "quic", a new flow whose first datagram's destination connection ID
// carries the server ID of a backend that is up (draining or not) goes to
// that backend (a client
// that migrated or was rebound to a new address keeps its server, whose path
// validation then takes over); any other flow is picked by the cluster's lb
// with the core's key (a hash of a client-chosen ID for an Initial or 0-RTT
// packet, else the client's ip-port). It allocates nothing.
func (p *clusterPicker) PickPayload(cluster core.ClusterID, key uint64, payload []byte) (core.Backend, bool) {
	if int(cluster) >= len(p.quic.routes) {
		return p.Pick(cluster, key)
	}
	r := p.quic.routes[cluster].Load()
	if r == nil {
		return p.Pick(cluster, key)
	}
	c := &p.quic.counters[cluster]
	var buf [quiclb.MaxServerIDLen]byte // a decrypted server ID
	route, sid := r.codec.Classify(payload, buf[:])
	switch route {
	case quiclb.RouteServerID:
		if b, ok := p.byServerID(cluster, r, sid); ok {
			c.serverID.Add(1)
			return b, true
		}
		c.fallback.Add(1)
	case quiclb.RouteCIDHash:
		c.cidHash.Add(1)
	default:
		c.fallback.Add(1)
	}
	return p.Pick(cluster, key)
}

// byServerID returns the backend with server ID sid if the cluster's current
// health view has it serving: up, draining or not, since the datagram
// belongs to a connection the backend has (a draining backend keeps its
// connections, migrated or not).
func (p *clusterPicker) byServerID(cluster core.ClusterID, r *quicRoutes, sid []byte) (core.Backend, bool) {
	addr, ok := r.addrs[string(sid)]
	if !ok {
		return core.Backend{}, false
	}
	hc := p.clusters[cluster].Load()
	if hc == nil {
		return core.Backend{}, false
	}
	v := hc.View()
	i, ok := v.Table.IndexOf(addr)
	if !ok || v.Serving != nil && !v.Serving.Has(i) {
		return core.Backend{}, false
	}
	b := v.Table.Backend(i)
	return core.Backend{ID: b.ID, Addr: b.Addr}, true
}

// publishQUICLocked publishes cluster ci's server IDs from the registry.
func (p *clusterPicker) publishQUICLocked(ci int) {
	if !p.quic.on[ci] {
		p.quic.routes[ci].Store(nil)
		return
	}
	codec, err := quiclb.NewCodec(p.quic.cfg[ci])
	if err != nil {
		// An invalid quic_lb table (config validation rejects one): read no
		// server IDs, as without a table.
		codec, _ = quiclb.NewCodec(quiclb.Config{})
	}
	r := &quicRoutes{codec: codec, addrs: make(map[string]netip.AddrPort)}
	for _, ref := range p.refs {
		if ref.cluster == ci && !ref.removed && ref.serverID != "" {
			r.addrs[ref.serverID] = ref.addr
		}
	}
	p.quic.routes[ci].Store(r)
}

// setQUIC sets cluster ci's affinity-quic switch and QUIC-LB configuration
// (new flows only), reporting whether they changed.
func (p *clusterPicker) setQUIC(ci int, on bool, cfg quiclb.Config) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.quic.on[ci] == on && p.quic.cfg[ci] == cfg {
		return false
	}
	p.quic.on[ci], p.quic.cfg[ci] = on, cfg
	p.publishQUICLocked(ci)
	return true
}

// checkServerIDLocked checks that cluster ci can take a new backend with
// server ID sid (raw bytes; "" always can): the cluster has a quic_lb table
// whose server_id_len is len(sid), and no live backend of the cluster has
// sid already.
func (p *clusterPicker) checkServerIDLocked(ci int, sid string) error {
	if sid == "" {
		return nil
	}
	n := int(p.quic.cfg[ci].ServerIDLen)
	switch {
	case n == 0:
		return fmt.Errorf("%w: server ID %x: cluster %q has no quic_lb table (server IDs need one)", errInvalid, sid, p.names[ci])
	case len(sid) != n:
		return fmt.Errorf("%w: server ID %x is %d bytes, cluster %q's quic_lb server_id_len is %d", errInvalid, sid, len(sid), p.names[ci], n)
	}
	for _, r := range p.refs {
		if r.cluster == ci && !r.removed && r.serverID == sid {
			return fmt.Errorf("%w: server ID %x is already backend %v's in cluster %q", errInvalid, sid, r.addr, p.names[ci])
		}
	}
	return nil
}

// setServerID changes a backend's QUIC-LB server ID ("" for none).
func (p *clusterPicker) setServerID(ci int, addr netip.AddrPort, sid string) error {
	return p.changeBackend(ci, addr, func(r *backendRef) { r.serverID = sid })
}

// reloadQUIC applies a reload's QUIC-LB changes to cluster ci: the
// configuration and the backends' server IDs (backends already added or
// removed). It reports whether anything changed.
func (p *proxy) reloadQUIC(ci int, old, nc *config.Cluster) (bool, error) {
	// The contract of new flows (affinity, quic_lb) was applied to old
	// already; the picker follows it.
	changed := p.picker.setQUIC(ci, nc.Affinity == core.AffinityQUIC, nc.QUICLB)
	// The key is not in the core's config, so a reload that only changes it
	// was not applied with the contract; the running config records it.
	old.QUICLB = nc.QUICLB
	_, refs := p.picker.backendsOf(ci)
	for _, b := range nc.Backends {
		for _, r := range refs {
			if r.addr == b.Address && r.serverID != b.ServerID {
				if err := p.picker.setServerID(ci, b.Address, b.ServerID); err != nil {
					return changed, fmt.Errorf("backend %v: server_id: %w", b.Address, err)
				}
				changed = true
			}
		}
	}
	return changed, nil
}

// quicCollector exports the QUIC-LB routing counters of the clusters with
// affinity "quic".
type quicCollector struct {
	p      *clusterPicker
	routed *prometheus.Desc
}

func newQUICCollector(p *clusterPicker) *quicCollector {
	return &quicCollector{p: p, routed: prometheus.NewDesc("fastudp_quic_lb_routed_total",
		"New QUIC flows by how their backend was chosen: server_id (from the connection ID), cid_hash (an Initial or 0-RTT by its client-chosen ID), fallback (no server ID of a backend that is up: the cluster's lb).",
		[]string{"cluster", "route"}, nil)}
}

func (c *quicCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.routed }

func (c *quicCollector) Collect(ch chan<- prometheus.Metric) {
	for ci := range c.p.quic.routes {
		if c.p.quic.routes[ci].Load() == nil {
			continue
		}
		n := &c.p.quic.counters[ci]
		name := c.p.clusterName(ci)
		for _, r := range []struct {
			route string
			v     uint64
		}{{"server_id", n.serverID.Load()}, {"cid_hash", n.cidHash.Load()}, {"fallback", n.fallback.Load()}} {
			ch <- prometheus.MustNewConstMetric(c.routed, prometheus.CounterValue, float64(r.v), name, r.route)
		}
	}
}

// clusterName returns cluster ci's name.
func (p *clusterPicker) clusterName(ci int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.names[ci]
}
