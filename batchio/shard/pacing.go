package shard

import "github.com/fastudp/fastudp/core"

// newFlowBudget bounds the new flows a shard resolves per loop iteration. A
// new flow costs an upstream socket (socket, bind, connect, setsockopt,
// epoll_ctl: ~30 µs here, 30 times a forwarded datagram), so a burst of new
// clients, such as a flood from ever-new sources while max_flows still has
// room, could keep the loop away from its upstream sockets and from the
// established clients' datagrams queued behind the burst for tens of
// milliseconds (512 new flows read in one wake-up: ~15 ms). Past the
// budget, a flow's backend is picked at once (the pick may read the first
// datagram, which is only borrowed) but its answer to the core, and so its
// upstream socket, waits in a FIFO (its first datagrams held by the core,
// up to pending_limit) and is given, budget by budget, in the following
// iterations, which read the listeners and upstream sockets in between. 32
// flows is about 1 ms of socket set-up per iteration.
const newFlowBudget = 32

// pacing is a shard's new-flow pacing state: the resolutions done in
// the current loop iteration and the flows waiting for one.
type pacing struct {
	used    int
	waiting []waitingFlow // FIFO from head
	head    int
}

// waitingFlow is a new flow whose backend was picked but not yet given to
// the core.
type waitingFlow struct {
	flow    core.FlowID
	backend core.Backend
}

// pending reports whether flows are waiting for a backend.
func (a *pacing) pending() bool { return a.head < len(a.waiting) }

// deferResolved takes a new flow's picked backend: it returns false when
// the core may be told now (counting it against the budget), and true when
// the answer was queued for a later iteration.
func (s *Shard) deferResolved(flow core.FlowID, b core.Backend) bool {
	a := &s.admit
	if !a.pending() && a.used < newFlowBudget {
		a.used++
		return false
	}
	a.waiting = append(a.waiting, waitingFlow{flow: flow, backend: b})
	s.counters.addShard(ShardFlowsDeferred, 1)
	return true
}

// resolveWaiting starts a loop iteration's budget over and resolves up to
// a budget of waiting flows, in order, through the core.
func (s *Shard) resolveWaiting(now core.Time) { s.resolveUpTo(now, newFlowBudget) }

// resolveAllWaiting resolves every waiting flow at once, whatever the
// budget: a shard handing its flows over to another process must not
// export flows still waiting for an answer only it holds.
func (s *Shard) resolveAllWaiting(now core.Time) { s.resolveUpTo(now, len(s.admit.waiting)) }

func (s *Shard) resolveUpTo(now core.Time, limit int) {
	a := &s.admit
	a.used = 0
	if !a.pending() {
		return
	}
	for a.pending() && a.used < limit {
		w := a.waiting[a.head]
		a.head++
		a.used++
		s.inputs = append(s.inputs, core.Resolved(w.flow, w.backend))
	}
	if !a.pending() {
		a.waiting, a.head = a.waiting[:0], 0
	} else if a.head >= 1024 && a.head*2 >= len(a.waiting) {
		// Slide the rest to the front so the queue does not grow without
		// bound while it never empties.
		n := copy(a.waiting, a.waiting[a.head:])
		a.waiting, a.head = a.waiting[:n], 0
	}
	s.process(now)
}
