package tcpfwd

import "sync/atomic"

// Stats is a snapshot of a [Server]'s counters, for the caller to export.
// Every field but Active only grows.
type Stats struct {
	Accepted     uint64 // client connections accepted, refused ones included
	Active       uint64 // client connections being served now (dialling included)
	Refused      uint64 // closed at once: the picker said no, or MaxConns was reached
	DialFailures uint64 // backend dials that failed or timed out
	Queries      uint64 // whole messages relayed client → backend
	Answers      uint64 // whole messages relayed backend → client
	IdleTimeouts uint64 // connections closed for want of a message within IdleTimeout
	Malformed    uint64 // connections closed for a zero-length message or a stream ending inside one
}

// counters are the live, atomic form of [Stats].
type counters struct {
	accepted     atomic.Uint64
	active       atomic.Int64
	refused      atomic.Uint64
	dialFailures atomic.Uint64
	queries      atomic.Uint64
	answers      atomic.Uint64
	idleTimeouts atomic.Uint64
	malformed    atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Accepted:     c.accepted.Load(),
		Active:       uint64(max(c.active.Load(), 0)),
		Refused:      c.refused.Load(),
		DialFailures: c.dialFailures.Load(),
		Queries:      c.queries.Load(),
		Answers:      c.answers.Load(),
		IdleTimeouts: c.idleTimeouts.Load(),
		Malformed:    c.malformed.Load(),
	}
}
