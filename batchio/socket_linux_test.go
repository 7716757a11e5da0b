package batchio

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func getsockopt(t *testing.T, fd, level, opt int) int {
	t.Helper()
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		t.Fatalf("getsockopt(%d, %d): %v", level, opt, err)
	}
	return v
}

type optCheck struct {
	name       string
	level, opt int
	want       int
}

func checkOpts(t *testing.T, fd int, checks []optCheck) {
	t.Helper()
	for _, c := range checks {
		if got := getsockopt(t, fd, c.level, c.opt); got != c.want {
			t.Errorf("%s = %d, want %d", c.name, got, c.want)
		}
	}
}

func TestListenUDP(t *testing.T) {
	common := []optCheck{
		{"SO_REUSEADDR", unix.SOL_SOCKET, unix.SO_REUSEADDR, 1},
		{"SO_REUSEPORT", unix.SOL_SOCKET, unix.SO_REUSEPORT, 1},
		{"SO_RXQ_OVFL", unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1},
	}
	for _, tc := range []struct {
		name, addr string
		opts       ListenOptions
		checks     []optCheck
	}{
		{"v4", "127.0.0.1:0", ListenOptions{GRO: true}, []optCheck{
			{"IP_PKTINFO", unix.SOL_IP, unix.IP_PKTINFO, 1},
			{"IP_RECVTOS", unix.SOL_IP, unix.IP_RECVTOS, 1},
			{"UDP_GRO", unix.SOL_UDP, unix.UDP_GRO, 1},
		}},
		{"v4-mapped gives v4", "[::ffff:127.0.0.1]:0", ListenOptions{}, []optCheck{
			{"SO_DOMAIN", unix.SOL_SOCKET, unix.SO_DOMAIN, unix.AF_INET},
			{"UDP_GRO", unix.SOL_UDP, unix.UDP_GRO, 0},
		}},
		{"dual-stack", "[::]:0", ListenOptions{}, []optCheck{
			{"IPV6_V6ONLY", unix.SOL_IPV6, unix.IPV6_V6ONLY, 0},
			{"IPV6_RECVPKTINFO", unix.SOL_IPV6, unix.IPV6_RECVPKTINFO, 1},
			{"IPV6_RECVTCLASS", unix.SOL_IPV6, unix.IPV6_RECVTCLASS, 1},
			{"IP_RECVTOS", unix.SOL_IP, unix.IP_RECVTOS, 1},
		}},
		{"v6only", "[::]:0", ListenOptions{V6Only: true}, []optCheck{
			{"IPV6_V6ONLY", unix.SOL_IPV6, unix.IPV6_V6ONLY, 1},
			{"IP_RECVTOS", unix.SOL_IP, unix.IP_RECVTOS, 0},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.addr[1] == ':' {
				requireIPv6(t)
			}
			fd, addr := listen(t, tc.addr, tc.opts)
			checkOpts(t, fd, append(common, tc.checks...))
			fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
			if err != nil || fl&unix.O_NONBLOCK == 0 {
				t.Errorf("O_NONBLOCK not set (flags %#x, %v)", fl, err)
			}
			fdfl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
			if err != nil || fdfl&unix.FD_CLOEXEC == 0 {
				t.Errorf("FD_CLOEXEC not set (flags %#x, %v)", fdfl, err)
			}
			// SO_REUSEPORT: a second shard socket binds the same address.
			listen(t, addr.String(), tc.opts)
		})
	}
	if _, err := ListenUDP(netip.AddrPort{}, ListenOptions{}); err == nil {
		t.Error("ListenUDP of the zero address succeeded")
	}
}

func TestBufferSizes(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		fd, _ := listen(t, "127.0.0.1:0", ListenOptions{RecvBuffer: 64 << 10, SendBuffer: 64 << 10})
		// The kernel stores twice the value asked for.
		checkOpts(t, fd, []optCheck{
			{"SO_RCVBUF", unix.SOL_SOCKET, unix.SO_RCVBUF, 128 << 10},
			{"SO_SNDBUF", unix.SOL_SOCKET, unix.SO_SNDBUF, 128 << 10},
		})
	})
	t.Run("force", func(t *testing.T) {
		requireRoot(t)
		// Above any plausible net.core.rmem_max: only SO_RCVBUFFORCE gets it.
		const size = 64 << 20
		fd, _ := listen(t, "127.0.0.1:0", ListenOptions{RecvBuffer: size, SendBuffer: size})
		checkOpts(t, fd, []optCheck{
			{"SO_RCVBUF", unix.SOL_SOCKET, unix.SO_RCVBUF, 2 * size},
			{"SO_SNDBUF", unix.SOL_SOCKET, unix.SO_SNDBUF, 2 * size},
		})
	})
}

