package shard

import (
	"net/netip"
	"testing"
	"time"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/core"
	"golang.org/x/sys/unix"
)

// TestFlowPathAllocatesNothing: datagrams of an established flow and their
// replies through a live shard, client and backend on allocation-free raw
// sockets, measured by testing.AllocsPerRun over the whole process: the
// receive, core, send and reply paths allocate nothing, with the per-source
// limit and the amplification guard switched on so their checks run too.
func TestFlowPathAllocatesNothing(t *testing.T) {
	if raceEnabled() {
		t.Skip("the race detector allocates")
	}
	backend, stop := rawResponder(t)
	defer stop()
	o := oneListener("127.0.0.1:0", core.ClusterConfig{MaxAmplification: 10}, fixedPicker{{ID: 0, Addr: backend}})
	o.Core.Admission = core.AdmissionConfig{Interval: time.Second, Burst: 10}
	g := startGroup(t, o)
	fd, err := batchio.DialUpstream(netip.AddrPort{}, g.addr(), batchio.DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	payload := make([]byte, 64)
	roundTrip := rawRoundTrip(t, fd, payload, func(reply []byte) {
		if len(reply) != len(payload) || reply[2]&0x80 == 0 {
			t.Fatalf("reply of %d bytes, not the responder's", len(reply))
		}
	})
	for range 200 { // warm up: the flow, its upstream socket, buffers
		roundTrip()
	}
	if allocs := testing.AllocsPerRun(2000, roundTrip); allocs > 0.01 {
		t.Fatalf("%.3f allocations per round trip of an established flow", allocs)
	}
	if n := g.listener(ListenerFlowsCreated); n != 1 {
		t.Fatalf("%d flows created, want the one established flow", n)
	}
}

// rawRoundTrip returns a function that sends req on the connected socket fd
// and waits for one reply, handed to check, with batchio's allocation-free
// calls, so that testing.AllocsPerRun over it counts only the proxy's
// allocations.
func rawRoundTrip(t *testing.T, fd int, req []byte, check func(reply []byte)) func() {
	b := batchio.NewBatch(1)
	send := []batchio.Message{{Buf: req}}
	recv := []batchio.Message{{Buf: make([]byte, 2048)}}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	return func() {
		if _, err := b.Send(fd, send); err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := unix.Poll(pfd, 5000); err != nil && err != unix.EINTR {
				t.Fatal(err)
			}
			if n, _ := b.Recv(fd, recv); n == 1 {
				check(recv[0].Buf[:recv[0].N])
				return
			}
		}
	}
}
