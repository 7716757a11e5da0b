// Package bpf is fastudp's SK_REUSEPORT steering: an eBPF program attached to
// a listener's SO_REUSEPORT group that chooses the shard socket for every
// datagram, in place of the kernel's own 4-tuple hash.
//
// The kernel's hash moves flows whenever a socket joins or leaves the group,
// cannot keep one client IP on one shard, and ignores which CPU received the
// datagram. The program picks a slot of a REUSEPORT_SOCKARRAY (slot i holds
// shard i's socket) by one of two policies:
//
//   - [ModeHash]: core.AffinityHash of the client's IP ([KeyIP]) or IP and
//     port ([KeyFlow]) with the process seed, modulo the number of shards.
//     The same seed and shard count give the same shard across restarts and
//     nodes; [ShardFor] computes it in Go.
//   - [ModeCPU]: the shard assigned to the CPU that received the datagram
//     (shard c mod shards for CPU c unless [Options.CPUs] says otherwise), for
//     per-core deployments with pinned shards and aligned NIC queues.
//
// A per-flow override map (client address → shard) is consulted first when it
// holds entries, so that a later upgrade can keep live flows on their old
// sockets. When the chosen slot is empty (its socket closed) the program
// selects nothing and returns SK_PASS, so the kernel falls back to its hash:
// a datagram is never dropped by steering.
//
// The program is written with cilium/ebpf's assembler (no C toolchain). It
// needs CAP_BPF (or CAP_SYS_ADMIN before Linux 5.8) to create the sockarray;
// without it [Load] returns a [*PermissionError] and the caller falls back to
// the kernel's hash (or SO_INCOMING_CPU for the CPU policy).
package bpf
