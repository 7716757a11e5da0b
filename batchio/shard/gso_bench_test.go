package shard

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/core"
)

// Upload shape: each request is one client GSO send of uploadSegs
// datagrams of uploadSeg bytes; the backend acks the last one.
const (
	uploadSegs  = 32
	uploadSeg   = 1200
	uploadConns = 4
)

// uploadSink is a UDP_GRO backend for BenchmarkGSOProxyUpload: it strips a
// PROXY v2 header from every datagram that has one, and answers the last
// segment of each run (its first payload byte is the segment index) with a
// 16-byte ack to the sender.
func uploadSink(tb testing.TB) netip.AddrPort {
	fd, err := batchio.ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), batchio.ListenOptions{GRO: true, RecvBuffer: 8 << 20})
	if err != nil {
		tb.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		tb.Fatal(err)
	}
	a := sa.(*unix.SockaddrInet4)
	addr := netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		b := batchio.NewBatch(16)
		rx := make([]batchio.Message, 16)
		for i := range rx {
			rx[i].Buf = make([]byte, batchio.GROBufferSize)
		}
		acks := make([]batchio.Message, 0, 16)
		ack := make([]byte, 16)
		for {
			select {
			case <-done:
				return
			default:
			}
			n, err := b.Recv(fd, rx)
			if err != nil {
				fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				_, _ = unix.Poll(fds, 50)
				continue
			}
			acks = acks[:0]
			for i := range n {
				m := &rx[i]
				data, seg := m.Buf[:m.N], m.SegmentSize
				if seg <= 0 || seg > len(data) {
					seg = len(data)
				}
				for off := 0; off < len(data); off += seg {
					d := data[off:min(off+seg, len(data))]
					if len(d) >= 16 && d[0] == 0x0D && d[12] == 0x21 {
						if hl := 16 + int(binary.BigEndian.Uint16(d[14:16])); hl <= len(d) {
							d = d[hl:]
						}
					}
					if len(d) > 0 && d[0] == uploadSegs-1 {
						acks = append(acks, batchio.Message{Buf: ack, Addr: m.Addr})
					}
				}
			}
			if len(acks) > 0 {
				_, _ = b.Send(fd, acks)
			}
		}
	}()
	tb.Cleanup(func() { close(done); wg.Wait(); unix.Close(fd) })
	return addr
}

// BenchmarkGSOProxyUpload measures client→backend GSO runs (32 × 1,200 B
// per request, 4 client sockets with one request in flight each, acked by
// the backend) through one shard, with proxy_protocol off or every and GSO
// on or off on the shard's sockets (GRO on). Besides MB/s (payload) it
// reports the shard's recvmmsg+sendmmsg and GSO sends per MB, and the CPU
// of the whole process (clients, shard and backend) per MB. Compare the
// variants of one run (-count N, benchstat):
//
//	go test -run '^$' -bench BenchmarkGSOProxyUpload -benchtime 3s -count 5 ./batchio/shard/
func BenchmarkGSOProxyUpload(b *testing.B) {
	for _, proxy := range []core.ProxyMode{core.ProxyOff, core.ProxyEvery} {
		for _, gsoOn := range []bool{true, false} {
			b.Run(fmt.Sprintf("proxy=%v/gso=%v", proxy, gsoOn), func(b *testing.B) {
				benchmarkUpload(b, proxy, !gsoOn)
			})
		}
	}
}

func benchmarkUpload(b *testing.B, proxy core.ProxyMode, noGSO bool) {
	sink := uploadSink(b)
	o := oneListener("127.0.0.1:0", core.ClusterConfig{ProxyProtocol: proxy}, fixedPicker{{ID: 0, Addr: sink}})
	o.GRO, o.NoGSO = true, noGSO
	o.SocketRecvBuffer, o.SocketSendBuffer = 4<<20, 4<<20
	o.Listen.RecvBuffer = 8 << 20
	g := startGroup(b, o)
	run := make([]byte, uploadSegs*uploadSeg)
	for i := range uploadSegs {
		run[i*uploadSeg] = byte(i)
	}
	type client struct {
		fd int
		b  *batchio.Batch
	}
	clients := make([]client, uploadConns)
	for i := range clients {
		fd, err := batchio.DialUpstream(netip.AddrPort{}, g.addr(), batchio.DialOptions{SendBuffer: 4 << 20})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { unix.Close(fd) })
		clients[i] = client{fd, batchio.NewBatch(4)}
	}
	// roundTrip sends one run on c and waits for its ack, resending after
	// a silence (a lost segment).
	roundTrip := func(c client, rx []batchio.Message) {
		msg := []batchio.Message{{Buf: run, SegmentSize: uploadSeg}}
		for {
			if _, err := c.b.Send(c.fd, msg); err != nil && batchio.Classify(err) != batchio.KindWouldBlock {
				b.Error(err)
				return
			}
			fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
			if n, _ := unix.Poll(fds, 200); n > 0 {
				if k, _ := c.b.Recv(c.fd, rx); k > 0 {
					return
				}
			}
		}
	}
	rxs := make([][]batchio.Message, uploadConns)
	for i := range rxs {
		rxs[i] = []batchio.Message{{Buf: make([]byte, 64)}}
		roundTrip(clients[i], rxs[i]) // open the flows
	}
	time.Sleep(50 * time.Millisecond) // counters settle
	calls0 := g.shard(ShardRecvmmsg) + g.shard(ShardSendmmsg)
	gso0 := g.shard(ShardGSOSends)
	var ru0, ru1 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	b.SetBytes(int64(len(run)))
	b.ResetTimer()
	var wg sync.WaitGroup
	per := (b.N + uploadConns - 1) / uploadConns
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				roundTrip(clients[i], rxs[i])
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	time.Sleep(50 * time.Millisecond) // the shard publishes counters once per loop
	mb := float64(per*uploadConns*len(run)) / 1e6
	b.ReportMetric(float64(g.shard(ShardRecvmmsg)+g.shard(ShardSendmmsg)-calls0)/mb, "syscalls/MB")
	b.ReportMetric(float64(g.shard(ShardGSOSends)-gso0)/mb, "gso-sends/MB")
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) / time.Microsecond
	b.ReportMetric(float64(cpu)/mb, "cpu-µs/MB")
}
