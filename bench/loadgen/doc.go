// Package loadgen is fastudp's benchmark load generator and echo backend.
//
// Both move datagrams with batchio's recvmmsg/sendmmsg on raw non-blocking
// file descriptors and allocate nothing per datagram, so on a small machine
// the tools cost as little CPU as the kernel allows and a run's CPU budget
// goes to the system under test.
//
// A [Generator] drives C client sockets, each connected to the target (so
// each is its own flow, told apart by source port), in one of two modes:
//
//   - open loop (Config.Rate > 0): a fixed total rate, paced in ticks and
//     spread round-robin over the sockets; replies are counted and timed
//     but never wait for;
//   - closed loop (Config.Rate == 0): one request in flight per socket; the
//     next request leaves as soon as the reply arrives, or once Timeout has
//     passed, when the request counts as lost.
//
// Every datagram starts with a 32-byte [Header]: a magic number, the phase
// it was sent in, the socket, a sequence number and the send time. The echo
// backend returns datagrams unchanged, so the generator matches each reply
// to its request and measures the round trip, and the backend counts
// datagrams per phase. Phases let a benchmark separate a warm-up from the
// measured window exactly: counts of one phase are unaffected by datagrams
// still in flight from another.
//
// Only Linux is supported.
package loadgen
