// Package gso holds the pure part of fastudp's UDP GSO/GRO support: the
// per-send limits, splitting a run of equal-size datagrams into its
// segments, and coalescing consecutive datagrams of a send batch into runs
// that one UDP_SEGMENT send can carry. It makes no system calls; the
// UDP_SEGMENT and UDP_GRO control messages themselves are built and parsed
// by batchio (control_linux.go), which carries the segment size in
// [batchio.Message.SegmentSize] both ways.
//
// # Zero copies
//
// Nothing here copies a payload. A run received with UDP_GRO is contiguous
// already and passes through whole with its SegmentSize. [Coalesce] merges
// separate datagrams into a run by re-slicing when they lie back to back in
// one backing array, and otherwise by listing them as Gather pieces of the
// run ([batchio.Message.Gather], one iovec each): the kernel gathers the
// pieces and cuts the stream every SegmentSize bytes, which falls exactly
// on the datagrams' boundaries. Messages with a Header are never merged.
// [HeaderEach] builds the PROXY v2 "every datagram" shape the same way:
// pieces [hdr, segment 1, hdr, segment 2, ...], every header the same
// slice, every segment a sub-slice of the received run.
//
// # Limits
//
// One GSO send carries at most [MaxSegments] (64) segments: the kernel's
// UDP_MAX_SEGMENTS was 64 and became 128 in 2024, and it cannot be
// queried, so 64 is the portable cap. Its payload (Header plus Buf) is at
// most [MaxBytesIPv4] (65,507 = 65,535 − 20-byte IPv4 header − 8-byte UDP
// header) to an IPv4 peer and [MaxBytesIPv6] (65,527 = 65,535 payload
// length − 8-byte UDP header; IPv6 extension headers, which fastudp never
// adds, would lower it) to an IPv6 peer. An IPv4-mapped IPv6 address counts
// as IPv4. The segment size must also fit the path MTU; that only the
// kernel knows, and a send that breaks it fails with EINVAL or EMSGSIZE
// ([batchio.IsGSOError]): the caller then splits the run with [Split] and
// sends the segments one by one.
package gso
