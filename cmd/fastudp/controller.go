package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/fastudp/fastudp/batchio/shard"
	"github.com/fastudp/fastudp/config"
	"github.com/fastudp/fastudp/control"
	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/health"
)

// proxyController serves the control API from a running proxy.
type proxyController struct {
	p       *proxy
	started time.Time
}

var _ control.Controller = (*proxyController)(nil)

// apiError maps the registry's errors onto the control API's classes.
func apiError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errNotFound), errors.Is(err, health.ErrUnknownBackend), errors.Is(err, health.ErrUnknownCluster):
		return fmt.Errorf("%w: %v", control.ErrNotFound, err)
	case errors.Is(err, errInvalid):
		return fmt.Errorf("%w: %v", control.ErrInvalid, err)
	case errors.Is(err, errConflict):
		return fmt.Errorf("%w: %v", control.ErrConflict, err)
	}
	return err
}

// Status implements control.Controller.
func (c *proxyController) Status() control.Status {
	p := c.p
	st := control.Status{
		PID: os.Getpid(), Version: version, StartedAt: c.started, Uptime: time.Since(c.started),
		ConfigPath: p.cfgPath, Shards: len(p.group.Shards()),
	}
	flows := p.flowsPerCluster()
	placements := p.placements()
	for _, cs := range p.health.Snapshot() {
		sum := control.ClusterSummary{Name: cs.Name, Placement: placements[cs.Name]}
		for _, b := range cs.Backends {
			switch b.State {
			case health.Up:
				sum.Up++
			case health.Down:
				sum.Down++
			case health.Draining:
				sum.Draining++
			}
		}
		sum.Flows = flows[cs.Name]
		st.Clusters = append(st.Clusters, sum)
	}
	return st
}

// flowsPerCluster sums the live flows of each cluster's listeners.
func (p *proxy) flowsPerCluster() map[string]int64 {
	out := map[string]int64{}
	for li, l := range p.cfg.Listeners {
		var created, evicted uint64
		for _, s := range p.group.Shards() {
			k := s.Counters()
			evicted += k.Listener(core.ListenerID(li), shard.ListenerFlowsEvicted)
			created += k.Listener(core.ListenerID(li), shard.ListenerFlowsCreated)
		}
		out[l.Cluster] += int64(created - evicted)
	}
	return out
}

// Backends implements control.Controller.
func (c *proxyController) Backends(cluster string) ([]control.Backend, error) {
	p := c.p
	var out []control.Backend
	for ci, name := range p.picker.names {
		if cluster != "" && name != cluster {
			continue
		}
		hc := p.picker.clusters[ci].Load()
		var hs health.ClusterStatus
		if hc != nil {
			hs = hc.Status()
		}
		ids, refs := p.picker.backendsOf(ci)
		for i, r := range refs {
			b := control.Backend{Cluster: name, Name: r.name, Address: r.addr, Weight: r.weight, State: control.StateUp,
				Backup: r.backup, ServerID: hex.EncodeToString([]byte(r.serverID))}
			for _, bs := range hs.Backends {
				if bs.Addr != r.addr {
					continue
				}
				switch bs.State {
				case health.Down:
					b.State = control.StateDown
				case health.Draining:
					b.State = control.StateDraining
				}
				b.Health = &control.Health{Healthy: bs.Healthy, Usable: bs.Usable, Since: bs.Since, Reason: bs.Reason,
					LastError: bs.LastError}
			}
			var opened, closed uint64
			for _, s := range p.group.Shards() {
				closed += s.Counters().Backend(ids[i], shard.BackendSocketsClosed)
				opened += s.Counters().Backend(ids[i], shard.BackendSocketsOpened)
			}
			if p.picker.mode[ci] != config.ModeDNS {
				n := int64(opened - closed)
				b.ActiveFlows = &n
			}
			out = append(out, b)
		}
		if cluster != "" {
			return out, nil
		}
	}
	if cluster != "" {
		return nil, fmt.Errorf("%w: no cluster %q", control.ErrNotFound, cluster)
	}
	return out, nil
}

func (c *proxyController) cluster(name string) (int, error) {
	ci, err := c.p.picker.clusterIndex(name)
	return ci, apiError(err)
}

// AddBackend implements control.Controller.
func (c *proxyController) AddBackend(cluster string, addr netip.AddrPort, opts control.AddOptions) error {
	ci, err := c.cluster(cluster)
	if err != nil {
		return err
	}
	r := backendRef{cluster: ci, addr: addr, weight: opts.Weight, backup: opts.Backup, serverID: opts.ServerID}
	if err := apiError(c.p.picker.addBackendRef(r)); err != nil {
		return err
	}
	c.p.log.Info("backend added", "cluster", cluster, "backend", addr, "weight", opts.Weight, "backup", opts.Backup,
		"server_id", hex.EncodeToString([]byte(opts.ServerID)), "by", "control")
	return nil
}

