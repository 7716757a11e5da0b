package shard

import (
	"sync/atomic"
	"time"

	"github.com/fastudp/fastudp/core"
)

// Counter indexes. A shard's counters are one flat array: shard-wide counters,
// then one block per listener, then one block per backend. The shard is the
// only writer of its local copy and publishes it (atomic stores) at most once
// per loop iteration, so nothing shared is written per datagram.
const (
	// Shard-wide.
	ShardRxDatagrams     = iota // datagrams read from listener sockets
	ShardBatches                // recvmmsg calls on listeners that returned data
	ShardBatchDatagrams         // datagrams those calls returned (fill = this / batches)
	ShardLoops                  // event-loop iterations
	ShardControl                // control messages applied
	ShardGRORuns                // UDP_GRO receives (listener and upstream) holding more than one datagram
	ShardGROSegments            // datagrams in those runs
	ShardGSOSends               // UDP_SEGMENT sends of more than one datagram that the kernel took
	ShardGSOSegments            // datagrams in those sends (÷ ShardGSOSends = segments per send)
	ShardGSOFallbacks           // sockets whose GSO send the kernel refused (EIO/EINVAL/EMSGSIZE): GSO turned off there
	ShardSplitDrops             // datagrams of a split run lost when a non-GSO resend stopped part way
	ShardRecvmmsg               // recvmmsg calls (listeners and upstreams)
	ShardSendmmsg               // sendmmsg calls (listeners and upstreams)
	ShardSourceEvictions        // sources the core's admission table forgot while refilling (core.Manager.SourceEvictions)
	numShardCounters
)

// Per-listener counters, offset within a listener's block.
const (
	ListenerRxDatagrams = iota // client datagrams received (segments)
	ListenerRxBytes
	ListenerTxDatagrams // datagrams returned to clients (segments)
	ListenerTxBytes
	ListenerFlowsCreated
	ListenerFlowsEvicted
	ListenerKernelDrops // latest SO_RXQ_OVFL value (cumulative per socket)
	ListenerTruncated   // receives with MSG_CTRUNC, or a GRO run cut by MSG_TRUNC (a plain oversize datagram is the core's DropOversize)
	ListenerSendErrors  // hard errors sending to clients
	ListenerQueueFull   // client-bound datagrams dropped: write queue full
	// DNS mode.
	ListenerDNSQueries   // queries received (GRO segments one by one)
	ListenerDNSMalformed // datagrams that are not a DNS query with one well-formed question
	ListenerDNSNoBackend // queries dropped: no usable backend
	ListenerDNSStopping  // queries dropped while the shard drains to stop
	ListenerDropBase     // + core.DropReason: core drops by reason (segments)
	numListenerCounters  = ListenerDropBase + core.NumDropReasons
)

// Per-backend counters, offset within a backend's block.
const (
	BackendDatagramsIn = iota // forwarded to the backend (segments)
	BackendBytesIn
	BackendDatagramsOut // returned from the backend (segments)
	BackendBytesOut
	BackendSocketsOpened
	BackendSocketsClosed
	BackendOpenFailures // upstream socket could not be opened: flow shed
	BackendRefused      // ECONNREFUSED (ICMP port unreachable) on an upstream socket
	BackendSendErrors   // other hard send errors
	BackendQueueFull    // datagrams dropped: upstream write queue full
	// BackendNoReply counts flows of clusters that expect replies
	// (responses > 0) closed idle without one: a passive health failure.
	BackendNoReply
	// DNS mode.
	BackendDNSQueries    // queries sent to the backend
	BackendDNSAnswers    // answers matched to their query and returned
	BackendDNSTimeouts   // queries unanswered within dns_timeout
	BackendDNSReleased   // queries whose send failed (their ID freed at once)
	BackendDNSMismatched // replies whose ID is outstanding but whose question differs
	BackendDNSUnknown    // replies whose ID is not outstanding (late, duplicate or forged)
	BackendDNSMalformed  // replies that are not a DNS response with one question, or too long
	BackendDNSTruncated  // answers with TC set (passed on: the client retries over TCP)
	BackendDNSShed       // queries dropped: every socket of the backend had dns_max_inflight outstanding
	BackendDNSLatencySum // nanoseconds from query sent to answer received, summed
	// BackendDNSLatencyBucket + i counts answers with latency at most
	// DNSLatencyBuckets[i]; the last, + len(DNSLatencyBuckets), the rest.
	BackendDNSLatencyBucket
	numBackendCounters = BackendDNSLatencyBucket + len(DNSLatencyBuckets) + 1
)

