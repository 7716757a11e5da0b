package main

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"

	"github.com/fastudp/fastudp/config"
	"github.com/fastudp/fastudp/core"
)

// placements returns each cluster's placement fingerprint by name (see
// placementOf); a cluster without backends has none. Nodes of a scale-out
// deployment compare them (`fastudp ctl status`) to check that they would
// all pick the same backend for a client.
func (p *proxy) placements() map[string]string {
	p.reloadMu.Lock() // reload rewrites p.cfg's clusters in place
	defer p.reloadMu.Unlock()
	out := make(map[string]string, len(p.cfg.Clusters))
	for ci := range p.cfg.Clusters { // the picker's ClusterIDs are these indices
		cl := &p.cfg.Clusters[ci]
		hc := p.picker.clusters[ci].Load()
		if hc == nil {
			continue
		}
		if v := hc.View(); v != nil && v.Table != nil {
			out[cl.Name] = placementOf(v.Table.Fingerprint(), cl.Mode, cl.Affinity)
		}
	}
	return out
}

// placementOf is 16 hex digits of an FNV-1a digest of a cluster's table
// fingerprint (algorithm, seed, Maglev size, backend addresses, weights and
// tiers: balance.Table.Fingerprint), its mode and its affinity (which make
// the key a client is hashed by). Two processes with the same placement pick
// the same backend for every client as long as their health checks agree on
// which backends are usable (lb maglev or hrw; rr, random and p2c never
// agree across processes).
func placementOf(tableFP uint64, mode config.Mode, aff core.Affinity) string {
	var b [10]byte
	binary.BigEndian.PutUint64(b[:], tableFP)
	b[8], b[9] = byte(mode), byte(aff)
	h := fnv.New64a()
	_, _ = h.Write(b[:])
	return fmt.Sprintf("%016x", h.Sum64())
}
