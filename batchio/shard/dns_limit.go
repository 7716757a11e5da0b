package shard

import "github.com/fastudp/fastudp/core"

// configureDNSLimit applies the per-source limit to the shard's DNS-mode
// queries, with the same per-shard share the core's flow limit gets. A shard
// with no DNS-mode listener keeps no table.
func (s *Shard) configureDNSLimit(ac core.AdmissionConfig) {
	d := &s.dns
	if d.rx == nil {
		return
	}
	// Its own hash key: the core's table and this one are separate.
	d.limit.Configure(ac, d.seed^0x3c6ef372fe94f82b)
}

// dnsConfigEvent applies the parts of a core config event that DNS mode
// follows as well.
func (s *Shard) dnsConfigEvent(ev *core.ConfigEvent) {
	if ev.Kind == core.ConfigSetAdmission {
		s.configureDNSLimit(ev.Admission)
	}
}