// DNSLatencyBuckets are the upper bounds of the DNS answer latency histogram.
var DNSLatencyBuckets = [...]time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond,
}

// Counters holds one shard's counters: a local array written only by the
// shard, and its published copy read by metrics exporters.
type Counters struct {
	listeners, backends int
	local               []uint64
	published           []atomic.Uint64
	dirty               bool
	// used is the length of local that has ever been written: backend IDs
	// are handed out in order and spare ones stay zero, so publish copies
	// only up to the highest backend seen.
	used int
	// res counts resource conditions by ResourceKind (see resource.go).
	res    [NumResourceKinds]uint64
	resPub [NumResourceKinds]atomic.Uint64
}

func newCounters(listeners, backends int) *Counters {
	n := numShardCounters + listeners*numListenerCounters + backends*numBackendCounters
	return &Counters{listeners: listeners, backends: backends, local: make([]uint64, n), published: make([]atomic.Uint64, n),
		used: numShardCounters + listeners*numListenerCounters}
}

func (c *Counters) addShard(i int, v uint64) { c.local[i] += v; c.dirty = true }

func (c *Counters) addListener(l core.ListenerID, i int, v uint64) {
	if int(l) < c.listeners {
		c.local[numShardCounters+int(l)*numListenerCounters+i] += v
		c.dirty = true
	}
}

func (c *Counters) setListener(l core.ListenerID, i int, v uint64) {
	if int(l) < c.listeners {
		c.local[numShardCounters+int(l)*numListenerCounters+i] = v
		c.dirty = true
	}
}

func (c *Counters) addBackend(b core.BackendID, i int, v uint64) {
	if int(b) < c.backends {
		j := numShardCounters + c.listeners*numListenerCounters + int(b)*numBackendCounters
		c.local[j+i] += v
		c.dirty = true
		c.used = max(c.used, j+numBackendCounters)
	}
}

// publish makes the local values visible to readers, in index order, so a
// reader that loads a counter and then one of lower index gets the second at
// least as new as the first: flows evicted read before flows created (or
// sockets closed before opened) never exceed it.
func (c *Counters) publish() {
	if !c.dirty {
		return
	}
	for i, v := range c.local[:c.used] {
		c.published[i].Store(v)
	}
	for i, v := range c.res {
		c.resPub[i].Store(v)
	}
	c.dirty = false
}

// Shard returns a published shard-wide counter.
func (c *Counters) Shard(i int) uint64 { return c.published[i].Load() }

// Listener returns a published counter of listener l.
func (c *Counters) Listener(l core.ListenerID, i int) uint64 {
	if int(l) >= c.listeners {
		return 0
	}
	return c.published[numShardCounters+int(l)*numListenerCounters+i].Load()
}

// Backend returns a published counter of backend b.
func (c *Counters) Backend(b core.BackendID, i int) uint64 {
	if int(b) >= c.backends {
		return 0
	}
	return c.published[numShardCounters+c.listeners*numListenerCounters+int(b)*numBackendCounters+i].Load()
}

// NumListeners and NumBackends give the block counts.
func (c *Counters) NumListeners() int { return c.listeners }

// NumBackends returns the number of backend blocks.
func (c *Counters) NumBackends() int { return c.backends }
