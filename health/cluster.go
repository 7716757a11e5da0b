package health

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fastudp/fastudp/balance"
)

// View is what the data path needs to pick a backend for a new flow: a table
// and the set of its backends that may receive new flows. A View is immutable;
// a cluster publishes a new one (copy on write) whenever the set or the table
// changes, so a reader that loaded a View sees a table and a set that belong
// together.
type View struct {
	// Table is the cluster's current table.
	Table *balance.Table
	// Usable holds the indices (into Table) of the backends that may
	// receive new flows: up and not draining, or, while FailingOpen, every
	// backend that is not draining. nil means every backend, which keeps
	// Maglev's O(1) path in [balance.Table.LookupAvailable]. An empty set
	// (every backend draining, or all down without fail-open) makes every
	// lookup fail: the caller drops the new flow.
	Usable *balance.Set
	// Serving holds the indices of the backends that can still serve the
	// connections they have: up, draining or not (every backend while
	// FailingOpen). A QUIC-LB server ID names such a connection's backend.
	// nil means every backend.
	Serving *balance.Set
	// FailingOpen reports that no backend is up and the cluster fails open.
	FailingOpen bool
	// Gen numbers the cluster's views from 1, in publication order.
	Gen uint64
}

// Pick returns the backend for affinity key among the usable ones; it
// allocates nothing and takes no lock.
func (v *View) Pick(key uint64) (balance.Backend, bool) {
	return v.Table.LookupAvailable(key, v.Usable)
}

// IsUsable reports whether new flows may go to the backend at addr: whether it
// is in the table and the usable set. A shard that closes flows pinned to a
// backend that went down can ask it at a flow's next datagram. It allocates
// nothing; it costs a binary search of the table.
func (v *View) IsUsable(addr netip.AddrPort) bool {
	i, ok := v.Table.IndexOf(addr)
	return ok && (v.Usable == nil || v.Usable.Has(i))
}

// Cluster is the health state of the backends of one cluster. Get it from
// [Monitor.AddCluster]. Its methods are safe for concurrent use; [Cluster.View],
// [Cluster.Usable] and [Cluster.Pick] are a single atomic load, for the data
// path.
type Cluster struct {
	m        *Monitor
	name     string
	probe    ProbeConfig   // defaults applied
	passive  PassiveConfig // defaults applied
	failOpen bool
	prober   prober // nil for KindNone

	view atomic.Pointer[View]

	// mu guards the fields below and every backend's fields.
	mu          sync.Mutex
	table       *balance.Table
	backends    []*backend // by index in table
	failingOpen bool
	gen         uint64
	stopPassive func()
	removed     bool
	registered  bool      // in the monitor: OnChange calls begin
	logs        []logLine // emitted by unlock
}

// Name returns the name the cluster was added under.
func (c *Cluster) Name() string { return c.name }

// View returns the current view; never nil.
func (c *Cluster) View() *View { return c.view.Load() }

// Usable returns the current set of usable backends, indices into the table
// of the same View: nil means all. When the table can change
// ([Cluster.SetTable]), use [Cluster.View] to get the table and set as a pair.
func (c *Cluster) Usable() *balance.Set { return c.view.Load().Usable }

// Pick returns the backend for affinity key in the current view. It
// allocates nothing and takes no lock.
func (c *Cluster) Pick(key uint64) (balance.Backend, bool) { return c.view.Load().Pick(key) }

// SetTable replaces the cluster's table (backends added, removed or
// reweighted). Backends present in both tables, by address, keep their
// health, draining flag, counters and running probe; new ones start as a new
// cluster's do (up unless [ProbeConfig.StartDown]); removed ones stop being
// probed. The new table and its usable set are published together. It
// returns an error wrapping [ErrNoTable], or [ErrUnknownCluster] once the
// cluster was removed from its monitor.
func (c *Cluster) SetTable(t *balance.Table) error {
	if t == nil {
		return fmt.Errorf("health: cluster %q: %w", c.name, ErrNoTable)
	}
	c.mu.Lock()
	if c.removed {
		c.unlock()
		return fmt.Errorf("health: cluster %q: %w", c.name, ErrUnknownCluster)
	}
	c.setTableLocked(t)
	c.startLocked()
	c.unlock()
	return nil
}

func (c *Cluster) setTableLocked(t *balance.Table) {
	now := time.Now()
	nb := make([]*backend, t.Len())
	kept := make([]bool, len(c.backends))
	for i := range nb {
		addr := t.Backend(i).Addr
		if c.table != nil {
			if j, ok := c.table.IndexOf(addr); ok {
				b := c.backends[j]
				nb[i] = b
				kept[j] = true
				continue
			}
		}
		nb[i] = &backend{addr: addr, healthy: !c.probe.StartDown, since: now, reason: "added"}
	}
	for j, b := range c.backends {
		if !kept[j] {
			b.removed = true
			if b.stop != nil {
				b.stop()
			}
		}
	}
	c.table, c.backends = t, nb
	c.publishLocked()
}

