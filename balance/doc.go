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
// # Other algorithms
//
// Round robin, weighted random and power-of-two choices need per-shard mutable
// state (a cursor, live-flow counts). They are meant to sit on the same sorted
// backend list and [Set] in a per-shard picker that holds that state; the
// [Algorithm] type names the policy so configuration can carry it.
package balance
