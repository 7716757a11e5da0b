// Package bpf will hold fastudp's SK_REUSEPORT steering program and its
// loader: a REUSEPORT_SOCKARRAY of the shards' listener sockets and a program
// that picks the shard by core.AffinityHash (same function, same seed) or by
// the receiving CPU.
//
// Status: not implemented yet (the eBPF steering issue). Until then the
// kernel's own SO_REUSEPORT hash spreads datagrams over the shards.
package bpf
