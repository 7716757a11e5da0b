package shard

import (
	"sync/atomic"

	"github.com/fastudp/fastudp/core"
)

// Counter indexes. A shard's counters are one flat array: shard-wide counters,
// then one block per listener, then one block per backend. The shard is the
// only writer of its local copy and publishes it (atomic stores) at most once
// per loop iteration, so nothing shared is written per datagram.
const (
	// Shard-wide.
	ShardRxDatagrams    = iota // datagrams read from listener sockets
	ShardBatches               // recvmmsg calls on listeners that returned data
	ShardBatchDatagrams        // datagrams those calls returned (fill = this / batches)
	ShardLoops                 // event-loop iterations
	ShardControl               // control messages applied
	ShardGRORuns               // UDP_GRO receives (listener and upstream) holding more than one datagram
	ShardGROSegments           // datagrams in those runs
	ShardGSOSends              // UDP_SEGMENT sends of more than one datagram that the kernel took
	ShardGSOSegments           // datagrams in those sends (÷ ShardGSOSends = segments per send)
	ShardGSOFallbacks          // sockets whose GSO send the kernel refused (EIO/EINVAL/EMSGSIZE): GSO turned off there
	ShardSplitDrops            // datagrams of a split run lost when a non-GSO resend stopped part way
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
	ListenerDropBase    // + core.DropReason: core drops by reason (segments)
	numListenerCounters = ListenerDropBase + core.NumDropReasons
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
	numBackendCounters
)

// Counters holds one shard's counters: a local array written only by the
// shard, and its published copy read by metrics exporters.
type Counters struct {
	listeners, backends int
	local               []uint64
	published           []atomic.Uint64
	dirty               bool
}

func newCounters(listeners, backends int) *Counters {
	n := numShardCounters + listeners*numListenerCounters + backends*numBackendCounters
	return &Counters{listeners: listeners, backends: backends, local: make([]uint64, n), published: make([]atomic.Uint64, n)}
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
		c.local[numShardCounters+c.listeners*numListenerCounters+int(b)*numBackendCounters+i] += v
		c.dirty = true
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
	for i, v := range c.local {
		c.published[i].Store(v)
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
