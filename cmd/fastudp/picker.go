package main

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/fastudp/fastudp/balance"
	"github.com/fastudp/fastudp/batchio/shard"
	"github.com/fastudp/fastudp/config"
	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/health"
)

// spareBackendIDs is how many backends can be added at run time beyond those
// configured at start. Each ID costs its counters (about 600 bytes per
// shard) but nothing per datagram until it is used.
const spareBackendIDs = 1024

// Errors of the backend registry, for the control API to classify.
var (
	errNotFound = errors.New("not found")
	errInvalid  = errors.New("invalid")
	errConflict = errors.New("conflict")
)

// clusterPicker chooses backends for new flows and DNS queries: per
// cluster, the health monitor's current view (an immutable balance table and
// the set of its usable backends), read with one atomic load. Shards share
// it; nothing on the pick path locks or allocates.
//
// It is also the registry of backends: adding, removing or reweighting one
// builds the cluster's new table off the data path and hands it to the
// health monitor, which publishes it with the backends' states.
type clusterPicker struct {
	clusters []atomic.Pointer[health.Cluster] // by core.ClusterID; nil for a cluster without backends
	// sels[c] is the selector of cluster c's current health view, built on
	// the first pick after the view changes (O(N), off the per-pick path).
	sels []atomic.Pointer[viewSelector]
	// loads[c] reads live load for p2c: flows, or queries in flight in dns
	// mode. shards is set once the shard group exists (nil before: no
	// load, p2c then draws like random).
	loads  []balance.LoadFunc
	shards atomic.Pointer[[]*shard.Shard]
	// capacity bounds BackendIDs (the shards' counters are sized for it).
	capacity int
	seed     uint64
	mon      *health.Monitor

	mu    sync.Mutex // guards the fields below and table changes
	names []string   // cluster names by ClusterID
	lb    []config.LB
	mode  []config.Mode
	// refs[id] is BackendID id; a removed backend keeps its ID (its flows
	// may live on) with removed set.
	refs   []backendRef
	labelV atomic.Pointer[[]shard.BackendLabels]
	// quic is the QUIC-LB routing of clusters with affinity "quic".
	quic quicState
}

// viewSelector ties a selector to the health view it was built for.
type viewSelector struct {
	view *health.View
	sel  *balance.Selector
}

// backendRef is one backend of the registry.
type backendRef struct {
	cluster int
	addr    netip.AddrPort
	name    string
	weight  int
	backup  bool
	removed bool
	// serverID is the backend's QUIC-LB server ID ("" for none).
	serverID string
}

var _ shard.Picker = (*clusterPicker)(nil)

// newClusterPicker builds each cluster's table and registers it with mon,
// which checks its backends as [cluster.health] says.
func newClusterPicker(cfg *config.Config, mon *health.Monitor) (*clusterPicker, error) {
	p := &clusterPicker{
		clusters: make([]atomic.Pointer[health.Cluster], len(cfg.Clusters)),
		sels:     make([]atomic.Pointer[viewSelector], len(cfg.Clusters)),
		seed:     cfg.Seed,
		mon:      mon,
		quic:     newQUICState(cfg),
	}
	flows, queries := balance.LoadFunc(p.liveFlows), balance.LoadFunc(p.dnsInFlight)
	for ci := range cfg.Clusters {
		cl := &cfg.Clusters[ci]
		p.names = append(p.names, cl.Name)
		p.lb = append(p.lb, cl.LB)
		p.mode = append(p.mode, cl.Mode)
		if cl.Mode == config.ModeDNS {
			p.loads = append(p.loads, queries)
		} else {
			p.loads = append(p.loads, flows)
		}
		for _, b := range cl.Backends {
			p.refs = append(p.refs, backendRef{cluster: ci, addr: b.Address, name: b.Name, weight: b.Weight, backup: b.Backup, serverID: b.ServerID})
		}
	}
	p.capacity = len(p.refs) + spareBackendIDs
	for ci := range cfg.Clusters {
		if err := p.addHealth(ci, &cfg.Clusters[ci]); err != nil {
			return nil, err
		}
	}
	p.publishLabels()
	return p, nil
}

