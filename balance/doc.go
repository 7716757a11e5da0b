// Package balance chooses a backend for a new flow from its affinity key: the
// [core.AffinityHash] of the client that the core puts in
// [core.OutSelectBackend]. It is pure code: no I/O, no clock, no randomness
// other than the key and an explicit seed, no goroutines.
//
// # Tables
//
// A [Table] is built once per change of a cluster's membership or weights
// ([NewMaglev], [NewHRW], [New]) and is immutable afterwards, so the control
// plane builds it off the datagram path and publishes it to every shard (for
// example through an atomic.Pointer); shards read it concurrently without
// locks. Lookups allocate nothing.
//
// Backends are identified by their address, never by their position in the
// caller's list or by their id: a table sorts its backends by address, so every
// shard and every node built with the same seed and the same set of backends
// (addresses and weights) chooses the same backend for a key, whatever the
// order of the input list.
//
// # Health without rebuilds
//
// Unhealthy and draining backends are not removed from the table. The shell
// keeps a [Set] of usable backend indices for the current table and calls
// [Table.LookupAvailable]. For Maglev this reads at most [MaxProbes] table
// slots and then, when none of them is usable, scores the usable backends by
// rendezvous hashing: never O(table) per new flow, never a rebuild. Keys whose
// backend is usable keep it; keys of a skipped backend spread over the others
// in proportion to their weights.
//
// # Other algorithms and backups
//
// Round robin, weighted random and power-of-two choices ([RoundRobin],
// [Random], [P2C]) need mutable state (a cursor, random bits, live-flow
// counts). A [Selector] holds it for one table and one usable set: the
// control plane (or the first pick after a change) builds it once per health
// view; every shard shares it, with one atomic add per pick. Selectors serve
// Maglev and HRW too, deciding once per view which tier (primaries or
// [Backend.Backup] backends) is in use.
//
// Only Maglev and HRW give a client the same backend across its flows; the
// other policies spread each new flow afresh.
package balance
