// Package controltest provides an in-memory [control.Controller] for tests
// of the control API and its clients: a map of clusters to backends, with
// the same error contract as the proxy. It does no I/O.
package controltest

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/fastudp/fastudp/control"
)

// Controller is an in-memory [control.Controller].
type Controller struct {
	mu sync.Mutex // guards every field
	// clusters maps a cluster's name to its backends by address.
	clusters map[string]map[netip.AddrPort]*control.Backend
	flows    []control.Flow
	reload   control.ReloadResult
	// reloadErr is what Reload returns; fail, when set, is what every
	// method returns (Status excepted).
	reloadErr error
	fail      error
	started   time.Time
}

var _ control.Controller = (*Controller)(nil)

// New returns a controller with the given clusters and no backends.
func New(clusters ...string) *Controller {
	c := &Controller{clusters: map[string]map[netip.AddrPort]*control.Backend{}, started: time.Now()}
	for _, name := range clusters {
		c.clusters[name] = map[netip.AddrPort]*control.Backend{}
	}
	return c
}

// Put adds or replaces a backend; its cluster is created if need be.
func (c *Controller) Put(b control.Backend) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.clusters[b.Cluster] == nil {
		c.clusters[b.Cluster] = map[netip.AddrPort]*control.Backend{}
	}
	c.clusters[b.Cluster][b.Address] = &b
}

// SetFlows sets what Flows returns (at most its limit).
func (c *Controller) SetFlows(fs []control.Flow) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.flows = slices.Clone(fs)
}

// SetReload sets what Reload returns.
func (c *Controller) SetReload(res control.ReloadResult, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reload, c.reloadErr = res, err
}

// SetFail makes every method but Status return err (nil restores them).
func (c *Controller) SetFail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fail = err
}

// Status implements [control.Controller].
func (c *Controller) Status() control.Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := control.Status{
		PID:        1234,
		Version:    "test",
		StartedAt:  c.started,
		Uptime:     time.Since(c.started),
		ConfigPath: "/etc/fastudp/fastudp.toml",
		Shards:     2,
	}
	for _, name := range c.namesLocked() {
		s := control.ClusterSummary{Name: name}
		for _, b := range c.clusters[name] {
			switch b.State {
			case control.StateUp:
				s.Up++
			case control.StateDown:
				s.Down++
			case control.StateDraining:
				s.Draining++
			}
			if b.ActiveFlows != nil {
				s.Flows += *b.ActiveFlows
			}
		}
		st.Clusters = append(st.Clusters, s)
	}
	return st
}

func (c *Controller) namesLocked() []string {
	names := make([]string, 0, len(c.clusters))
	for name := range c.clusters {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Backends implements [control.Controller]; backends come sorted by cluster
// and address.
func (c *Controller) Backends(cluster string) ([]control.Backend, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		return nil, c.fail
	}
	names := c.namesLocked()
	if cluster != "" {
		if _, ok := c.clusters[cluster]; !ok {
			return nil, fmt.Errorf("cluster %q: %w", cluster, control.ErrNotFound)
		}
		names = []string{cluster}
	}
	var out []control.Backend
	for _, name := range names {
		start := len(out)
		for _, b := range c.clusters[name] {
			out = append(out, *b)
		}
		slices.SortFunc(out[start:], func(a, b control.Backend) int { return a.Address.Compare(b.Address) })
	}
	return out, nil
}

// backendLocked finds a backend, or says which of cluster or backend is
// unknown.
func (c *Controller) backendLocked(cluster string, addr netip.AddrPort) (*control.Backend, error) {
	if c.fail != nil {
		return nil, c.fail
	}
	bs, ok := c.clusters[cluster]
	if !ok {
		return nil, fmt.Errorf("cluster %q: %w", cluster, control.ErrNotFound)
	}
	b, ok := bs[addr]
	if !ok {
		return nil, fmt.Errorf("backend %s in cluster %q: %w", addr, cluster, control.ErrNotFound)
	}
	return b, nil
}

// AddBackend implements [control.Controller]; new backends are up.
func (c *Controller) AddBackend(cluster string, addr netip.AddrPort, opts control.AddOptions) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		return c.fail
	}
	bs, ok := c.clusters[cluster]
	if !ok {
		return fmt.Errorf("cluster %q: %w", cluster, control.ErrNotFound)
	}
	if _, ok := bs[addr]; ok {
		return fmt.Errorf("backend %s already in cluster %q: %w", addr, cluster, control.ErrConflict)
	}
	for _, b := range bs {
		if opts.ServerID != "" && b.ServerID == hex.EncodeToString([]byte(opts.ServerID)) {
			return fmt.Errorf("server ID %x is also backend %s's: %w", opts.ServerID, b.Address, control.ErrInvalid)
		}
	}
	bs[addr] = &control.Backend{Cluster: cluster, Address: addr, Weight: opts.Weight, State: control.StateUp,
		Backup: opts.Backup, ServerID: hex.EncodeToString([]byte(opts.ServerID))}
	return nil
}

// SetBackup implements [control.Controller].
func (c *Controller) SetBackup(cluster string, addr netip.AddrPort, backup bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := c.backendLocked(cluster, addr)
	if err != nil {
		return err
	}
	b.Backup = backup
	return nil
}

// RemoveBackend implements [control.Controller].
func (c *Controller) RemoveBackend(cluster string, addr netip.AddrPort) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.backendLocked(cluster, addr); err != nil {
		return err
	}
	delete(c.clusters[cluster], addr)
	return nil
}

// DrainBackend implements [control.Controller]; undraining makes the
// backend up.
func (c *Controller) DrainBackend(cluster string, addr netip.AddrPort, drain bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := c.backendLocked(cluster, addr)
	if err != nil {
		return err
	}
	b.State = control.StateUp
	if drain {
		b.State = control.StateDraining
	}
	return nil
}

// SetWeight implements [control.Controller].
func (c *Controller) SetWeight(cluster string, addr netip.AddrPort, weight int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := c.backendLocked(cluster, addr)
	if err != nil {
		return err
	}
	b.Weight = weight
	return nil
}

// Flows implements [control.Controller].
func (c *Controller) Flows(limit int) ([]control.Flow, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		return nil, c.fail
	}
	return slices.Clone(c.flows[:min(limit, len(c.flows))]), nil
}

// Reload implements [control.Controller].
func (c *Controller) Reload() (control.ReloadResult, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		return control.ReloadResult{}, c.fail
	}
	return c.reload, c.reloadErr
}