// addHealth registers cluster ci with the health monitor under its current
// backends and cl's health settings.
func (p *clusterPicker) addHealth(ci int, cl *config.Cluster) error {
	t, err := p.tableLocked(ci)
	if err != nil || t == nil {
		return err
	}
	probe, passive, err := healthConfig(&cl.Health)
	if err != nil {
		return fmt.Errorf("cluster %q: health: %w", cl.Name, err)
	}
	hc, err := p.mon.AddCluster(cl.Name, t, probe, passive, cl.FailOpen)
	if err != nil {
		return fmt.Errorf("cluster %q: %w", cl.Name, err)
	}
	p.clusters[ci].Store(hc)
	p.publishQUICLocked(ci)
	return nil
}

// tableLocked builds cluster ci's table from its live backends; nil when it
// has none.
func (p *clusterPicker) tableLocked(ci int) (*balance.Table, error) {
	var bs []balance.Backend
	for id, r := range p.refs {
		if r.cluster == ci && !r.removed {
			bs = append(bs, balance.Backend{ID: core.BackendID(id), Addr: r.addr, Weight: uint32(r.weight), Backup: r.backup})
		}
	}
	if len(bs) == 0 {
		return nil, nil
	}
	t, err := balance.New(lbAlgorithm(p.lb[ci]), p.seed, bs, 0)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", p.names[ci], err)
	}
	return t, nil
}

// lbAlgorithm maps the config's lb to the balance package's algorithm.
func lbAlgorithm(lb config.LB) balance.Algorithm {
	switch lb {
	case config.LBHRW:
		return balance.HRW
	case config.LBRR:
		return balance.RoundRobin
	case config.LBRandom:
		return balance.Random
	case config.LBP2C:
		return balance.P2C
	}
	return balance.Maglev
}

// Pick implements shard.Picker: three atomic loads (cluster, view, selector)
// and the policy's pick. It allocates nothing except on the first pick after
// a view change, which builds that view's selector.
func (p *clusterPicker) Pick(cluster core.ClusterID, key uint64) (core.Backend, bool) {
	if int(cluster) >= len(p.clusters) {
		return core.Backend{}, false
	}
	hc := p.clusters[cluster].Load()
	if hc == nil {
		return core.Backend{}, false
	}
	v := hc.View()
	vs := p.sels[cluster].Load()
	if vs == nil || vs.view != v {
		vs = p.newSelector(cluster, v, vs)
	}
	i := vs.sel.Pick(key, p.loads[cluster])
	if i < 0 {
		return core.Backend{}, false
	}
	b := v.Table.Backend(i)
	return core.Backend{ID: b.ID, Addr: b.Addr}, true
}

// newSelector builds and publishes the selector of view v of cluster c,
// continuing old's cursor. Shards racing here each build one; the last
// store wins, and every one of them is correct for v.
func (p *clusterPicker) newSelector(c core.ClusterID, v *health.View, old *viewSelector) *viewSelector {
	var cursor uint64
	if old != nil {
		cursor = old.sel.Cursor()
	}
	vs := &viewSelector{view: v, sel: balance.NewSelector(v.Table, v.Usable, cursor)}
	p.sels[c].Store(vs)
	return vs
}

// setShards gives the picker the shards whose counters hold live flows and
// DNS queries in flight per backend, for p2c.
func (p *clusterPicker) setShards(ss []*shard.Shard) { p.shards.Store(&ss) }

// liveFlows returns backend id's live flows: upstream sockets opened minus
// closed, summed over the shards (two atomic loads per shard).
func (p *clusterPicker) liveFlows(id core.BackendID) uint64 {
	ss := p.shards.Load()
	if ss == nil {
		return 0
	}
	var n uint64
	for _, s := range *ss {
		c := s.Counters()
		// Closed before opened: counters publish in index order, so this
		// never sees more closed than opened.
		closed := c.Backend(id, shard.BackendSocketsClosed)
		n += c.Backend(id, shard.BackendSocketsOpened) - closed
	}
	return n
}

