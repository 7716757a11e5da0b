package main

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"unicode"

	"github.com/fastudp/fastudp/batchio/shard"
	"github.com/fastudp/fastudp/config"
	"github.com/fastudp/fastudp/core"
)

// reloadResult says what a reload changed and what it could not.
type reloadResult struct {
	// Added, Removed and Reweighted list backends as "cluster addr".
	Added, Removed, Reweighted []string
	// Clusters lists clusters whose contract for new flows, DNS settings,
	// load balancing or health checks changed.
	Clusters []string
	// Restart lists changed keys that only a restart (or the upgrade path)
	// applies; they were not applied and the running values stay.
	Restart []string
}

// errNoConfigFile is returned by reload when the proxy was started from
// quick-start flags.
var errNoConfigFile = errors.New("started without --config: there is no file to reload")

// reload re-reads the config file, validates it and applies the difference
// to the running proxy: backends added, removed and reweighted, clusters'
// contracts for new flows, DNS timeouts, load-balancing algorithms and
// health checks. An invalid file changes nothing. Keys that need a restart
// are reported, not applied.
func (p *proxy) reload() (reloadResult, error) {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	var res reloadResult
	if p.cfgPath == "" {
		return res, errNoConfigFile
	}
	next, err := config.Load(p.cfgPath)
	if err != nil {
		return res, err
	}
	cur := p.cfg
	res.Restart = append(res.Restart, processKeyChanges(cur, next)...)
	p.reloadSourceLimit(cur, next)
	if listenersChanged(cur, next) {
		res.Restart = append(res.Restart, "[[listener]] tables")
	}
	for _, cl := range next.Clusters {
		if cur.Cluster(cl.Name) == nil {
			res.Restart = append(res.Restart, fmt.Sprintf("cluster %q added", cl.Name))
		}
	}
	for ci := range cur.Clusters {
		old := &cur.Clusters[ci]
		nc := next.Cluster(old.Name)
		if nc == nil {
			res.Restart = append(res.Restart, fmt.Sprintf("cluster %q removed", old.Name))
			continue
		}
		if err := p.reloadCluster(ci, old, nc, &res); err != nil {
			return res, fmt.Errorf("cluster %q: %w (earlier changes of this reload stay applied)", old.Name, err)
		}
	}
	return res, nil
}

