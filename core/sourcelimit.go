package core

import "net/netip"

// SourceLimiter is the per-source new-flow limit of [AdmissionConfig] on its
// own, for a shell path that admits work without a [Manager] (DNS-mode
// queries, each of which counts as one new flow of its source). It runs the
// same GCRA buckets in the same fixed table as the manager's limiter, and like
// the core it is pure: the caller passes the time, and Allow allocates
// nothing. The zero value is off and allows everything. Not safe for
// concurrent use.
type SourceLimiter struct {
	a admission
}

// Configure applies c (normalized as the manager does: a zero Interval turns
// the limit off); seed keys the table's hash and should be secret. The table
// is reallocated only when its size changes; otherwise the sources' buckets
// carry over.
func (l *SourceLimiter) Configure(c AdmissionConfig, seed uint64) {
	l.a.configure(c, seed)
}

// On reports whether a limit is configured.
func (l *SourceLimiter) On() bool { return l.a.on() }

// Allow reports whether src's source may start one more new flow at now,
// and if so takes one token from its bucket. It always allows when the limit
// is off.
func (l *SourceLimiter) Allow(now Time, src netip.AddrPort) bool {
	if !l.a.on() {
		return true
	}
	var c addr
	c.set(src)
	return l.a.allow(now, &c)
}

// Evictions returns how many sources the table forgot while their bucket was
// still refilling (a table too small for the sources in play).
func (l *SourceLimiter) Evictions() uint64 { return l.a.evictions }
