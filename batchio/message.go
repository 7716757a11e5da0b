// Package batchio moves batches of UDP datagrams between a shard's event
// loop and raw non-blocking socket file descriptors with one recvmmsg or
// sendmmsg system call per batch and no heap allocation per datagram.
//
// The package owns no goroutines and no event loop: the caller polls its own
// epoll instance and calls [Batch.Recv] until it returns an error that
// [Classify] reports as [KindWouldBlock]. Sockets are created with
// [ListenUDP] (shared SO_REUSEPORT listeners) and [DialUpstream] (connected
// per-flow upstream sockets); both return plain file descriptors that the
// caller closes with unix.Close.
//
// Per-datagram metadata travels in [Message]: the peer address, the local
// address the peer used (IP_PKTINFO / IPV6_PKTINFO), the TOS / traffic
// class byte (so DSCP and ECN can be relayed), and the UDP GRO / GSO segment
// size. Control messages are parsed and built by hand in fixed per-batch
// buffers.
//
// Only Linux is implemented; on other systems every function returns
// [ErrNotSupported].
package batchio

import "net/netip"

// DefaultBatchSize is the batch size [NewBatch] uses when asked for 0.
// 64 matches the per-call batch used by most Linux UDP stacks without GRO
// (wireguard-go and Tailscale use 128, curl 64); larger batches mainly
// add latency on a 2-core box.
const DefaultBatchSize = 64

// MaxBatchSize is the largest batch one system call can carry: the kernel
// silently clamps the vlen of recvmmsg/sendmmsg to UIO_MAXIOV (1024,
// include/uapi/linux/uio.h).
const MaxBatchSize = 1024

// MaxGSOSegments is the largest number of segments to put in one UDP GSO
// send. The kernel limit UDP_MAX_SEGMENTS was 64 and became 128 in commit
// 1382e3b6a350 (2024); it cannot be queried, so 64 is the portable cap.
const MaxGSOSegments = 64

// GROBufferSize is the receive buffer each [Message] needs on a socket with
// UDP_GRO enabled: a coalesced run can reach 64 KiB, and a shorter buffer
// loses the rest of the run (the message comes back with [FlagTruncated]).
const GROBufferSize = 65535

// Flags reports conditions the kernel signalled for one received datagram.
type Flags uint8

const (
	// FlagTruncated (MSG_TRUNC) means the datagram was longer than Buf:
	// Buf[:N] holds only its head. Drop and count it; never forward it.
	FlagTruncated Flags = 1 << iota
	// FlagControlTruncated (MSG_CTRUNC) means some control messages did not
	// fit, so Local, TOS or SegmentSize may be missing. A GRO run that lost
	// its UDP_GRO message looks like one big datagram, so drop it too.
	FlagControlTruncated
)

// Message is one datagram with its metadata, used both to receive and to
// send. The caller owns Buf and Header; the package only reads or fills them
// during a call and keeps no reference afterwards.
type Message struct {
	// Buf is the payload. On receive it is the whole buffer to read into
	// and the datagram is Buf[:N]; on send all of Buf is sent.
	Buf []byte
	// Header, on send, is sent before Buf in the same datagram (a second
	// iovec), so a PROXY v2 header can be prepended without copying the
	// payload. With SegmentSize set, the kernel segments Header+Buf as one
	// byte stream. Ignored on receive.
	Header []byte
	// N is the number of bytes received into Buf. Set by Recv; ignored by
	// Send.
	N int
	// Addr is the peer: the source on receive, the destination on send.
	// A zero Addr on send means the socket is connected. IPv4-mapped IPv6
	// addresses seen on dual-stack sockets are reported unmapped, and an
	// IPv4 Addr may be given to send on a dual-stack socket. IPv6 zones are
	// neither reported nor used: link-local peers need Local and IfIndex.
	Addr netip.AddrPort
	// Local is, on receive, the destination address the peer sent to
	// (IP_PKTINFO ipi_addr / IPV6_PKTINFO ipi6_addr), reported unmapped;
	// it is the invalid Addr when the socket does not ask for packet info.
	// On send it is the source address to use, of the same family as Addr;
	// the invalid Addr lets the kernel choose.
	Local netip.Addr
	// IfIndex is, on receive, the interface the datagram arrived on (from
	// the same PKTINFO message). On send it is used only with Local, in
	// the same PKTINFO message, and a non-zero value forces the outgoing
	// interface: set it to 0 when replying unless the reply must leave by
	// the arrival interface (as for a link-local peer).
	IfIndex int
	// SegmentSize is, on receive, the segment size from the UDP_GRO
	// control message: Buf[:N] then holds several datagrams of SegmentSize
	// bytes each, the last one possibly shorter. 0 means Buf[:N] is one
	// datagram. On send, a non-zero SegmentSize asks the kernel to cut
	// Header+Buf into datagrams of that size (UDP_SEGMENT), all with the
	// same Addr, Local and TOS. The caller keeps to the kernel's limits: at
	// most [MaxGSOSegments] segments and 65507 bytes (IPv4) or 65527 bytes
	// (IPv6) in all. A value outside 0..65535 is a bug and panics.
	SegmentSize int
	// TOS is the IPv4 TOS or IPv6 traffic class byte (DSCP and ECN bits).
	// On receive it comes from IP_TOS / IPV6_TCLASS when the socket asked
	// for it; on send a non-zero TOS is set for this datagram only, 0 keeps
	// the socket's default.
	TOS uint8
	// Flags reports truncation on receive. Ignored by Send.
	Flags Flags
	// Gather, on send, holds more pieces sent after Header and Buf in the
	// same datagram or GSO run, one iovec each: the kernel gathers
	// Header, Buf, Gather[0], Gather[1]... into one byte stream and, with
	// SegmentSize set, cuts it every SegmentSize bytes wherever the pieces
	// begin. So separate equal-size datagrams (one piece each), or a PROXY
	// v2 header before every segment ([hdr, seg1, hdr, seg2, ...]), go out
	// as one UDP_SEGMENT send without copying a payload. A message needs
	// one iovec per non-empty piece and at most [MaxIovecs] of them.
	// Ignored on receive.
	Gather [][]byte
}

// MaxIovecs is the most pieces (Header, Buf and Gather together) one
// message may have on send: the kernel's UIO_MAXIOV
// (include/uapi/linux/uio.h); a message with more fails with EMSGSIZE, as
// sendmsg does.
const MaxIovecs = 1024

// Len returns the bytes m sends: Header, Buf and every Gather piece.
func (m *Message) Len() int {
	n := len(m.Header) + len(m.Buf)
	for _, p := range m.Gather {
		n += len(p)
	}
	return n
}
