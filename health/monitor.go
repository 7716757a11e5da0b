package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/fastudp/fastudp/balance"
)

// Errors returned by [Monitor] and [Cluster] methods, wrapped with the name or
// address concerned; test with errors.Is.
var (
	ErrUnknownCluster   = errors.New("unknown cluster")
	ErrDuplicateCluster = errors.New("duplicate cluster")
	ErrUnknownBackend   = errors.New("unknown backend")
	ErrNoTable          = errors.New("nil table")
	ErrStarted          = errors.New("monitor already started")
)

// Options configure a [Monitor].
type Options struct {
	// Logger receives one line per state change and per change of a
	// cluster's fail-open state; nil means slog.Default().
	Logger *slog.Logger
	// OnChange, when not nil, is called with each new [View] of a cluster
	// right after the cluster publishes it, in publication order, with the
	// cluster's lock held: it must not block or call back into the Cluster
	// or the Monitor. It suits handing the view to shards by message; shards
	// that read [Cluster.View] themselves do not need it.
	OnChange func(c *Cluster, v *View)
}

// Monitor checks the health of the backends of a set of clusters and
// publishes, per cluster, which backends may receive new flows. Create it
// with [NewMonitor], add clusters with [Monitor.AddCluster] (before or after
// [Monitor.Start]) and stop it with [Monitor.Close] or by cancelling Start's
// context. Its methods are safe for concurrent use.
type Monitor struct {
	log      *slog.Logger
	onChange func(*Cluster, *View)

	// mu guards clusters and order. It is taken before any Cluster's mu.
	mu       sync.Mutex
	clusters map[string]*Cluster
	order    []*Cluster // in the order they were added

	// run guards the goroutine lifecycle; it is taken after a Cluster's mu,
	// never before.
	run struct {
		sync.Mutex
		ctx     context.Context // nil until Start
		cancel  context.CancelFunc
		started bool
		closed  bool
	}
	wg sync.WaitGroup // every goroutine the monitor started

	// bufs holds *[]byte reply buffers of maxReply bytes, shared by the
	// probes (a buffer per goroutine would pin 64 KiB per backend).
	bufs sync.Pool
}

// NewMonitor returns a monitor with no clusters; it runs no goroutine until
// [Monitor.Start].
func NewMonitor(o Options) *Monitor {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	m := &Monitor{log: log, onChange: o.OnChange, clusters: make(map[string]*Cluster)}
	m.bufs.New = func() any {
		b := make([]byte, maxReply)
		return &b
	}
	return m
}

// AddCluster starts watching the backends of table under name and returns the
// cluster, whose [Cluster.View] is at once usable by the data path. probe and
// passive are validated and take defaults for zero fields. failOpen makes the
// cluster send new flows to every non-draining backend when none is up
// (better than dropping them all); the data path needs nothing special for
// it, the published [View] already holds those backends.
//
// It returns an error wrapping [ErrInvalidConfig], [ErrNoTable] or
// [ErrDuplicateCluster]. On a started monitor the cluster's probes start at
// once.
func (m *Monitor) AddCluster(name string, table *balance.Table, probe ProbeConfig, passive PassiveConfig, failOpen bool) (*Cluster, error) {
	if table == nil {
		return nil, fmt.Errorf("health: cluster %q: %w", name, ErrNoTable)
	}
	if err := probe.Validate(); err != nil {
		return nil, fmt.Errorf("health: cluster %q: %w", name, err)
	}
	if err := passive.Validate(); err != nil {
		return nil, fmt.Errorf("health: cluster %q: %w", name, err)
	}
	probe = probe.withDefaults()
	pr, err := newProber(&probe)
	if err != nil {
		return nil, fmt.Errorf("health: cluster %q: %w", name, err)
	}
	if probe.Kind == KindNone {
		probe.StartDown = false // nothing but passive cooldown would bring them up
	}
	c := &Cluster{
		m:        m,
		name:     name,
		probe:    probe,
		passive:  passive.withDefaults(probe),
		failOpen: failOpen,
		prober:   pr,
	}
	c.mu.Lock()
	c.setTableLocked(table)
	c.mu.Unlock()

	m.mu.Lock()
	if _, ok := m.clusters[name]; ok {
		m.mu.Unlock()
		return nil, fmt.Errorf("health: cluster %q: %w", name, ErrDuplicateCluster)
	}
	m.clusters[name] = c
	m.order = append(m.order, c)
	m.mu.Unlock()

	c.mu.Lock()
	c.registered = true
	if m.onChange != nil {
		m.onChange(c, c.view.Load())
	}
	c.startLocked()
	c.unlock()
	return c, nil
}

