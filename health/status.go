package health

import (
	"net/netip"
	"time"
)

// BackendStatus is the state of one backend at the time of a snapshot.
type BackendStatus struct {
	// Addr is the backend's address; Index its index in the cluster's table.
	Addr  netip.AddrPort
	Index int
	// State is Draining when draining, else Up or Down.
	State State
	// Healthy is the result of the checks, draining or not.
	Healthy bool
	// Draining is the control plane's lame-duck flag.
	Draining bool
	// Usable reports whether new flows may go to the backend now (fail-open
	// included).
	Usable bool
	// Since is when Healthy last changed (or the backend was added).
	Since time.Time
	// Reason explains the last state change ("3 probes failed: timeout").
	Reason string
	// LastError describes the last failed probe; empty if none failed.
	LastError string
	// ProbeSuccesses and ProbeFailures count active probes; PassiveFailures
	// counts the failures reported by the data path, as of the last passive
	// interval (zero when passive health is off).
	ProbeSuccesses, ProbeFailures, PassiveFailures uint64
}

// ClusterStatus is the state of one cluster at the time of a snapshot.
type ClusterStatus struct {
	Name string
	// Probe is the active probe kind.
	Probe Kind
	// Passive reports whether passive health is on.
	Passive bool
	// FailOpen is the configured policy; FailingOpen reports that it is in
	// force now (no backend up).
	FailOpen, FailingOpen bool
	// Backends are in table order.
	Backends []BackendStatus
}

// Status returns a snapshot of the cluster's backends.
func (c *Cluster) Status() ClusterStatus {
	c.mu.Lock()
	defer c.unlock()
	v := c.view.Load()
	s := ClusterStatus{
		Name:        c.name,
		Probe:       c.probe.Kind,
		Passive:     c.passive.Enabled,
		FailOpen:    c.failOpen,
		FailingOpen: c.failingOpen,
		Backends:    make([]BackendStatus, len(c.backends)),
	}
	for i, b := range c.backends {
		s.Backends[i] = BackendStatus{
			Addr:            b.addr,
			Index:           i,
			State:           b.state(),
			Healthy:         b.healthy,
			Draining:        b.draining,
			Usable:          v.Usable == nil || v.Usable.Has(i),
			Since:           b.since,
			Reason:          b.reason,
			LastError:       b.lastErr,
			ProbeSuccesses:  b.probeOK,
			ProbeFailures:   b.probeFail,
			PassiveFailures: b.passiveFailures,
		}
	}
	return s
}