// dnsInFlight returns backend id's DNS queries in flight: sent minus
// answered, timed out and released, summed over the shards.
func (p *clusterPicker) dnsInFlight(id core.BackendID) uint64 {
	ss := p.shards.Load()
	if ss == nil {
		return 0
	}
	var n uint64
	for _, s := range *ss {
		c := s.Counters()
		// Read in reverse index order (see liveFlows).
		done := c.Backend(id, shard.BackendDNSReleased) + c.Backend(id, shard.BackendDNSTimeouts) + c.Backend(id, shard.BackendDNSAnswers)
		if sent := c.Backend(id, shard.BackendDNSQueries); sent > done {
			n += sent - done
		}
	}
	return n
}

// labels returns the backends' metric labels by BackendID; removed ones are
// zero.
func (p *clusterPicker) labels() []shard.BackendLabels { return *p.labelV.Load() }

func (p *clusterPicker) publishLabels() {
	ls := make([]shard.BackendLabels, len(p.refs))
	for id, r := range p.refs {
		if r.removed {
			continue
		}
		label := r.name
		if label == "" {
			label = r.addr.String()
		}
		ls[id] = shard.BackendLabels{Cluster: p.names[r.cluster], Backend: label, DNS: p.mode[r.cluster] == config.ModeDNS}
	}
	p.labelV.Store(&ls)
}

// listenerLabels names the listeners and their clusters for the metrics.
func (p *clusterPicker) listenerLabels(cfg *config.Config) []shard.ListenerLabels {
	ls := make([]shard.ListenerLabels, len(cfg.Listeners))
	for i, l := range cfg.Listeners {
		ls[i] = shard.ListenerLabels{Listener: l.Name, Cluster: l.Cluster}
	}
	return ls
}

// clusterIndex returns the ClusterID of the cluster named name.
func (p *clusterPicker) clusterIndex(name string) (int, error) {
	for i, n := range p.names {
		if n == name {
			return i, nil
		}
	}
	return -1, fmt.Errorf("%w: no cluster %q", errNotFound, name)
}

func (p *clusterPicker) findLocked(ci int, addr netip.AddrPort) int {
	for id, r := range p.refs {
		if r.cluster == ci && !r.removed && r.addr == addr {
			return id
		}
	}
	return -1
}

// applyLocked rebuilds cluster ci's table and hands it to the health monitor.
func (p *clusterPicker) applyLocked(ci int) error {
	t, err := p.tableLocked(ci)
	if err != nil {
		return err
	}
	hc := p.clusters[ci].Load()
	if t == nil || hc == nil {
		return fmt.Errorf("%w: cluster %q would have no backend", errInvalid, p.names[ci])
	}
	if err := hc.SetTable(t); err != nil {
		return err
	}
	p.publishQUICLocked(ci)
	p.publishLabels()
	return nil
}

// addBackend adds a primary backend to cluster ci; new flows may go to it at
// once (it starts as a new backend does for the cluster's health checks).
func (p *clusterPicker) addBackend(ci int, name string, addr netip.AddrPort, weight int) error {
	return p.addBackendAs(ci, name, addr, weight, false)
}

// addBackendAs is addBackend for a primary or, with backup, a backup backend.
func (p *clusterPicker) addBackendAs(ci int, name string, addr netip.AddrPort, weight int, backup bool) error {
	return p.addBackendRef(backendRef{cluster: ci, addr: addr, name: name, weight: weight, backup: backup})
}