// Cluster returns the cluster added under name.
func (m *Monitor) Cluster(name string) (*Cluster, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.clusters[name]
	return c, ok
}

// RemoveCluster stops watching the cluster called name and stops its probes.
// Views already published stay valid. It returns an error wrapping
// [ErrUnknownCluster].
func (m *Monitor) RemoveCluster(name string) error {
	m.mu.Lock()
	c, ok := m.clusters[name]
	if ok {
		delete(m.clusters, name)
		for i, o := range m.order {
			if o == c {
				m.order = append(m.order[:i], m.order[i+1:]...)
				break
			}
		}
	}
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("health: cluster %q: %w", name, ErrUnknownCluster)
	}
	c.stopAll()
	return nil
}

// SetDraining marks the backend at addr of the named cluster as draining (on)
// or not. See [Cluster.SetDraining].
func (m *Monitor) SetDraining(cluster string, addr netip.AddrPort, on bool) error {
	c, ok := m.Cluster(cluster)
	if !ok {
		return fmt.Errorf("health: cluster %q: %w", cluster, ErrUnknownCluster)
	}
	return c.SetDraining(addr, on)
}

// Start starts the probes (one goroutine per probed backend) and the passive
// evaluation (one goroutine per cluster with passive health) of every
// cluster, present and future, and returns. They stop when ctx is cancelled
// or at [Monitor.Close]. It returns an error wrapping [ErrStarted] when
// called twice, or after Close.
func (m *Monitor) Start(ctx context.Context) error {
	m.run.Lock()
	if m.run.started || m.run.closed {
		m.run.Unlock()
		return fmt.Errorf("health: %w", ErrStarted)
	}
	m.run.started = true
	m.run.ctx, m.run.cancel = context.WithCancel(ctx)
	m.run.Unlock()

	m.mu.Lock()
	cs := append([]*Cluster(nil), m.order...)
	m.mu.Unlock()
	for _, c := range cs {
		c.start()
	}
	return nil
}

// Close stops every probe and waits for the monitor's goroutines to exit.
// Published views stay valid and keep their last value. It is idempotent.
func (m *Monitor) Close() {
	m.run.Lock()
	m.run.closed = true
	if m.run.cancel != nil {
		m.run.cancel()
	}
	m.run.Unlock()
	m.wg.Wait()
}

// spawn runs f in a goroutine with a context that ends when the monitor stops
// or when the returned stop is called. It returns nil, starting nothing, when
// the monitor is not running.
func (m *Monitor) spawn(f func(ctx context.Context)) (stop func()) {
	m.run.Lock()
	defer m.run.Unlock()
	if !m.run.started || m.run.closed || m.run.ctx.Err() != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(m.run.ctx)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		f(ctx)
	}()
	return cancel
}

// Snapshot returns the status of every cluster, in the order they were added.
func (m *Monitor) Snapshot() []ClusterStatus {
	m.mu.Lock()
	cs := append([]*Cluster(nil), m.order...)
	m.mu.Unlock()
	out := make([]ClusterStatus, len(cs))
	for i, c := range cs {
		out[i] = c.Status()
	}
	return out
}
