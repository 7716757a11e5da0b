package shard

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fastudp/fastudp/core"
)

// ListenerLabels names a listener and the cluster it routes to.
type ListenerLabels struct{ Listener, Cluster string }

// BackendLabels names a backend and its cluster; DNS marks a backend of a
// DNS-mode cluster (exported by [DNSCollector] too). A zero BackendLabels is
// an ID not in use (a removed backend), not exported.
type BackendLabels struct {
	Cluster, Backend string
	DNS              bool
}

// Collector exports the counters of a group's shards to Prometheus. It reads
// the published copies on each scrape; the shards never wait for it.
type Collector struct {
	shards    []*Shard
	listeners []ListenerLabels
	backends  func() []BackendLabels

	shardRx, shardBatches, shardBatchDatagrams, shardLoops *prometheus.Desc
	groRuns, groSegs, gsoSends, gsoSegs, gsoFallbacks      *prometheus.Desc
	splitDrops, syscalls                                   *prometheus.Desc
	sourceEvictions                                        *prometheus.Desc

	rxDatagrams, rxBytes, txDatagrams, txBytes   *prometheus.Desc
	flowsCreated, flowsEvicted, flowsActive      *prometheus.Desc
	flowsShed, drops, kernelDrops                *prometheus.Desc
	beIn, beBytesIn, beOut, beBytesOut, beSocket *prometheus.Desc
	beOpenFail, beRefused, beSendErr, beQueue    *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector for the shards; listeners and backends
// give the label values, indexed by ListenerID and BackendID.
func NewCollector(shards []*Shard, listeners []ListenerLabels, backends []BackendLabels) *Collector {
	return NewDynamicCollector(shards, listeners, func() []BackendLabels { return backends })
}

// NewDynamicCollector is [NewCollector] for a backend set that changes at
// run time: backends is called on every scrape and must be safe to call
// from any goroutine.
func NewDynamicCollector(shards []*Shard, listeners []ListenerLabels, backends func() []BackendLabels) *Collector {
	sl := []string{"shard"}
	ll := []string{"listener", "cluster"}
	bl := []string{"cluster", "backend"}
	d := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc("fastudp_"+name, help, labels, nil)
	}
	return &Collector{
		shards: shards, listeners: listeners, backends: backends,
		shardRx:             d("shard_rx_datagrams_total", "Client datagrams read by the shard (GRO segments counted one by one).", sl),
		shardBatches:        d("shard_batches_total", "recvmmsg calls on listener sockets that returned datagrams.", sl),
		shardBatchDatagrams: d("shard_batch_datagrams_total", "Datagrams those recvmmsg calls returned; divided by batches it gives the batch fill.", sl),
		shardLoops:          d("shard_loop_iterations_total", "Event-loop iterations.", sl),
		groRuns:             d("gro_runs_total", "UDP_GRO receives (client and backend legs) that held more than one datagram.", sl),
		groSegs:             d("gro_run_datagrams_total", "Datagrams in those GRO runs.", sl),
		gsoSends:            d("gso_sends_total", "UDP_SEGMENT sends of more than one datagram.", sl),
		gsoSegs:             d("gso_send_datagrams_total", "Datagrams in those GSO sends; divided by gso_sends_total it gives segments per send.", sl),
		gsoFallbacks:        d("gso_fallbacks_total", "Sockets whose GSO send the kernel refused (EIO, EINVAL, EMSGSIZE); they send runs as single datagrams from then on.", sl),
		splitDrops:          d("gso_split_drops_total", "Datagrams of a run lost when its non-GSO resend stopped part way.", sl),
		sourceEvictions:     d("source_evictions_total", "Sources the per-source admission table forgot while their bucket was refilling (source_table_size too small).", sl),
		syscalls:            d("shard_syscalls_total", "recvmmsg and sendmmsg calls of the shard (with bytes moved, syscalls per MB).", append(sl, "call")),
		rxDatagrams:         d("listener_rx_datagrams_total", "Datagrams received from clients.", ll),
		rxBytes:             d("listener_rx_bytes_total", "Bytes received from clients.", ll),
		txDatagrams:         d("listener_tx_datagrams_total", "Datagrams returned to clients.", ll),
		txBytes:             d("listener_tx_bytes_total", "Bytes returned to clients.", ll),
		flowsCreated:        d("flows_created_total", "Flows admitted.", ll),
		flowsEvicted:        d("flows_evicted_total", "Flows closed, for any reason.", ll),
		flowsActive:         d("flows_active", "Live flows.", ll),
		flowsShed:           d("flows_shed_total", "New flows refused because max_flows flows were live.", ll),
		drops:               d("drops_total", "Datagrams dropped, by reason.", append(ll, "reason")),
		kernelDrops:         d("kernel_drops_total", "Datagrams the kernel dropped on full listener receive queues (SO_RXQ_OVFL).", ll),
		beIn:                d("backend_tx_datagrams_total", "Datagrams forwarded to the backend.", bl),
		beBytesIn:           d("backend_tx_bytes_total", "Bytes forwarded to the backend.", bl),
		beOut:               d("backend_rx_datagrams_total", "Datagrams the backend returned to clients.", bl),
		beBytesOut:          d("backend_rx_bytes_total", "Bytes the backend returned to clients.", bl),
		beSocket:            d("upstream_sockets", "Open upstream sockets.", bl),
		beOpenFail:          d("upstream_open_failures_total", "Upstream sockets that could not be opened (the flow was shed).", bl),
		beRefused:           d("upstream_refused_total", "ICMP port unreachable (ECONNREFUSED) seen on upstream sockets.", bl),
		beSendErr:           d("upstream_send_errors_total", "Datagrams to the backend lost to other send errors.", bl),
		beQueue:             d("upstream_queue_full_total", "Datagrams to the backend dropped because the socket's write queue was full.", bl),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.shardRx, c.shardBatches, c.shardBatchDatagrams, c.shardLoops,
		c.groRuns, c.groSegs, c.gsoSends, c.gsoSegs, c.gsoFallbacks, c.splitDrops, c.syscalls, c.sourceEvictions,
		c.rxDatagrams, c.rxBytes, c.txDatagrams, c.txBytes, c.flowsCreated, c.flowsEvicted, c.flowsActive,
		c.flowsShed, c.drops, c.kernelDrops, c.beIn, c.beBytesIn, c.beOut, c.beBytesOut, c.beSocket,
		c.beOpenFail, c.beRefused, c.beSendErr, c.beQueue} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for i, s := range c.shards {
		id := strconv.Itoa(i)
		k := s.Counters()
		counter(c.shardRx, k.Shard(ShardRxDatagrams), id)
		counter(c.shardBatches, k.Shard(ShardBatches), id)
		counter(c.shardBatchDatagrams, k.Shard(ShardBatchDatagrams), id)
		counter(c.shardLoops, k.Shard(ShardLoops), id)
		counter(c.groRuns, k.Shard(ShardGRORuns), id)
		counter(c.groSegs, k.Shard(ShardGROSegments), id)
		counter(c.gsoSends, k.Shard(ShardGSOSends), id)
		counter(c.gsoSegs, k.Shard(ShardGSOSegments), id)
		counter(c.gsoFallbacks, k.Shard(ShardGSOFallbacks), id)
		counter(c.splitDrops, k.Shard(ShardSplitDrops), id)
		counter(c.sourceEvictions, k.Shard(ShardSourceEvictions), id)
		counter(c.syscalls, k.Shard(ShardRecvmmsg), id, "recvmmsg")
		counter(c.syscalls, k.Shard(ShardSendmmsg), id, "sendmmsg")
	}
	sumL := func(l core.ListenerID, i int) (v uint64) {
		for _, s := range c.shards {
			v += s.Counters().Listener(l, i)
		}
		return v
	}
	for li, lab := range c.listeners {
		l := core.ListenerID(li)
		counter(c.rxDatagrams, sumL(l, ListenerRxDatagrams), lab.Listener, lab.Cluster)
		counter(c.rxBytes, sumL(l, ListenerRxBytes), lab.Listener, lab.Cluster)
		counter(c.txDatagrams, sumL(l, ListenerTxDatagrams), lab.Listener, lab.Cluster)
		counter(c.txBytes, sumL(l, ListenerTxBytes), lab.Listener, lab.Cluster)
		// Evicted first: a shard publishes in index order (created before
		// evicted), so a later read of created is never below it. Read the
		// other way round, a publish in between made the gauge negative.
		evicted := sumL(l, ListenerFlowsEvicted)
		created := sumL(l, ListenerFlowsCreated)
		counter(c.flowsCreated, created, lab.Listener, lab.Cluster)
		counter(c.flowsEvicted, evicted, lab.Listener, lab.Cluster)
		ch <- prometheus.MustNewConstMetric(c.flowsActive, prometheus.GaugeValue, float64(created-evicted), lab.Listener, lab.Cluster)
		counter(c.flowsShed, sumL(l, ListenerDropBase+int(core.DropShed)), lab.Listener, lab.Cluster)
		counter(c.kernelDrops, sumL(l, ListenerKernelDrops), lab.Listener, lab.Cluster)
		for r := 1; r < core.NumDropReasons; r++ {
			counter(c.drops, sumL(l, ListenerDropBase+r), lab.Listener, lab.Cluster, core.DropReason(r).String())
		}
		counter(c.drops, sumL(l, ListenerTruncated), lab.Listener, lab.Cluster, "truncated")
		counter(c.drops, sumL(l, ListenerSendErrors), lab.Listener, lab.Cluster, "send_error")
		counter(c.drops, sumL(l, ListenerQueueFull), lab.Listener, lab.Cluster, "queue_full")
	}
	sumB := func(b core.BackendID, i int) (v uint64) {
		for _, s := range c.shards {
			v += s.Counters().Backend(b, i)
		}
		return v
	}
	for bi, lab := range c.backends() {
		if lab == (BackendLabels{}) {
			continue
		}
		b := core.BackendID(bi)
		counter(c.beIn, sumB(b, BackendDatagramsIn), lab.Cluster, lab.Backend)
		counter(c.beBytesIn, sumB(b, BackendBytesIn), lab.Cluster, lab.Backend)
		counter(c.beOut, sumB(b, BackendDatagramsOut), lab.Cluster, lab.Backend)
		counter(c.beBytesOut, sumB(b, BackendBytesOut), lab.Cluster, lab.Backend)
		closed := sumB(b, BackendSocketsClosed) // before opened, as for flows
		ch <- prometheus.MustNewConstMetric(c.beSocket, prometheus.GaugeValue,
			float64(sumB(b, BackendSocketsOpened)-closed), lab.Cluster, lab.Backend)
		counter(c.beOpenFail, sumB(b, BackendOpenFailures), lab.Cluster, lab.Backend)
		counter(c.beRefused, sumB(b, BackendRefused), lab.Cluster, lab.Backend)
		counter(c.beSendErr, sumB(b, BackendSendErrors), lab.Cluster, lab.Backend)
		counter(c.beQueue, sumB(b, BackendQueueFull), lab.Cluster, lab.Backend)
	}
}
