package health

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the monitor's state to Prometheus:
//
//	fastudp_backend_up{cluster,backend}                         1 healthy, 0 down (draining or not)
//	fastudp_backend_draining{cluster,backend}                   1 draining, else 0
//	fastudp_health_probes_total{cluster,backend,result}         active probes, result="success|failure"
//	fastudp_health_passive_failures_total{cluster,backend}      failures the data path reported
//	fastudp_health_fail_open{cluster}                           1 while no backend is up and the cluster fails open
//
// It reads a [Monitor.Snapshot] on each scrape. Counters of a backend restart
// from zero when it leaves the table and comes back.
type Collector struct {
	m                                   *Monitor
	up, draining, probes, passive, open *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector for m; register it once.
func NewCollector(m *Monitor) *Collector {
	bl := []string{"cluster", "backend"}
	return &Collector{
		m:        m,
		up:       prometheus.NewDesc("fastudp_backend_up", "Backend health: 1 up, 0 down (draining backends show their health).", bl, nil),
		draining: prometheus.NewDesc("fastudp_backend_draining", "1 when the control plane drains the backend (no new flows, live flows continue).", bl, nil),
		probes:   prometheus.NewDesc("fastudp_health_probes_total", "Active health probes, by result.", append(bl, "result"), nil),
		passive:  prometheus.NewDesc("fastudp_health_passive_failures_total", "Passive failures reported by the data path (timeouts, ECONNREFUSED, flows without a reply).", bl, nil),
		open:     prometheus.NewDesc("fastudp_health_fail_open", "1 while no backend of the cluster is up and new flows go to every non-draining backend (fail-open).", []string{"cluster"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.draining, c.probes, c.passive, c.open} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, cs := range c.m.Snapshot() {
		ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, b2f(cs.FailingOpen), cs.Name)
		for _, b := range cs.Backends {
			addr := b.Addr.String()
			ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, b2f(b.Healthy), cs.Name, addr)
			ch <- prometheus.MustNewConstMetric(c.draining, prometheus.GaugeValue, b2f(b.Draining), cs.Name, addr)
			ch <- prometheus.MustNewConstMetric(c.probes, prometheus.CounterValue, float64(b.ProbeSuccesses), cs.Name, addr, "success")
			ch <- prometheus.MustNewConstMetric(c.probes, prometheus.CounterValue, float64(b.ProbeFailures), cs.Name, addr, "failure")
			ch <- prometheus.MustNewConstMetric(c.passive, prometheus.CounterValue, float64(b.PassiveFailures), cs.Name, addr)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
