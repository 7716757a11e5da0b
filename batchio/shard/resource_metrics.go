package shard

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fastudp/fastudp/core"
)

// ResourceCollector exports the shards' resource events
// (fastudp_resource_errors_total{kind}) and, per backend, the flows that
// closed idle without a reply (fastudp_upstream_no_reply_flows_total).
type ResourceCollector struct {
	shards   []*Shard
	backends func() []BackendLabels
	errs     *prometheus.Desc
	noReply  *prometheus.Desc
}

var _ prometheus.Collector = (*ResourceCollector)(nil)

// NewResourceCollector returns a collector for the shards; backends gives
// the label values by BackendID, as for [NewDynamicCollector].
func NewResourceCollector(shards []*Shard, backends func() []BackendLabels) *ResourceCollector {
	return &ResourceCollector{
		shards: shards, backends: backends,
		errs: prometheus.NewDesc("fastudp_resource_errors_total",
			"Resource conditions met by the data path, by kind: fd_limit, ports_exhausted, open_error (a new flow shed), backend_refused, socket_buffer_full, backend_no_reply.",
			[]string{"kind"}, nil),
		noReply: prometheus.NewDesc("fastudp_upstream_no_reply_flows_total",
			"Flows of clusters that expect replies closed idle without one (a blackholing or too slow backend).",
			[]string{"cluster", "backend"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *ResourceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.errs
	ch <- c.noReply
}

// Collect implements prometheus.Collector.
func (c *ResourceCollector) Collect(ch chan<- prometheus.Metric) {
	for k := range NumResourceKinds {
		var v uint64
		for _, s := range c.shards {
			v += s.Counters().Resource(k)
		}
		ch <- prometheus.MustNewConstMetric(c.errs, prometheus.CounterValue, float64(v), k.String())
	}
	for bi, lab := range c.backends() {
		if lab == (BackendLabels{}) {
			continue
		}
		var v uint64
		for _, s := range c.shards {
			v += s.Counters().Backend(core.BackendID(bi), BackendNoReply)
		}
		ch <- prometheus.MustNewConstMetric(c.noReply, prometheus.CounterValue, float64(v), lab.Cluster, lab.Backend)
	}
}
