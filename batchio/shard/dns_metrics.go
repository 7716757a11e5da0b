package shard

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fastudp/fastudp/core"
)

// DNSCollector exports the DNS-mode counters of a group's shards: queries,
// answers, timeouts, mismatched and unknown replies, IDs in use per socket
// and the answer latency histogram per backend. Like [Collector] it reads
// only published values.
type DNSCollector struct {
	shards    []*Shard
	listeners []ListenerLabels
	backends  func() []BackendLabels
	dnsLst    []bool // listeners in DNS mode

	queries, malformed, noBackend, stopping, rateLimited *prometheus.Desc
	sent, answers, timeouts, released, mismatched        *prometheus.Desc
	unknown, badReply, truncated, shed, inUse, latencies *prometheus.Desc
}

var _ prometheus.Collector = (*DNSCollector)(nil)

// NewDNSCollector returns a collector for the DNS-mode listeners
// (dnsListeners says which, by ID) and backends (those whose labels have
// DNS set). backends is called on every scrape, from any goroutine.
func NewDNSCollector(shards []*Shard, listeners []ListenerLabels, backends func() []BackendLabels, dnsListeners []bool) *DNSCollector {
	ll := []string{"listener", "cluster"}
	bl := []string{"cluster", "backend"}
	d := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc("fastudp_dns_"+name, help, labels, nil)
	}
	return &DNSCollector{
		shards: shards, listeners: listeners, backends: backends, dnsLst: dnsListeners,
		queries:     d("queries_total", "DNS queries received from clients.", ll),
		malformed:   d("malformed_queries_total", "Datagrams dropped because they are not a DNS query with one well-formed question.", ll),
		noBackend:   d("no_backend_total", "Queries dropped because no backend was usable.", ll),
		stopping:    d("stopping_drops_total", "Queries dropped while the proxy drained to stop.", ll),
		rateLimited: d("rate_limited_total", "Queries dropped because their source was over source_flow_rate (also in fastudp_drops_total{reason=\"rate_limited\"}).", ll),
		sent:        d("backend_queries_total", "Queries sent to the backend.", bl),
		answers:     d("answers_total", "Answers matched to their query by ID and question and returned to the client.", bl),
		timeouts:    d("timeouts_total", "Queries unanswered within dns_timeout (their ID freed).", bl),
		released:    d("send_failures_total", "Queries whose send to the backend failed (their ID freed at once).", bl),
		mismatched:  d("mismatched_replies_total", "Replies dropped: the ID was outstanding but the question differed (forged or confused).", bl),
		unknown:     d("unknown_replies_total", "Replies dropped: no query with that ID was outstanding (late, duplicate or forged).", bl),
		badReply:    d("malformed_replies_total", "Replies dropped: not a DNS response with one question, or longer than max_rx_datagram_size.", bl),
		truncated:   d("truncated_answers_total", "Answers with TC set, passed on (the client retries over TCP).", bl),
		shed:        d("shed_total", "Queries dropped because every upstream socket of the backend had dns_max_inflight queries outstanding.", bl),
		inUse:       d("ids_in_use", "Query IDs outstanding on one shared upstream socket.", append(bl, "shard", "socket")),
		latencies:   d("answer_latency_seconds", "Time from a query's send to its answer's arrival.", bl),
	}
}

// Describe implements prometheus.Collector.
func (c *DNSCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.queries, c.malformed, c.noBackend, c.stopping, c.rateLimited, c.sent, c.answers,
		c.timeouts, c.released, c.mismatched, c.unknown, c.badReply, c.truncated, c.shed, c.inUse, c.latencies} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *DNSCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for li, lab := range c.listeners {
		if li >= len(c.dnsLst) || !c.dnsLst[li] {
			continue
		}
		l := core.ListenerID(li)
		sum := func(i int) (v uint64) {
			for _, s := range c.shards {
				v += s.Counters().Listener(l, i)
			}
			return v
		}
		counter(c.queries, sum(ListenerDNSQueries), lab.Listener, lab.Cluster)
		counter(c.malformed, sum(ListenerDNSMalformed), lab.Listener, lab.Cluster)
		counter(c.noBackend, sum(ListenerDNSNoBackend), lab.Listener, lab.Cluster)
		counter(c.stopping, sum(ListenerDNSStopping), lab.Listener, lab.Cluster)
		counter(c.rateLimited, sum(ListenerDropBase+int(core.DropRateLimited)), lab.Listener, lab.Cluster)
	}
	for bi, lab := range c.backends() {
		if !lab.DNS {
			continue
		}
		b := core.BackendID(bi)
		sum := func(i int) (v uint64) {
			for _, s := range c.shards {
				v += s.Counters().Backend(b, i)
			}
			return v
		}
		counter(c.sent, sum(BackendDNSQueries), lab.Cluster, lab.Backend)
		counter(c.answers, sum(BackendDNSAnswers), lab.Cluster, lab.Backend)
		counter(c.timeouts, sum(BackendDNSTimeouts), lab.Cluster, lab.Backend)
		counter(c.released, sum(BackendDNSReleased), lab.Cluster, lab.Backend)
		counter(c.mismatched, sum(BackendDNSMismatched), lab.Cluster, lab.Backend)
		counter(c.unknown, sum(BackendDNSUnknown), lab.Cluster, lab.Backend)
		counter(c.badReply, sum(BackendDNSMalformed), lab.Cluster, lab.Backend)
		counter(c.truncated, sum(BackendDNSTruncated), lab.Cluster, lab.Backend)
		counter(c.shed, sum(BackendDNSShed), lab.Cluster, lab.Backend)
		buckets := make(map[float64]uint64, len(DNSLatencyBuckets))
		var cum uint64
		for i, ub := range DNSLatencyBuckets {
			cum += sum(BackendDNSLatencyBucket + i)
			buckets[ub.Seconds()] = cum
		}
		count := cum + sum(BackendDNSLatencyBucket+len(DNSLatencyBuckets))
		ch <- prometheus.MustNewConstHistogram(c.latencies, count, float64(sum(BackendDNSLatencySum))/1e9, buckets, lab.Cluster, lab.Backend)
		for si, s := range c.shards {
			for k := range MaxDNSSockets {
				n, ok := s.DNSInUse(b, k)
				if !ok {
					continue
				}
				ch <- prometheus.MustNewConstMetric(c.inUse, prometheus.GaugeValue, float64(n), lab.Cluster, lab.Backend, strconv.Itoa(si), strconv.Itoa(k))
			}
		}
	}
}