// reloadCluster applies the live-changeable differences of one cluster and
// records them in p.cfg.
func (p *proxy) reloadCluster(ci int, old, nc *config.Cluster, res *reloadResult) error {
	changed := false
	for _, k := range []struct {
		key  string
		same bool
	}{
		{"mode", old.Mode == nc.Mode},
		{"dns_sockets", old.DNS.Sockets == nc.DNS.Sockets},
		{"dns_max_inflight", old.DNS.MaxInFlight == nc.DNS.MaxInFlight},
		{"dns_tcp", old.DNS.TCP == nc.DNS.TCP && old.DNS.TCPIdleTimeout == nc.DNS.TCPIdleTimeout},
	} {
		if !k.same {
			res.Restart = append(res.Restart, fmt.Sprintf("cluster %q: %s", old.Name, k.key))
		}
	}
	// The contract of new flows.
	if old.CoreConfig(0) != nc.CoreConfig(0) {
		old.Affinity, old.Responses, old.Requests = nc.Affinity, nc.Responses, nc.Requests
		old.FrontTimeout, old.BackTimeout, old.Lifetime, old.ProxyProtocol = nc.FrontTimeout, nc.BackTimeout, nc.Lifetime, nc.ProxyProtocol
		old.MaxAmplification, old.AmplificationAllowance = nc.MaxAmplification, nc.AmplificationAllowance
		old.QUICLB = nc.QUICLB
		for li := range p.cfg.Listeners {
			if p.cfg.Listeners[li].Cluster == old.Name {
				cc, _ := p.cfg.ListenerCoreConfig(li)
				p.group.Broadcast(core.ConfigEvent{Kind: core.ConfigSetCluster, Listener: core.ListenerID(li), Cluster: cc})
			}
		}
		changed = true
	}
	if old.DNS.Timeout != nc.DNS.Timeout && old.Mode == config.ModeDNS {
		old.DNS.Timeout = nc.DNS.Timeout
		for li := range p.cfg.Listeners {
			if p.cfg.Listeners[li].Cluster == old.Name {
				u := shard.DNSUpdate{Listener: core.ListenerID(li), Options: shard.DNSListener{Sockets: old.DNS.Sockets, MaxInFlight: old.DNS.MaxInFlight, Timeout: old.DNS.Timeout}}
				for _, s := range p.group.Shards() {
					s.Send(shard.Control{DNS: &u})
				}
			}
		}
		changed = true
	}
	// Backends.
	_, refs := p.picker.backendsOf(ci)
	for _, b := range nc.Backends {
		i := slices.IndexFunc(refs, func(r backendRef) bool { return r.addr == b.Address })
		switch {
		case i < 0:
			if err := p.picker.addBackendAs(ci, b.Name, b.Address, b.Weight, b.Backup); err != nil {
				return err
			}
			res.Added = append(res.Added, old.Name+" "+b.Address.String())
		case refs[i].weight != b.Weight:
			if err := p.picker.setWeight(ci, b.Address, b.Weight); err != nil {
				return err
			}
			res.Reweighted = append(res.Reweighted, old.Name+" "+b.Address.String())
		}
		if i >= 0 && refs[i].backup != b.Backup {
			if err := p.picker.setBackup(ci, b.Address, b.Backup); err != nil {
				return err
			}
			changed = true
		}
	}
	for _, r := range refs {
		if !slices.ContainsFunc(nc.Backends, func(b config.Backend) bool { return b.Address == r.addr }) {
			if err := p.picker.removeBackend(ci, r.addr); err != nil {
				return err
			}
			res.Removed = append(res.Removed, old.Name+" "+r.addr.String())
		}
	}
	if qc, err := p.reloadQUIC(ci, old, nc); err != nil {
		return err
	} else if qc {
		changed = true
	}
	old.Backends = append([]config.Backend(nil), nc.Backends...)
	// Load balancing and health: a new table, or a new health state (the
	// backends start as at start; draining flags set through the control
	// API are kept only when health settings do not change).
	if old.LB != nc.LB {
		if err := p.picker.setLB(ci, nc.LB); err != nil {
			return err
		}
		old.LB = nc.LB
		changed = true
	}
	if !reflect.DeepEqual(old.Health, nc.Health) || old.FailOpen != nc.FailOpen {
		if err := p.picker.replaceHealth(ci, nc); err != nil {
			return err
		}
		old.Health, old.FailOpen = nc.Health, nc.FailOpen
		changed = true
	}
	if changed {
		res.Clusters = append(res.Clusters, old.Name)
	}
	return nil
}

// logReload logs what a reload did, or why it was refused.
func (p *proxy) logReload(res reloadResult, err error) {
	if err != nil {
		p.log.Error("reload refused: the running configuration stays", "err", err)
		return
	}
	p.log.Info("reloaded", "added", res.Added, "removed", res.Removed, "reweighted", res.Reweighted, "clusters", res.Clusters)
	if len(res.Restart) > 0 {
		p.log.Warn("reload: these changes need a restart and were not applied", "keys", res.Restart)
	}
}

// processKeyChanges names the top-level keys that differ; none of them
// applies without a restart.
func processKeyChanges(a, b *config.Config) []string {
	var out []string
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	t := va.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() || f.Name == "Listeners" || f.Name == "Clusters" || f.Name == "SourceLimit" {
			continue
		}
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, snakeCase(f.Name))
		}
	}
	return out
}

func snakeCase(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 && !unicode.IsUpper(rune(s[i-1])) {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

func listenersChanged(a, b *config.Config) bool {
	return !slices.Equal(a.Listeners, b.Listeners)
}

// reloadSourceLimit applies a changed per-source new-flow limit (the
// source_* keys) to every shard: each gets its share under the running
// shard count and steering (which a reload does not change).
func (p *proxy) reloadSourceLimit(cur, next *config.Config) {
	if cur.SourceLimit == next.SourceLimit {
		return
	}
	cur.SourceLimit = next.SourceLimit
	ac := cur.AdmissionConfig(len(p.group.Shards()))
	p.group.Broadcast(core.ConfigEvent{Kind: core.ConfigSetAdmission, Admission: ac})
	p.log.Info("reload: per-source new-flow limit changed", "source_flow_rate", cur.SourceLimit.Rate,
		"source_flow_burst", cur.SourceLimit.Burst, "per_shard_interval", ac.Interval, "per_shard_burst", ac.Burst)
}