// SetBackup implements control.Controller.
func (c *proxyController) SetBackup(cluster string, addr netip.AddrPort, backup bool) error {
	ci, err := c.cluster(cluster)
	if err != nil {
		return err
	}
	if err := apiError(c.p.picker.setBackup(ci, addr, backup)); err != nil {
		return err
	}
	c.p.log.Info("backend tier", "cluster", cluster, "backend", addr, "backup", backup, "by", "control")
	return nil
}

// RemoveBackend implements control.Controller. Live flows of the backend
// continue until they end.
func (c *proxyController) RemoveBackend(cluster string, addr netip.AddrPort) error {
	ci, err := c.cluster(cluster)
	if err != nil {
		return err
	}
	if err := apiError(c.p.picker.removeBackend(ci, addr)); err != nil {
		return err
	}
	c.p.log.Info("backend removed", "cluster", cluster, "backend", addr, "by", "control")
	return nil
}

// DrainBackend implements control.Controller.
func (c *proxyController) DrainBackend(cluster string, addr netip.AddrPort, drain bool) error {
	ci, err := c.cluster(cluster)
	if err != nil {
		return err
	}
	if err := apiError(c.p.picker.setDraining(ci, addr, drain)); err != nil {
		return err
	}
	c.p.log.Info("backend draining", "cluster", cluster, "backend", addr, "draining", drain, "by", "control")
	return nil
}

// SetWeight implements control.Controller.
func (c *proxyController) SetWeight(cluster string, addr netip.AddrPort, weight int) error {
	ci, err := c.cluster(cluster)
	if err != nil {
		return err
	}
	if err := apiError(c.p.picker.setWeight(ci, addr, weight)); err != nil {
		return err
	}
	c.p.log.Info("backend weight", "cluster", cluster, "backend", addr, "weight", weight, "by", "control")
	return nil
}

// Flows implements control.Controller: up to limit live flows, taken from
// the shards in turn.
func (c *proxyController) Flows(limit int) ([]control.Flow, error) {
	p := c.p
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lists, err := p.group.Flows(ctx, limit)
	if err != nil {
		return nil, err
	}
	labels := p.picker.labels()
	refs := p.picker.snapshotRefs()
	var out []control.Flow
	for _, l := range lists {
		now := time.Now()
		for _, f := range l.Flows {
			if len(out) >= limit {
				return out, nil
			}
			fl := control.Flow{Client: f.Client, Local: f.Local, Shard: l.Shard,
				Age: now.Sub(l.Start.Add(time.Duration(f.Stats.Created))), DatagramsIn: f.Stats.DatagramsIn,
				DatagramsOut: f.Stats.DatagramsOut, BytesIn: f.Stats.BytesIn, BytesOut: f.Stats.BytesOut}
			if int(f.Listener) < len(p.cfg.Listeners) {
				fl.Listener = p.cfg.Listeners[f.Listener].Name
				fl.Cluster = p.cfg.Listeners[f.Listener].Cluster
			}
			if f.Established && int(f.Backend) < len(refs) && int(f.Backend) < len(labels) {
				fl.Backend = refs[f.Backend].addr
			}
			out = append(out, fl)
		}
	}
	return out, nil
}

// Reload implements control.Controller.
func (c *proxyController) Reload() (control.ReloadResult, error) {
	res, err := c.p.reload()
	c.p.logReload(res, err)
	if err != nil {
		if errors.Is(err, errNoConfigFile) {
			return control.ReloadResult{}, fmt.Errorf("%w: %v", control.ErrInvalid, err)
		}
		return control.ReloadResult{}, err
	}
	out := control.ReloadResult{ConfigPath: c.p.cfgPath, ClustersChanged: res.Clusters, RestartRequired: res.Restart}
	ref := func(s string) control.BackendRef {
		var cl, a string
		fmt.Sscan(s, &cl, &a)
		ap, _ := netip.ParseAddrPort(a)
		return control.BackendRef{Cluster: cl, Address: ap}
	}
	for _, s := range res.Added {
		out.BackendsAdded = append(out.BackendsAdded, ref(s))
	}
	for _, s := range res.Removed {
		out.BackendsRemoved = append(out.BackendsRemoved, ref(s))
	}
	for _, s := range res.Reweighted {
		out.BackendsChanged = append(out.BackendsChanged, ref(s))
	}
	return out, nil
}

// readToken reads the control_tcp token: the first line of path, which must
// not be empty.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("control_token_file: %w", err)
	}
	token, _, _ := strings.Cut(string(b), "\n")
	token = strings.TrimSpace(token)
	if token == "" {
		return "", fmt.Errorf("control_token_file %s: the first line is empty", path)
	}
	return token, nil
}
