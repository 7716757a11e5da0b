package batchio

// ListenOptions configures [ListenUDP].
type ListenOptions struct {
	// RecvBuffer and SendBuffer are socket buffer sizes in bytes; 0 keeps
	// the kernel default. SO_RCVBUFFORCE / SO_SNDBUFFORCE are tried first
	// (they need CAP_NET_ADMIN and may exceed net.core.rmem_max /
	// wmem_max), then SO_RCVBUF / SO_SNDBUF, which the kernel clamps to
	// those sysctls. Either way the kernel doubles the value to account
	// for its own overhead, and getsockopt reports the doubled value.
	RecvBuffer, SendBuffer int
	// GRO enables UDP_GRO: a run of equal-sized datagrams from one sender
	// (a GSO send, or NAPI GRO on the NIC) arrives as one message with
	// SegmentSize set. Every receive Buf must then hold [GROBufferSize]
	// bytes.
	GRO bool
	// SpecificPacketInfoOff leaves IP_PKTINFO / IPV6_RECVPKTINFO off when
	// the socket is bound to a specific address: every datagram then reached
	// that address, so the caller knows [Message.Local] without the control
	// message (which costs a little on every receive). A wildcard socket
	// always asks for packet info.
	SpecificPacketInfoOff bool
	// V6Only sets IPV6_V6ONLY on an IPv6 listener so that [::] receives
	// IPv6 only. By default an IPv6 listener is dual-stack whatever
	// net.ipv6.bindv6only says; IPv4 peers are then reported unmapped.
	V6Only bool
}

// DialOptions configures [DialUpstream].
type DialOptions struct {
	// RecvBuffer and SendBuffer are as in [ListenOptions].
	RecvBuffer, SendBuffer int
	// GRO enables UDP_GRO on the upstream socket (as in [ListenOptions]).
	GRO bool
}
