package core

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"time"
)

// Per-source admission limits.
//
// A source is a client address cut to a prefix (/32 and /128 by default). Each
// source gets a token bucket of [AdmissionConfig.Burst] new flows refilled at
// one per [AdmissionConfig.Interval], kept as a GCRA "theoretical arrival
// time" (one timestamp per source, exact in integer nanoseconds): a new flow
// conforms when tat - now <= (Burst-1) × Interval, and then moves tat to
// max(tat, now) + Interval. A refused flow changes nothing.
//
// The sources live in a fixed table of TableSize entries, allocated when the
// limit is configured and never grown: a flood of ever-new sources costs no
// memory and no allocation. The table is 4-way set associative; a set is
// chosen by a keyed hash of the source, and a source not in its set replaces
// the entry with the earliest tat. An entry whose tat is not after now is a
// full bucket, the same as no entry, so evicting it loses nothing; only when
// all four entries of a set are still refilling does an eviction forget a
// source's debt (counted in [Stats].SourceEvictions: a table too small for
// the sources in play).

// Defaults and limits of [AdmissionConfig].
const (
	DefaultAdmissionTableSize = 16384
	MinAdmissionTableSize     = 64
	MaxAdmissionTableSize     = 1 << 22
	MaxAdmissionBurst         = 1 << 20
	admissionWays             = 4
)

// AdmissionConfig limits how fast one source may open new flows on a manager.
// The zero value turns the limit off.
type AdmissionConfig struct {
	// Interval is the time a source's bucket takes to regain one new flow
	// (1 / rate); 0 turns the limit off.
	Interval time.Duration
	// Burst is how many new flows a source with a full bucket may open at
	// once; values below 1 mean 1.
	Burst int
	// PrefixV4 and PrefixV6 are how many leading bits of a client address
	// name its source (IPv4-mapped IPv6 addresses count as IPv4); 0 means
	// 32 and 128.
	PrefixV4, PrefixV6 int
	// TableSize is the number of sources tracked, rounded up to a power of
	// two; 0 means [DefaultAdmissionTableSize].
	TableSize int
}

// Validate reports the first invalid field of c.
func (c *AdmissionConfig) Validate() error {
	switch {
	case c.Interval < 0:
		return fmt.Errorf("admission interval %v: must not be negative", c.Interval)
	case c.Burst < 0 || c.Burst > MaxAdmissionBurst:
		return fmt.Errorf("admission burst %d outside 0..%d", c.Burst, MaxAdmissionBurst)
	case c.PrefixV4 < 0 || c.PrefixV4 > 32:
		return fmt.Errorf("admission IPv4 prefix /%d outside 0..32", c.PrefixV4)
	case c.PrefixV6 < 0 || c.PrefixV6 > 128:
		return fmt.Errorf("admission IPv6 prefix /%d outside 0..128", c.PrefixV6)
	case c.TableSize != 0 && (c.TableSize < MinAdmissionTableSize || c.TableSize > MaxAdmissionTableSize):
		return fmt.Errorf("admission table size %d outside %d..%d", c.TableSize, MinAdmissionTableSize, MaxAdmissionTableSize)
	}
	return nil
}

// normalized fills in defaults and clamps what Validate would refuse, so a bad
// config event can never make the table unbounded or the arithmetic overflow.
func (c AdmissionConfig) normalized() AdmissionConfig {
	if c.Interval <= 0 {
		return AdmissionConfig{}
	}
	c.Burst = min(max(c.Burst, 1), MaxAdmissionBurst)
	if c.PrefixV4 <= 0 || c.PrefixV4 > 32 {
		c.PrefixV4 = 32
	}
	if c.PrefixV6 <= 0 || c.PrefixV6 > 128 {
		c.PrefixV6 = 128
	}
	if c.TableSize == 0 {
		c.TableSize = DefaultAdmissionTableSize
	}
	c.TableSize = min(max(c.TableSize, MinAdmissionTableSize), MaxAdmissionTableSize)
	c.TableSize = 1 << bits.Len(uint(c.TableSize-1)) // power of two
	return c
}

// sourceEntry is one tracked source: its masked address and its GCRA
// theoretical arrival time. An entry never used has tat 0, a full bucket.
type sourceEntry struct {
	hi, lo uint64
	tat    Time
}

