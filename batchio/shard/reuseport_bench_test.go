package shard

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
)

// BenchmarkReuseportConnectedScan measures what connected sockets in a
// listener's SO_REUSEPORT group cost every other datagram to that port:
// the design that would isolate established clients from a new-flow flood
// (a listener-side socket connected to each established client, which the
// kernel prefers for that 4-tuple) puts them there. Once a group holds a
// connected socket (reuseport_has_conns), udp4_lib_lookup2 no longer
// returns the group's pick at once but scores every socket bound to the
// address and port, so each datagram of a flood from new sources walks
// them all. One unconnected sender sends 64-byte datagrams to the group's
// one unconnected socket, which this goroutine drains; conns=N is the
// number of connected sockets in the group. On loopback the receive path
// runs in the sender's thread, so cpu-ns/datagram (this thread's CPU time,
// RUSAGE_THREAD) is send + kernel lookup + enqueue + receive.
func BenchmarkReuseportConnectedScan(b *testing.B) {
	for _, n := range []int{0, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) { benchConnectedScan(b, n) })
	}
}

func benchConnectedScan(b *testing.B, conns int) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	addr := netip.MustParseAddrPort("127.0.0.1:0")
	lfd, err := batchio.ListenUDP(addr, batchio.ListenOptions{RecvBuffer: 8 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(lfd)
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		b.Fatal(err)
	}
	port := uint16(sa.(*unix.SockaddrInet4).Port)
	laddr := netip.AddrPortFrom(addr.Addr(), port)
	for i := range conns {
		fd, err := batchio.ListenUDP(laddr, batchio.ListenOptions{})
		if err != nil {
			b.Skipf("connected socket %d: %v (open-file limit?)", i, err)
		}
		defer unix.Close(fd)
		peer := &unix.SockaddrInet4{Port: 1000 + i%60000, Addr: [4]byte{127, 0, 2, byte(1 + i/60000)}}
		if err := unix.Connect(fd, peer); err != nil {
			b.Fatal(err)
		}
	}
	sfd, err := batchio.ListenUDP(netip.MustParseAddrPort("127.0.0.3:0"), batchio.ListenOptions{SendBuffer: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(sfd)
	tx, rx := batchio.NewBatch(64), batchio.NewBatch(64)
	out := make([]batchio.Message, 64)
	for i := range out {
		out[i] = batchio.Message{Buf: make([]byte, 64), Addr: laddr}
	}
	in := newMessages(64, 2048)
	c0 := threadCPU()
	b.ResetTimer()
	for sent := 0; sent < b.N; {
		n := min(64, b.N-sent)
		k, err := tx.Send(sfd, out[:n])
		if err != nil {
			b.Fatal(err)
		}
		sent += k
		for got := 0; got < k; {
			r, err := rx.Recv(lfd, in)
			if err != nil {
				b.Fatalf("after %d of %d: %v", got, k, err)
			}
			got += r
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((threadCPU()-c0).Nanoseconds())/float64(b.N), "cpu-ns/datagram")
}

// threadCPU returns the calling thread's user and system time.
func threadCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_THREAD, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