// SetDraining marks the backend at addr as draining (on) or not. A draining
// backend gets no new flow, keeps its live flows (which this package never
// touches), is still probed, and is never counted as down. It returns an
// error wrapping [ErrUnknownBackend] when addr is not in the table.
func (c *Cluster) SetDraining(addr netip.AddrPort, on bool) error {
	c.mu.Lock()
	defer c.unlock()
	b, err := c.backendLocked(addr)
	if err != nil {
		return err
	}
	if b.draining == on {
		return nil
	}
	from := b.state()
	b.draining = on
	reason := "undrained by the control plane"
	if on {
		reason = "drained by the control plane"
	}
	c.changedLocked(b, from, reason)
	c.publishLocked()
	return nil
}

// ReportPassive gives the data path's cumulative counts for the backend at
// addr: failures (DNS queries that timed out, ECONNREFUSED, flows that timed
// out without a reply) and successes (answers), since the backend joined the
// cluster or any earlier point. Counts from several shards must be summed by
// the caller. A count lower than the previous report is taken as a restart of
// the counter from zero. Call it at least once per passive interval; it is
// ignored when passive health is off. It returns an error wrapping
// [ErrUnknownBackend] when addr is not in the table.
func (c *Cluster) ReportPassive(addr netip.AddrPort, failures, successes uint64) error {
	c.mu.Lock()
	defer c.unlock()
	b, err := c.backendLocked(addr)
	if err != nil {
		return err
	}
	b.reportedFail, b.reportedOK = failures, successes
	return nil
}

// AddPassive is ReportPassive for a reporter that counts increments rather
// than totals: it adds failures and successes to the backend's counts. Use
// one of the two per cluster, not both.
func (c *Cluster) AddPassive(addr netip.AddrPort, failures, successes uint64) error {
	c.mu.Lock()
	defer c.unlock()
	b, err := c.backendLocked(addr)
	if err != nil {
		return err
	}
	b.reportedFail += failures
	b.reportedOK += successes
	return nil
}

func (c *Cluster) backendLocked(addr netip.AddrPort) (*backend, error) {
	i, ok := c.table.IndexOf(addr)
	if !ok {
		return nil, fmt.Errorf("health: cluster %q: backend %v: %w", c.name, addr, ErrUnknownBackend)
	}
	return c.backends[i], nil
}

// start starts the cluster's goroutines if the monitor runs.
func (c *Cluster) start() {
	c.mu.Lock()
	c.startLocked()
	c.unlock()
}

// startLocked starts the goroutines that are not running yet: a prober per
// backend and the passive evaluation. It does nothing on a stopped monitor.
func (c *Cluster) startLocked() {
	if c.removed {
		return
	}
	if c.prober != nil {
		for _, b := range c.backends {
			if b.stop == nil {
				b.stop = c.m.spawn(func(ctx context.Context) { c.probeLoop(ctx, b) })
			}
		}
	}
	if c.passive.Enabled && c.stopPassive == nil {
		c.stopPassive = c.m.spawn(c.passiveLoop)
	}
}

// stopAll stops the cluster's goroutines for good.
func (c *Cluster) stopAll() {
	c.mu.Lock()
	defer c.unlock()
	c.removed = true
	for _, b := range c.backends {
		if b.stop != nil {
			b.stop()
		}
	}
	if c.stopPassive != nil {
		c.stopPassive()
	}
}