// admission is the manager's per-source limiter.
type admission struct {
	cfg      AdmissionConfig // normalized; Interval 0 = off
	interval Time
	tau      Time // (Burst-1) × Interval, saturated
	v4Mask   uint64
	v6Hi     uint64
	v6Lo     uint64
	k0, k1   uint64 // hash keys
	setMask  uint64
	entries  []sourceEntry
	// evictions counts sources forgotten while their bucket was refilling.
	evictions uint64
}

// configure applies c (normalized here). The table is reallocated only when
// its size changes; otherwise the sources' state carries over.
func (a *admission) configure(c AdmissionConfig, seed uint64) {
	c = c.normalized()
	a.cfg = c
	if c.Interval == 0 {
		a.entries, a.interval, a.tau = nil, 0, 0
		return
	}
	a.interval = Time(c.Interval)
	if b := Time(c.Burst - 1); b > 0 && a.interval > Never/b {
		a.tau = Never
	} else {
		a.tau = b * a.interval
	}
	a.v4Mask = ^uint64(0) << (32 - c.PrefixV4) & 0xffffffff
	a.v6Hi, a.v6Lo = prefixMask(c.PrefixV6)
	x := seed ^ 0xbb67ae8584caa73b
	a.k0 = splitmix64(x+0x9e3779b97f4a7c15) | 1
	a.k1 = splitmix64(a.k0+0x9e3779b97f4a7c15) | 1
	if len(a.entries) != c.TableSize {
		a.entries = make([]sourceEntry, c.TableSize)
	}
	a.setMask = uint64(c.TableSize/admissionWays - 1)
}

// prefixMask returns the 128-bit mask of an IPv6 prefix of n bits as two
// big-endian halves.
func prefixMask(n int) (hi, lo uint64) {
	switch {
	case n >= 128:
		return ^uint64(0), ^uint64(0)
	case n > 64:
		return ^uint64(0), ^uint64(0) << (128 - n)
	case n == 64:
		return ^uint64(0), 0
	case n > 0:
		return ^uint64(0) << (64 - n), 0
	}
	return 0, 0
}

// SourceEvictions returns how many sources the admission table forgot while
// their bucket was still refilling (also in [Stats]), without copying Stats.
func (m *Manager) SourceEvictions() uint64 { return m.sources.evictions }

// on reports whether the limit is configured.
func (a *admission) on() bool { return a.interval != 0 }

// source returns the masked source of client address c.
func (a *admission) source(c *addr) (hi, lo uint64) {
	hi = binary.BigEndian.Uint64(c.ip[:8])
	lo = binary.BigEndian.Uint64(c.ip[8:])
	if hi == 0 && lo>>32 == 0xffff {
		return 0, 0xffff<<32 | lo&a.v4Mask
	}
	return hi & a.v6Hi, lo & a.v6Lo
}

// allow reports whether the source of client c may open a new flow at now,
// and if so takes one token from its bucket.
func (a *admission) allow(now Time, c *addr) bool {
	hi, lo := a.source(c)
	set := int(mum(hi^a.k0, lo^a.k1)&a.setMask) * admissionWays
	ways := a.entries[set : set+admissionWays : set+admissionWays]
	e := &ways[0]
	for i := range ways {
		w := &ways[i]
		if w.hi == hi && w.lo == lo {
			e = w
			goto found
		}
		if w.tat < e.tat {
			e = w
		}
	}
	if e.tat > now {
		a.evictions++
	}
	*e = sourceEntry{hi: hi, lo: lo}
found:
	t := max(e.tat, now)
	if t-now > a.tau {
		return false
	}
	e.tat = t.Add(time.Duration(a.interval))
	return true
}

// check verifies the limiter's shape: off with no table, or a power-of-two
// table of the configured size whose set mask covers it exactly.
func (a *admission) check() error {
	switch {
	case !a.on() && a.entries != nil:
		return fmt.Errorf("admission: off with a table of %d entries", len(a.entries))
	case !a.on():
		return nil
	case len(a.entries) != a.cfg.TableSize || bits.OnesCount(uint(len(a.entries))) != 1 ||
		len(a.entries) < MinAdmissionTableSize || len(a.entries) > MaxAdmissionTableSize:
		return fmt.Errorf("admission: table of %d entries, configured %d", len(a.entries), a.cfg.TableSize)
	case int(a.setMask+1)*admissionWays != len(a.entries):
		return fmt.Errorf("admission: set mask %#x for %d entries", a.setMask, len(a.entries))
	case a.tau < 0:
		return fmt.Errorf("admission: tolerance %d", a.tau)
	}
	return nil
}
