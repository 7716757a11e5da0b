package batchio

import (
	"errors"
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockopt is one integer socket option to set, named for error messages.
type sockopt struct {
	level, opt, value int
	name              string
}

// ListenUDP returns a non-blocking, close-on-exec UDP socket bound to addr,
// ready for [Batch.Recv] and [Batch.Send]. An IPv4-mapped addr gives an
// IPv4 socket. The socket has:
//   - SO_REUSEADDR and SO_REUSEPORT, so each shard can bind its own socket
//     to the same address and the kernel spreads flows across them;
//   - IP_PKTINFO / IPV6_RECVPKTINFO, so [Message.Local] tells which address
//     a wildcard listener was reached on (replies must leave from it);
//   - IP_RECVTOS / IPV6_RECVTCLASS (both on a dual-stack socket), so DSCP
//     and ECN can be relayed;
//   - SO_RXQ_OVFL, so [Batch.Drops] can report kernel drops;
//   - UDP_GRO and buffer sizes as opts asks.
//
// IP_RECVERR is deliberately not set: on a shared unconnected socket one
// stale ICMP error would fail the next send to a healthy peer.
// The caller closes the descriptor with unix.Close.
func ListenUDP(addr netip.AddrPort, opts ListenOptions) (int, error) {
	a := addr.Addr().Unmap()
	if !a.IsValid() {
		return -1, errors.New("batchio: listen: invalid address")
	}
	fd, err := newSocket(a)
	if err != nil {
		return -1, err
	}
	so := []sockopt{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR"},
		{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1, "SO_REUSEPORT"},
		{unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1, "SO_RXQ_OVFL"},
	}
	pktinfo := boolInt(a.IsUnspecified() || !opts.SpecificPacketInfoOff)
	if a.Is4() {
		so = append(so,
			sockopt{unix.SOL_IP, unix.IP_PKTINFO, pktinfo, "IP_PKTINFO"},
			sockopt{unix.SOL_IP, unix.IP_RECVTOS, 1, "IP_RECVTOS"})
	} else {
		so = append(so,
			sockopt{unix.SOL_IPV6, unix.IPV6_V6ONLY, boolInt(opts.V6Only), "IPV6_V6ONLY"},
			sockopt{unix.SOL_IPV6, unix.IPV6_RECVPKTINFO, pktinfo, "IPV6_RECVPKTINFO"},
			sockopt{unix.SOL_IPV6, unix.IPV6_RECVTCLASS, 1, "IPV6_RECVTCLASS"})
		if !opts.V6Only {
			// IPv4 datagrams on a dual-stack socket get IPV6_PKTINFO with a
			// v4-mapped address, but their TOS only through the IPv4 option
			// (udpv6_recvmsg calls ip_cmsg_recv_offset for them).
			so = append(so, sockopt{unix.SOL_IP, unix.IP_RECVTOS, 1, "IP_RECVTOS"})
		}
	}
	if opts.GRO {
		so = append(so, sockopt{unix.SOL_UDP, unix.UDP_GRO, 1, "UDP_GRO"})
	}
	err = setup(fd, so, opts.RecvBuffer, opts.SendBuffer)
	if err == nil {
		err = bind(fd, addr)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// DialUpstream returns a non-blocking, close-on-exec UDP socket connected
// to backend, for one flow's traffic to it. Connecting makes the kernel
// filter replies by source and report ICMP port-unreachable as
// ECONNREFUSED on the next call ([KindRefused]).
//
// If local has a valid address or a non-zero port the socket is bound to
// it first (an unset address with a port binds the wildcard). A non-zero
// port also sets SO_REUSEADDR, so several upstream sockets can share one
// source port towards different backends; the kernel then accepts
// duplicate 4-tuples too, so the caller must keep them unique. With port 0
// the kernel picks a port that no other socket uses, which caps a source
// address at about 28k flows with the default ip_local_port_range.
//
// The socket has IP_MTU_DISCOVER / IPV6_MTU_DISCOVER set to PMTUDISC_PROBE:
// datagrams carry DF and are never fragmented locally, and a datagram
// above the device MTU fails with EMSGSIZE instead; ICMP
// fragmentation-needed messages do not lower the MTU used. It also has
// IP_RECVTOS / IPV6_RECVTCLASS like a listener (no SO_RXQ_OVFL), and
// UDP_GRO and buffer sizes as opts asks. The caller closes it.
func DialUpstream(local, backend netip.AddrPort, opts DialOptions) (int, error) {
	b := backend.Addr().Unmap()
	if !b.IsValid() || backend.Port() == 0 {
		return -1, fmt.Errorf("batchio: dial: invalid backend address %v", backend)
	}
	l := local.Addr().Unmap()
	if l.IsValid() && l.Is4() != b.Is4() {
		return -1, fmt.Errorf("batchio: dial: local address %v and backend %v differ in family", l, b)
	}
	fd, err := newSocket(b)
	if err != nil {
		return -1, err
	}
	// No SO_RXQ_OVFL here: an upstream socket carries one flow, and the
	// option would cost a syscall on every new flow.
	so := make([]sockopt, 0, 4)
	if b.Is4() {
		so = append(so,
			sockopt{unix.SOL_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE, "IP_MTU_DISCOVER"},
			sockopt{unix.SOL_IP, unix.IP_RECVTOS, 1, "IP_RECVTOS"})
	} else {
		so = append(so,
			sockopt{unix.SOL_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE, "IPV6_MTU_DISCOVER"},
			sockopt{unix.SOL_IPV6, unix.IPV6_RECVTCLASS, 1, "IPV6_RECVTCLASS"})
	}
	if opts.GRO {
		so = append(so, sockopt{unix.SOL_UDP, unix.UDP_GRO, 1, "UDP_GRO"})
	}
	if local.Port() != 0 {
		so = append(so, sockopt{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR"})
	}
	err = setup(fd, so, opts.RecvBuffer, opts.SendBuffer)
	if err == nil && (l.IsValid() || local.Port() != 0) {
		if !l.IsValid() {
			l = netip.IPv6Unspecified()
			if b.Is4() {
				l = netip.IPv4Unspecified()
			}
		}
		err = bind(fd, netip.AddrPortFrom(l, local.Port()))
	}
	if err == nil {
		if err = sockaddrCall(unix.SYS_CONNECT, fd, backend); err != nil {
			err = fmt.Errorf("batchio: connect %v: %w", backend, err)
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// LocalAddr returns the address fd is bound to (getsockname), unmapped.
// It allocates; use it at setup, not per datagram.
func LocalAddr(fd int) (netip.AddrPort, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("batchio: getsockname: %w", err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("batchio: getsockname: unexpected address family %T", sa)
}

// RaiseNoFileLimit raises the soft RLIMIT_NOFILE to the hard limit (one
// descriptor per upstream flow adds up) and returns the new soft limit.
// Since Go 1.19 package os already does this at startup, so this mostly
// makes the step explicit and reports the limit.
func RaiseNoFileLimit() (uint64, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("batchio: getrlimit RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("batchio: setrlimit RLIMIT_NOFILE: %w", err)
		}
	}
	return lim.Cur, nil
}

// newSocket opens a non-blocking UDP socket of a's family.
func newSocket(a netip.Addr) (int, error) {
	fam := unix.AF_INET6
	if a.Is4() {
		fam = unix.AF_INET
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("batchio: socket: %w", err)
	}
	return fd, nil
}

// setup sets every option in so, then the buffer sizes.
func setup(fd int, so []sockopt, rcvbuf, sndbuf int) error {
	for _, o := range so {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.value); err != nil {
			return fmt.Errorf("batchio: setsockopt %s: %w", o.name, err)
		}
	}
	if err := setBuffer(fd, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, rcvbuf, "SO_RCVBUF"); err != nil {
		return err
	}
	return setBuffer(fd, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, sndbuf, "SO_SNDBUF")
}

// setBuffer sets a socket buffer size, trying the FORCE variant first.
func setBuffer(fd, force, plain, size int, name string) error {
	if size <= 0 {
		return nil
	}
	// The FORCE variant fails with EPERM without CAP_NET_ADMIN; that is
	// expected, so its error is dropped and the clamped variant used.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, size) == nil {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, size); err != nil {
		return fmt.Errorf("batchio: setsockopt %s: %w", name, err)
	}
	return nil
}

func bind(fd int, ap netip.AddrPort) error {
	if err := sockaddrCall(unix.SYS_BIND, fd, ap); err != nil {
		return fmt.Errorf("batchio: bind %v: %w", ap, err)
	}
	return nil
}

// sockaddrCall makes a bind or connect system call with ap encoded on the
// stack: unix.Bind and unix.Connect take a Sockaddr interface, which
// allocates on every new flow.
func sockaddrCall(trap uintptr, fd int, ap netip.AddrPort) error {
	var b [sockaddrLen]byte
	n := putSockaddr(&b, ap)
	if _, _, e := unix.Syscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(n)); e != 0 {
		return e
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ProbeOffload reports whether this kernel accepts UDP_GRO (receive
// coalescing, Linux 5.0) and UDP_SEGMENT (send segmentation, Linux 4.18) on
// a UDP socket, by setting both on a throwaway IPv4 socket. It cannot tell
// whether a given route or device will take a GSO send; that shows as
// [IsGSOError] on the send.
func ProbeOffload() (gro, gso bool) {
	fd, err := newSocket(netip.IPv4Unspecified())
	if err != nil {
		return false, false
	}
	defer unix.Close(fd)
	gro = unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_GRO, 1) == nil
	gso = unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_SEGMENT, 1200) == nil
	return gro, gso
}
