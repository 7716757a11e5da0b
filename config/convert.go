package config

import (
	"runtime"

	"github.com/fastudp/fastudp/core"
)

// ShardCount returns the number of shards to run: Shards, or GOMAXPROCS when
// it is 0.
func (c *Config) ShardCount() int {
	if c.Shards > 0 {
		return c.Shards
	}
	return runtime.GOMAXPROCS(0)
}

// MaxFlowsPerShard returns each shard's share of MaxFlows when the process
// runs shards shards: an equal split, rounded up, so the process may hold up
// to shards-1 flows more than MaxFlows. shards < 1 counts as 1.
func (c *Config) MaxFlowsPerShard(shards int) int {
	shards = max(shards, 1)
	return (c.MaxFlows + shards - 1) / shards
}

// CoreConfig returns the [core.Config] of one of shards shards. Pool is left
// nil for the shell to fill.
func (c *Config) CoreConfig(shards int) core.Config {
	return core.Config{
		Seed:              c.Seed,
		MaxFlows:          c.MaxFlowsPerShard(shards),
		MaxRxDatagramSize: c.MaxRxDatagramSize,
		PendingLimit:      c.PendingLimit,
		ExpiryBudget:      c.ExpiryBudget,
		Admission:         c.AdmissionConfig(shards),
	}
}

// CoreConfig returns the contract of cl's flows, echoing id in
// [core.OutSelectBackend]. PublicAddr is left unset: it belongs to the
// listener (see [Config.ListenerCoreConfig]).
func (cl *Cluster) CoreConfig(id core.ClusterID) core.ClusterConfig {
	return core.ClusterConfig{
		Cluster:       id,
		Affinity:      cl.Affinity,
		Responses:     cl.Responses,
		Requests:      cl.Requests,
		FrontTimeout:  cl.FrontTimeout,
		BackTimeout:   cl.BackTimeout,
		Lifetime:      cl.Lifetime,
		ProxyProtocol: cl.ProxyProtocol,
		// Flows of DNS mode are queries; the policy is for flows.
		CloseOnBackendDown: cl.DownFlows == DownFlowsClose,
		// DNS mode's queries bypass the flows: the guard is for udp mode.
		MaxAmplification:       cl.MaxAmplification,
		AmplificationAllowance: uint32(cl.AmplificationAllowance),
		QUIC:                   cl.QUICLB.Layout(), // the core parses; the shell decrypts
	}
}

// ListenerCoreConfig returns the cluster config listener i gives its new
// flows (the payload of [core.ConfigSetCluster]): its cluster's contract with
// the cluster's index in c.Clusters as [core.ClusterID], and the listener's
// public address. ok is false when the listener names no cluster of c, which
// Validate rules out.
func (c *Config) ListenerCoreConfig(i int) (cc core.ClusterConfig, ok bool) {
	l := &c.Listeners[i]
	ci := c.ClusterIndex(l.Cluster)
	if ci < 0 {
		return core.ClusterConfig{}, false
	}
	cc = c.Clusters[ci].CoreConfig(core.ClusterID(ci))
	cc.PublicAddr = l.PublicAddress
	return cc, true
}