// addBackendRef adds backend r (not removed) to cluster r.cluster; a server
// ID must suit the cluster (see checkServerIDLocked).
func (p *clusterPicker) addBackendRef(r backendRef) error {
	ci, addr, weight := r.cluster, r.addr, r.weight
	if !addr.IsValid() || addr.Port() == 0 || addr.Addr().IsUnspecified() || addr.Addr().IsMulticast() {
		return fmt.Errorf("%w: %v is not a unicast ip:port", errInvalid, addr)
	}
	if weight < 1 || weight > config.MaxWeight {
		return fmt.Errorf("%w: weight %d is outside 1..%d", errInvalid, weight, config.MaxWeight)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.findLocked(ci, addr) >= 0 {
		return fmt.Errorf("%w: %v is already a backend of cluster %q", errConflict, addr, p.names[ci])
	}
	if err := p.checkServerIDLocked(ci, r.serverID); err != nil {
		return err
	}
	if len(p.refs) >= p.capacity {
		return fmt.Errorf("%w: %d backends added since start, the most without a restart", errInvalid, spareBackendIDs)
	}
	if p.clusters[ci].Load() == nil {
		return fmt.Errorf("%w: cluster %q has no health state (it had no backend at start); restart to add one", errInvalid, p.names[ci])
	}
	p.refs = append(p.refs, r)
	if err := p.applyLocked(ci); err != nil {
		p.refs = p.refs[:len(p.refs)-1]
		return err
	}
	return nil
}

// removeBackend takes a backend out of cluster ci: no new flow goes to it;
// its live flows continue until they end.
func (p *clusterPicker) removeBackend(ci int, addr netip.AddrPort) error {
	return p.changeBackend(ci, addr, func(r *backendRef) { r.removed = true })
}

// setWeight changes a backend's weight (new flows only).
func (p *clusterPicker) setWeight(ci int, addr netip.AddrPort, weight int) error {
	if weight < 1 || weight > config.MaxWeight {
		return fmt.Errorf("%w: weight %d is outside 1..%d", errInvalid, weight, config.MaxWeight)
	}
	return p.changeBackend(ci, addr, func(r *backendRef) { r.weight = weight })
}

// setBackup moves a backend to the backup tier (on) or the primaries (new
// flows only).
func (p *clusterPicker) setBackup(ci int, addr netip.AddrPort, on bool) error {
	return p.changeBackend(ci, addr, func(r *backendRef) { r.backup = on })
}

// changeBackend applies change to backend addr of cluster ci and publishes
// the cluster's new table; if the table cannot be built the change is undone.
func (p *clusterPicker) changeBackend(ci int, addr netip.AddrPort, change func(*backendRef)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := p.findLocked(ci, addr)
	if id < 0 {
		return fmt.Errorf("%w: %v is not a backend of cluster %q", errNotFound, addr, p.names[ci])
	}
	old := p.refs[id]
	change(&p.refs[id])
	if err := p.applyLocked(ci); err != nil {
		p.refs[id] = old
		return err
	}
	return nil
}

// setDraining sets a backend's lame-duck flag.
func (p *clusterPicker) setDraining(ci int, addr netip.AddrPort, on bool) error {
	p.mu.Lock()
	id := p.findLocked(ci, addr)
	p.mu.Unlock()
	if id < 0 {
		return fmt.Errorf("%w: %v is not a backend of cluster %q", errNotFound, addr, p.names[ci])
	}
	hc := p.clusters[ci].Load()
	if hc == nil {
		return fmt.Errorf("%w: cluster %q", errNotFound, p.names[ci])
	}
	return hc.SetDraining(addr, on)
}

// backendsOf returns a copy of cluster ci's live backends with their IDs.
func (p *clusterPicker) backendsOf(ci int) (ids []core.BackendID, refs []backendRef) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, r := range p.refs {
		if r.cluster == ci && !r.removed {
			ids = append(ids, core.BackendID(id))
			refs = append(refs, r)
		}
	}
	return ids, refs
}

// snapshotRefs returns a copy of the registry, for the passive reports.
func (p *clusterPicker) snapshotRefs() []backendRef {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]backendRef(nil), p.refs...)
}

// setLB changes cluster ci's load-balancing algorithm (a new table).
func (p *clusterPicker) setLB(ci int, lb config.LB) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.lb[ci]
	p.lb[ci] = lb
	if err := p.applyLocked(ci); err != nil {
		p.lb[ci] = old
		return err
	}
	return nil
}

// replaceHealth restarts cluster ci's health checks with cl's settings: the
// backends start over as at start (draining flags are cleared).
func (p *clusterPicker) replaceHealth(ci int, cl *config.Cluster) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.mon.RemoveCluster(p.names[ci]); err != nil && p.clusters[ci].Load() != nil {
		return err
	}
	return p.addHealth(ci, cl)
}

// idOf returns the BackendID of the live backend addr of cluster ci.
func (p *clusterPicker) idOf(ci int, addr netip.AddrPort) (core.BackendID, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := p.findLocked(ci, addr)
	return core.BackendID(id), id >= 0
}
