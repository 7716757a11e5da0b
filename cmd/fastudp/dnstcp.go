package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fastudp/fastudp/config"
	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/dns/tcpfwd"
)

// dnsTCP is the DNS-over-TCP forwarder of one DNS-mode listener.
type dnsTCP struct {
	listener, cluster string
	srv               *tcpfwd.Server
	done              chan error
}

// startDNSTCP starts a TCP forwarder on the bound address of every DNS-mode
// listener whose cluster keeps dns_tcp on. Backends are chosen by the same
// picker and affinity key as UDP queries, so a client's TCP retry of a
// truncated answer reaches the backend that truncated it.
// With t set, a listener handed over by the process being upgraded is used
// instead of binding anew.
func startDNSTCP(cfg *config.Config, addrs []netip.AddrPort, picker *clusterPicker, log *slog.Logger, t *takeover) ([]*dnsTCP, error) {
	var out []*dnsTCP
	for i, l := range cfg.Listeners {
		ci := cfg.ClusterIndex(l.Cluster)
		if ci < 0 {
			continue
		}
		cl := &cfg.Clusters[ci]
		if cl.Mode != config.ModeDNS || !cl.DNS.TCP {
			continue
		}
		id, affinity, seed := core.ClusterID(ci), cl.Affinity, cfg.Seed
		pick := func(client netip.AddrPort) (netip.AddrPort, bool) {
			b, ok := picker.Pick(id, core.AffinityHash(seed, client, affinity))
			return b.Addr, ok
		}
		opts := tcpfwd.Options{
			IdleTimeout: cl.DNS.TCPIdleTimeout,
			Logger:      log.With("listener", l.Name, "proto", "tcp"),
		}
		var srv *tcpfwd.Server
		var err error
		if ln, ok := t.listener("dnstcp/"+l.Name, addrs[i].String()).(*net.TCPListener); ok {
			srv, err = tcpfwd.Inherit(ln, pick, opts)
		} else {
			srv, err = tcpfwd.Listen(addrs[i], pick, opts)
		}
		if err != nil {
			stopDNSTCP(context.Background(), out)
			return nil, fmt.Errorf("listener %q: dns_tcp: %w (set dns_tcp = false to serve TCP some other way)", l.Name, err)
		}
		t := &dnsTCP{listener: l.Name, cluster: cl.Name, srv: srv, done: make(chan error, 1)}
		go func() { t.done <- srv.Serve() }()
		log.Info("listening", "listener", l.Name, "address", srv.Addr(), "proto", "tcp", "cluster", cl.Name)
		out = append(out, t)
	}
	return out, nil
}

// stopDNSTCP lets live TCP connections finish until ctx is done, then
// closes them.
func stopDNSTCP(ctx context.Context, ts []*dnsTCP) error {
	var errs []error
	for _, t := range ts {
		if err := t.srv.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			errs = append(errs, err)
		}
		_ = t.srv.Close()
		if err := <-t.done; err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// dnsTCPCollector exports the forwarders' counters.
type dnsTCPCollector struct {
	ts                                           []*dnsTCP
	accepted, active, refused, dialFail, queries *prometheus.Desc
	answers, idle, malformed                     *prometheus.Desc
}

func newDNSTCPCollector(ts []*dnsTCP) *dnsTCPCollector {
	ll := []string{"listener", "cluster"}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("fastudp_dns_tcp_"+name, help, ll, nil)
	}
	return &dnsTCPCollector{
		ts:        ts,
		accepted:  d("connections_total", "DNS-over-TCP client connections accepted (refused ones included)."),
		active:    d("connections_active", "DNS-over-TCP client connections being served."),
		refused:   d("refused_total", "TCP connections closed at once: no usable backend, or too many connections."),
		dialFail:  d("dial_failures_total", "TCP connections to a backend that failed or timed out."),
		queries:   d("queries_total", "DNS messages relayed client to backend over TCP."),
		answers:   d("answers_total", "DNS messages relayed backend to client over TCP."),
		idle:      d("idle_timeouts_total", "TCP connections closed by dns_tcp_idle_timeout."),
		malformed: d("malformed_total", "TCP connections closed for a zero-length message or a stream cut inside a message."),
	}
}

func (c *dnsTCPCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.accepted, c.active, c.refused, c.dialFail, c.queries, c.answers, c.idle, c.malformed} {
		ch <- d
	}
}

func (c *dnsTCPCollector) Collect(ch chan<- prometheus.Metric) {
	for _, t := range c.ts {
		st := t.srv.Stats()
		put := func(d *prometheus.Desc, typ prometheus.ValueType, v uint64) {
			ch <- prometheus.MustNewConstMetric(d, typ, float64(v), t.listener, t.cluster)
		}
		put(c.accepted, prometheus.CounterValue, st.Accepted)
		put(c.active, prometheus.GaugeValue, st.Active)
		put(c.refused, prometheus.CounterValue, st.Refused)
		put(c.dialFail, prometheus.CounterValue, st.DialFailures)
		put(c.queries, prometheus.CounterValue, st.Queries)
		put(c.answers, prometheus.CounterValue, st.Answers)
		put(c.idle, prometheus.CounterValue, st.IdleTimeouts)
		put(c.malformed, prometheus.CounterValue, st.Malformed)
	}
}
