// Package core is fastudp's pure, sans-io UDP flow engine: one [Manager] per
// shard owns admission, the flow table, teardown, timers and the PROXY v2
// header, and nothing else.
//
// The package performs no I/O. It opens no sockets, makes no syscalls, never
// reads the clock and uses no randomness, goroutines, channels or locks. The
// shell (the shard loop) passes the current time into every call as a [Time]
// and the hash seed at construction, so the same inputs always produce the same
// outputs; traces in testdata/traces replay that contract.
//
// # Driving a manager
//
// The shell collects a batch of [Input] values (client datagrams, backend
// datagrams, backend resolutions, config events, timer firings) and calls
// [Manager.Handle], which appends the resulting [Output] values to a slice the
// caller owns and reuses:
//
//	out = m.Handle(now, inputs, out[:0])
//	for i := range out { shell.apply(&out[i]) }
//
// # Buffer ownership
//
// Payloads are borrowed. An [Output] that carries a payload references either
// the caller's input buffer (forward and return paths) or a buffer the core took
// from the caller's [BufferPool] to hold a datagram across batches (a new flow
// waiting for its backend). Every slice in an Output, including the PROXY v2
// [Output.Header], stays valid until the next call to Handle and must not be
// retained after it; input buffers may be reused as soon as Handle returns.
//
// # Flows
//
// A flow is keyed by the listener, the full client address and the local
// address the datagram arrived on. The affinity mode of a cluster ([AffinityIP],
// [AffinityIPPort], [AffinityDatagram] or [AffinityQUIC]) only chooses the key
// hashed for backend selection ([AffinityHash], [QUICCIDHash]); it never merges
// client ports into one flow. Flow ids
// ([FlowID]) carry a generation, so an id that outlived its flow never reaches
// a newer flow in the same slot.
//
// # Backends marked down
//
// The control plane marks backends down and up with [ConfigBackendDown] and
// [ConfigBackendUp]. Each flow keeps the policy of the contract it was
// admitted under: by default it goes on until it ends; with
// [ClusterConfig.CloseOnBackendDown] the client's next datagram closes it
// ([CloseBackendDown]) and is admitted as the first datagram of a new flow,
// which asks for a backend anew. Replies never close a flow, and a flow still
// waiting for its backend is not affected. While no backend is marked the data
// path pays one predictable branch.
package core
