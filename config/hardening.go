package config

import (
	"time"

	"github.com/fastudp/fastudp/core"
)

// Limits of the hardening keys (source_flow_*, source_prefix_*,
// source_table_size, max_amplification, amplification_allowance).
const (
	// MaxSourceFlowRate bounds source_flow_rate (new flows per second).
	MaxSourceFlowRate = 10_000_000
	// DefaultSourceTableSize is source_table_size's default.
	DefaultSourceTableSize = core.DefaultAdmissionTableSize
	// DefaultAmplificationAllowance is amplification_allowance's default:
	// one Ethernet-MTU datagram, so a first reply (a DNS answer, a QUIC
	// handshake flight's first datagram) is never refused by the ratio.
	DefaultAmplificationAllowance = 1500
	// MaxAmplification bounds max_amplification.
	MaxAmplification = 1 << 20
	// MaxAmplificationAllowance bounds amplification_allowance (1 MiB).
	MaxAmplificationAllowance = 1 << 20
)

// SourceLimit is the per-source new-flow limit (the top-level source_* keys):
// each source, a client address cut to PrefixV4 or PrefixV6 bits, may open
// Rate new flows per second with bursts of Burst. It is process-wide rather
// than per cluster: what it protects (the flow table, max_flows, the
// upstream sockets) is the process's, and one fixed table per shard tracks
// the sources of every listener.
type SourceLimit struct {
	// Rate is new flows per second per source; 0 turns the limit off.
	Rate int
	// Burst is how many new flows a source may open at once; 0 means Rate.
	Burst int
	// PrefixV4 and PrefixV6 are the source prefix lengths.
	PrefixV4, PrefixV6 int
	// TableSize is the number of sources each shard tracks.
	TableSize int
}

// DefaultSourceLimit is the limit's default: off, /32 and /128 sources, and
// a table of [DefaultSourceTableSize].
func DefaultSourceLimit() SourceLimit {
	return SourceLimit{PrefixV4: 32, PrefixV6: 128, TableSize: DefaultSourceTableSize}
}

// AdmissionConfig returns one shard's share of the source limit when the
// process runs shards shards. Shards keep separate tables; the kernel's
// SO_REUSEPORT hash (and cpu steering, and hash steering on the flow key)
// spreads a source's client ports over all of them, so each gets Rate/shards
// and ceil(Burst/shards). Only hash steering on the client IP with /32 and
// /128 sources sends all of a source's flows to one shard, which then gets
// the whole rate.
func (c *Config) AdmissionConfig(shards int) core.AdmissionConfig {
	sl := c.SourceLimit
	if sl.Rate <= 0 {
		return core.AdmissionConfig{}
	}
	share := max(shards, 1)
	if c.Steering == SteeringHash && c.SteeringKey == SteeringKeyIP && sl.PrefixV4 == 32 && sl.PrefixV6 == 128 {
		share = 1
	}
	burst := sl.Burst
	if burst <= 0 {
		burst = sl.Rate
	}
	return core.AdmissionConfig{
		Interval:  time.Duration(int64(time.Second) * int64(share) / int64(sl.Rate)),
		Burst:     min((burst+share-1)/share, core.MaxAdmissionBurst),
		PrefixV4:  sl.PrefixV4,
		PrefixV6:  sl.PrefixV6,
		TableSize: sl.TableSize,
	}
}

func (v *validator) sourceLimit(sl *SourceLimit) {
	v.intRange(sl.Rate, 0, MaxSourceFlowRate, "source_flow_rate")
	v.intRange(sl.Burst, 0, core.MaxAdmissionBurst, "source_flow_burst")
	v.intRange(sl.PrefixV4, 1, 32, "source_prefix_v4")
	v.intRange(sl.PrefixV6, 1, 128, "source_prefix_v6")
	v.intRange(sl.TableSize, core.MinAdmissionTableSize, core.MaxAdmissionTableSize, "source_table_size")
}

func (v *validator) amplification(cl *Cluster, path, item string) {
	v.intRangeAt(int(cl.MaxAmplification), 0, MaxAmplification, joinPath(path, "max_amplification"), item, "max_amplification")
	v.intRangeAt(cl.AmplificationAllowance, 0, MaxAmplificationAllowance, joinPath(path, "amplification_allowance"), item, "amplification_allowance")
}