// probeLoop probes b every interval until ctx ends. Probes run one after the
// other: a probe slower than the interval delays the next one (a skipped
// beat), never overlaps it.
func (c *Cluster) probeLoop(ctx context.Context, b *backend) {
	t := time.NewTicker(c.probe.Interval)
	defer t.Stop()
	target := b.addr
	if c.probe.Port != 0 {
		target = netip.AddrPortFrom(target.Addr(), c.probe.Port)
	}
	for {
		buf := c.m.bufs.Get().(*[]byte)
		pctx, cancel := context.WithTimeout(ctx, c.probe.Timeout)
		err := c.prober.probe(pctx, target, *buf)
		cancel()
		c.m.bufs.Put(buf)
		if ctx.Err() != nil {
			return
		}
		c.probeResult(b, err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *Cluster) probeResult(b *backend, err error) {
	c.mu.Lock()
	defer c.unlock()
	if b.removed {
		return
	}
	from := b.state()
	if tr := b.probeResultLocked(&c.probe, err, time.Now()); tr.changed {
		c.changedLocked(b, from, tr.reason)
		c.publishLocked()
	}
}

// passiveLoop evaluates a passive window every passive interval.
func (c *Cluster) passiveLoop(ctx context.Context) {
	t := time.NewTicker(c.passive.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.passiveWindow(now)
		}
	}
}

func (c *Cluster) passiveWindow(now time.Time) {
	c.mu.Lock()
	defer c.unlock()
	changed := false
	for _, b := range c.backends {
		from := b.state()
		if tr := b.passiveWindowLocked(&c.probe, &c.passive, c.prober != nil, now); tr.changed {
			c.changedLocked(b, from, tr.reason)
			changed = true
		}
	}
	if changed {
		c.publishLocked()
	}
}

// changedLocked records a change of b's state (health or draining) for the
// log.
func (c *Cluster) changedLocked(b *backend, from State, reason string) {
	b.reason = reason
	to := b.state()
	if from == to { // a health change behind draining: log the health
		from, to = Up, Down
		if b.healthy {
			from, to = Down, Up
		}
		c.logf(slog.LevelInfo, "draining backend health changed", b, from, to, reason)
		return
	}
	c.logf(slog.LevelInfo, "backend state changed", b, from, to, reason)
}

// publishLocked computes the usable set and publishes a new View when it
// differs from the current one.
func (c *Cluster) publishLocked() {
	n := len(c.backends)
	usable := balance.NewSet(n)
	up, live := 0, 0
	for i, b := range c.backends {
		if b.draining {
			continue
		}
		live++
		if b.healthy {
			usable.Add(i)
			up++
		}
	}
	failingOpen := up == 0 && live > 0 && c.failOpen
	if failingOpen {
		for i, b := range c.backends {
			if !b.draining {
				usable.Add(i)
			}
		}
		up = live
	}
	if up == n {
		usable = nil
	}
	serving := servingSet(c.backends, failingOpen)
	old := c.view.Load()
	if old != nil && old.Table == c.table && old.FailingOpen == failingOpen && sameSet(old.Usable, usable, n) && sameSet(old.Serving, serving, n) {
		return
	}
	if failingOpen != c.failingOpen {
		c.failingOpen = failingOpen
		if failingOpen {
			c.logs = append(c.logs, logLine{level: slog.LevelWarn, msg: "no backend up: failing open to every non-draining backend",
				attrs: []slog.Attr{slog.String("cluster", c.name), slog.Int("backends", live)}})
		} else {
			c.logs = append(c.logs, logLine{level: slog.LevelInfo, msg: "backend up again: fail-open ends",
				attrs: []slog.Attr{slog.String("cluster", c.name)}})
		}
	}
	c.gen++
	v := &View{Table: c.table, Usable: usable, Serving: serving, FailingOpen: failingOpen, Gen: c.gen}
	c.view.Store(v)
	if c.m.onChange != nil && c.registered {
		c.m.onChange(c, v)
	}
}

// servingSet returns the set of backends up, draining or not (nil for all;
// all while failing open).
func servingSet(backends []*backend, failingOpen bool) *balance.Set {
	if failingOpen {
		return nil
	}
	s, n := balance.NewSet(len(backends)), 0
	for i, b := range backends {
		if b.healthy {
			s.Add(i)
			n++
		}
	}
	if n == len(backends) {
		return nil
	}
	return s
}

// IsServing reports whether the backend at addr is in the table and can
// serve the connections it has (see [View.Serving]). It allocates nothing.
func (v *View) IsServing(addr netip.AddrPort) bool {
	i, ok := v.Table.IndexOf(addr)
	return ok && (v.Serving == nil || v.Serving.Has(i))
}

// sameSet reports whether a and b (nil meaning all) hold the same indices
// below n.
func sameSet(a, b *balance.Set, n int) bool {
	for i := range n {
		if (a == nil || a.Has(i)) != (b == nil || b.Has(i)) {
			return false
		}
	}
	return true
}

// logLine is a log record queued under the lock and emitted after it.
type logLine struct {
	level slog.Level
	msg   string
	attrs []slog.Attr
}

func (c *Cluster) logf(level slog.Level, msg string, b *backend, from, to State, reason string) {
	c.logs = append(c.logs, logLine{level: level, msg: msg, attrs: []slog.Attr{
		slog.String("cluster", c.name),
		slog.String("backend", b.addr.String()),
		slog.String("from", from.String()),
		slog.String("to", to.String()),
		slog.String("reason", reason),
	}})
}

// unlock releases mu and then emits the log lines queued under it.
func (c *Cluster) unlock() {
	logs := c.logs
	c.logs = nil
	c.mu.Unlock()
	for _, l := range logs {
		c.m.log.LogAttrs(context.Background(), l.level, l.msg, l.attrs...)
	}
}
