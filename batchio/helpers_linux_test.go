package batchio

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testTimeout bounds every wait: generous, because the tests share two
// cores with everything else, but finite, so a lost datagram fails fast.
const testTimeout = 10 * time.Second

// skipOrFail skips the test when a prerequisite is missing, except in CI
// (CI=true), where a missing prerequisite is a failure.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("prerequisite missing in CI: "+format, args...)
	}
	t.Skipf(format, args...)
}

// requireRoot skips (or fails in CI) when not running as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root (CAP_NET_ADMIN), running as uid %d", os.Geteuid())
	}
}

// requireIPv6 skips (or fails in CI) when ::1 cannot be bound.
func requireIPv6(t testing.TB) {
	t.Helper()
	fd, err := ListenUDP(netip.MustParseAddrPort("[::1]:0"), ListenOptions{})
	if err != nil {
		skipOrFail(t, "no IPv6 loopback: %v", err)
		return
	}
	unix.Close(fd)
}

func listen(t testing.TB, addr string, opts ListenOptions) (int, netip.AddrPort) {
	t.Helper()
	fd, err := ListenUDP(netip.MustParseAddrPort(addr), opts)
	if err != nil {
		t.Fatalf("ListenUDP(%s): %v", addr, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, localAddr(t, fd)
}

func dial(t testing.TB, backend netip.AddrPort, opts DialOptions) (int, netip.AddrPort) {
	t.Helper()
	fd, err := DialUpstream(netip.AddrPort{}, backend, opts)
	if err != nil {
		t.Fatalf("DialUpstream(%v): %v", backend, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, localAddr(t, fd)
}

func localAddr(t testing.TB, fd int) netip.AddrPort {
	t.Helper()
	ap, err := LocalAddr(fd)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// waitFor polls fd for events until one arrives or d passes.
func waitFor(fd int, events int16, d time.Duration) (revents int16) {
	deadline := time.Now().Add(d)
	for {
		ms := int(time.Until(deadline).Milliseconds())
		if ms <= 0 {
			return 0
		}
		fds := [1]unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(fds[:], ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return 0
		}
		return fds[0].Revents
	}
}

// recvN reads exactly want datagrams into msgs[:want], waiting for
// readiness between calls, and fails the test on timeout or error.
func recvN(t testing.TB, b *Batch, fd int, msgs []Message, want int) []Message {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	got := 0
	for got < want {
		n, err := b.Recv(fd, msgs[got:want])
		if err == nil {
			got += n
			continue
		}
		if Classify(err) != KindWouldBlock {
			t.Fatalf("Recv after %d of %d datagrams: %v", got, want, err)
		}
		if waitFor(fd, unix.POLLIN, time.Until(deadline)) == 0 {
			t.Fatalf("timed out after %d of %d datagrams", got, want)
		}
	}
	return msgs[:want]
}

// expectEmpty fails if fd has a datagram queued.
func expectEmpty(t testing.TB, b *Batch, fd int) {
	t.Helper()
	msgs := makeMsgs(1, 2048)
	if n, err := b.Recv(fd, msgs); Classify(err) != KindWouldBlock {
		t.Fatalf("Recv on drained socket = %d, %v; want EAGAIN", n, err)
	}
}

func makeMsgs(n, size int) []Message {
	msgs := make([]Message, n)
	for i := range msgs {
		msgs[i].Buf = make([]byte, size)
	}
	return msgs
}

func loIndex(t testing.TB) int {
	t.Helper()
	ifi, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	return ifi.Index
}

func send(t testing.TB, b *Batch, fd int, msgs []Message) {
	t.Helper()
	n, err := b.Send(fd, msgs)
	if err != nil || n != len(msgs) {
		t.Fatalf("Send = %d, %v; want %d, nil", n, err, len(msgs))
	}
}