func TestDialUpstream(t *testing.T) {
	for _, tc := range []struct {
		name, backend string
		checks        []optCheck
	}{
		{"v4", "127.0.0.1:0", []optCheck{
			{"IP_MTU_DISCOVER", unix.SOL_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE},
			{"IP_RECVTOS", unix.SOL_IP, unix.IP_RECVTOS, 1},
			{"IP_RECVERR", unix.SOL_IP, unix.IP_RECVERR, 0},
			{"UDP_GRO", unix.SOL_UDP, unix.UDP_GRO, 1},
		}},
		{"v6", "[::1]:0", []optCheck{
			{"IPV6_MTU_DISCOVER", unix.SOL_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE},
			{"IPV6_RECVTCLASS", unix.SOL_IPV6, unix.IPV6_RECVTCLASS, 1},
			{"IPV6_RECVERR", unix.SOL_IPV6, unix.IPV6_RECVERR, 0},
			{"UDP_GRO", unix.SOL_UDP, unix.UDP_GRO, 1},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "v6" {
				requireIPv6(t)
			}
			_, backend := listen(t, tc.backend, ListenOptions{})
			fd, _ := dial(t, backend, DialOptions{GRO: true})
			checkOpts(t, fd, append(tc.checks, optCheck{"SO_RXQ_OVFL", unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 0}))
			peer, err := unix.Getpeername(fd)
			if err != nil {
				t.Fatalf("not connected: %v", err)
			}
			var port int
			switch sa := peer.(type) {
			case *unix.SockaddrInet4:
				port = sa.Port
			case *unix.SockaddrInet6:
				port = sa.Port
			}
			if port != int(backend.Port()) {
				t.Errorf("peer port %d, want %d", port, backend.Port())
			}
		})
	}
}

// TestDialUpstreamSharedPort checks explicit source binding: a fixed port
// is shared between upstream sockets to different backends (SO_REUSEADDR),
// and port 0 keeps the chosen source address.
func TestDialUpstreamSharedPort(t *testing.T) {
	_, b1 := listen(t, "127.0.0.1:0", ListenOptions{})
	_, b2 := listen(t, "127.0.0.1:0", ListenOptions{})

	fd, err := DialUpstream(netip.MustParseAddrPort("127.0.0.3:0"), b1, DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	first := localAddr(t, fd)
	if first.Addr() != netip.MustParseAddr("127.0.0.3") || first.Port() == 0 {
		t.Fatalf("bound to %v, want 127.0.0.3 with a port", first)
	}
	unix.Close(fd)

	// Reuse the port just freed for two sockets at once.
	for _, backend := range []netip.AddrPort{b1, b2} {
		fd, err := DialUpstream(first, backend, DialOptions{})
		if err != nil {
			t.Fatalf("DialUpstream(%v -> %v): %v", first, backend, err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if got := localAddr(t, fd); got != first {
			t.Errorf("bound to %v, want %v", got, first)
		}
	}

	if _, err := DialUpstream(netip.MustParseAddrPort("[::1]:0"), b1, DialOptions{}); err == nil {
		t.Error("DialUpstream with mixed families succeeded")
	}
	if _, err := DialUpstream(netip.AddrPort{}, netip.MustParseAddrPort("127.0.0.1:0"), DialOptions{}); err == nil {
		t.Error("DialUpstream to port 0 succeeded")
	}
}

func TestRaiseNoFileLimit(t *testing.T) {
	got, err := RaiseNoFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if got != lim.Cur || lim.Cur != lim.Max {
		t.Errorf("RaiseNoFileLimit = %d; limit now %d/%d, want soft = hard", got, lim.Cur, lim.Max)
	}
}

// TestSpecificPacketInfoOff checks that the option drops IP_PKTINFO only on
// a socket bound to a specific address, never on a wildcard one.
func TestSpecificPacketInfoOff(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want int
	}{{"127.0.0.1:0", 0}, {"0.0.0.0:0", 1}} {
		fd, _ := listen(t, tc.addr, ListenOptions{SpecificPacketInfoOff: true})
		v, err := unix.GetsockoptInt(fd, unix.SOL_IP, unix.IP_PKTINFO)
		if err != nil {
			t.Fatal(err)
		}
		if v != tc.want {
			t.Errorf("%s: IP_PKTINFO %d, want %d", tc.addr, v, tc.want)
		}
	}
}

func TestProbeOffload(t *testing.T) {
	// UDP_GRO is Linux 5.0, UDP_SEGMENT 4.18: every supported kernel has both.
	if gro, gso := ProbeOffload(); !gro || !gso {
		t.Fatalf("ProbeOffload = %v, %v; want true, true", gro, gso)
	}
}
