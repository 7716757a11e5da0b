// Package health checks the health of each cluster's backends, actively
// (probes) and passively (failures the data path reports), and publishes per
// cluster which backends may receive new flows, in a form the data path reads
// with one atomic load and no allocation.
//
// It is part of the control plane: it does I/O (probe sockets), runs
// goroutines and reads the clock, and knows nothing of fastudp's config or
// shards; the binary converts its configuration into [ProbeConfig] and
// [PassiveConfig] and hands views to the shards.
//
// # Use
//
//	m := health.NewMonitor(health.Options{Logger: log})
//	cl, err := m.AddCluster("dns", table, health.ProbeConfig{
//		Kind: health.KindDNS, DNSName: "example.test", Interval: 2 * time.Second,
//	}, health.PassiveConfig{Enabled: true}, true /* fail open */)
//	reg.MustRegister(health.NewCollector(m))
//	_ = m.Start(ctx)
//	defer m.Close()
//
//	// data path, per new flow: no lock, no allocation
//	be, ok := cl.Pick(key) // or v := cl.View(); v.Table.LookupAvailable(key, v.Usable)
//
//	// control plane
//	_ = m.SetDraining("dns", addr, true)
//	_ = cl.SetTable(newTable)               // backends added or removed
//	_ = cl.ReportPassive(addr, fails, oks)  // every passive interval or more often
//	status := m.Snapshot()
//
// # Views
//
// Each [Cluster] holds an atomic pointer to an immutable [View]: the
// cluster's [balance.Table] and a [balance.Set] of the indices of usable
// backends (nil when all are usable, which keeps Maglev's O(1) lookup). The
// monitor builds a new View and swaps it in (copy on write) whenever a
// backend's usability or the table changes, and never otherwise. Because
// [balance.Table.LookupAvailable] is a pure function of (table, key, set), a
// key whose backend did not change state keeps its backend across swaps:
// only keys of the backend that changed move.
//
// # States
//
// A backend is [Up], [Down] or [Draining]. Up and down come from the checks;
// draining is set by the control plane ([Monitor.SetDraining]) and hides, but
// does not stop, the checks: a draining backend receives no new flow, keeps
// its live flows, is never counted as down, and shows its health in
// [BackendStatus.Healthy] and fastudp_backend_up.
//
// Backends start up (fail-safe at start: a restart or reload must not refuse
// all traffic while waiting for probes) unless [ProbeConfig.StartDown] makes
// them wait for Rise successful probes.
//
// # Active probes
//
// One goroutine per backend probes it every [ProbeConfig.Interval], each
// probe bounded by Timeout, on a fresh socket. Probes of one backend never
// overlap: one slower than the interval delays the next. Fall consecutive
// failures take a backend down, Rise consecutive successes bring it up. Kinds:
//
//   - udp: send Payload; success is a reply equal to Expect, or matching
//     ExpectRegexp, or, with neither, any reply; with AllowSilence, also no
//     reply within Timeout. ICMP port unreachable fails at once.
//   - dns: query DNSName/DNSType over UDP; the reply (QR set, same ID, same
//     question; other datagrams are ignored) must carry DNSRcode.
//   - tcp: a TCP connection opens.
//   - quic: a 1200-byte long-header packet with a reserved version
//     (0x?a?a?a?a) and random connection IDs must draw a Version Negotiation
//     packet (version 0) whose DCID is our SCID and whose SCID is our DCID
//     (RFC 9000 §6, §17.2.1; RFC 8999). It proves a QUIC stack is listening
//     without a handshake or certificates.
//   - none: no probe.
//
// # Passive health
//
// The data path counts, per backend, failures (DNS queries that timed out,
// ECONNREFUSED, flows that timed out with no reply) and successes (answers),
// and reports them with [Cluster.ReportPassive] (cumulative) or
// [Cluster.AddPassive] (increments). Every passive interval, a backend that
// had at least MinFailures failures and no success has failed one check; Fall
// consecutive failed intervals take it down, an interval with a success
// resets the count. Passive results never bring a backend up: active probes
// do; in a cluster without probes (kind none), a backend down for
// [PassiveConfig.Cooldown] comes back up on probation (one more failed
// interval takes it down again).
//
// # Fail-open
//
// When no non-draining backend of a fail-open cluster is up, the View holds
// every non-draining backend ([View.FailingOpen]; metric
// fastudp_health_fail_open; a warning in the log): sending new flows to
// backends that failed their checks beats dropping all of them, since the
// checks may be what is wrong. Without fail-open, or when every backend is
// draining, the set is empty and lookups fail.
//
// # Lifecycle
//
// [Monitor.Start] starts the goroutines; cancelling its context or calling
// [Monitor.Close] stops them, and Close waits until none is left. Every
// state change is logged (log/slog) with the cluster, backend, old and new
// state and a reason such as "3 probes failed: timeout". [NewCollector]
// exports the state to Prometheus.
package health
