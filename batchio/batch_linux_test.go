package batchio

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestMmsghdrSize(t *testing.T) {
	// struct mmsghdr is 64 bytes on 64-bit kernels and 32 on 32-bit ones;
	// a wrong size would make the kernel read garbage from the second
	// header on.
	want := uintptr(64)
	if unsafe.Sizeof(uintptr(0)) == 4 {
		want = 32
	}
	if got := unsafe.Sizeof(mmsghdr{}); got != want {
		t.Fatalf("sizeof(mmsghdr) = %d, want %d", got, want)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name, listen string
	}{
		{"v4", "127.0.0.1:0"},
		{"v6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "v6" {
				requireIPv6(t)
			}
			srv, srvAddr := listen(t, tc.listen, ListenOptions{})
			cli, cliAddr := dial(t, srvAddr, DialOptions{})
			b := NewBatch(16)

			const count = 10
			out := make([]Message, count)
			for i := range out {
				out[i].Buf = fmt.Appendf(nil, "ping %d", i)
			}
			send(t, b, cli, out)

			in := recvN(t, b, srv, makeMsgs(count, 2048), count)
			for i, m := range in {
				if got, want := string(m.Buf[:m.N]), fmt.Sprintf("ping %d", i); got != want {
					t.Errorf("datagram %d = %q, want %q", i, got, want)
				}
				if m.Addr != cliAddr {
					t.Errorf("datagram %d: Addr = %v, want %v", i, m.Addr, cliAddr)
				}
				if m.Local != srvAddr.Addr() {
					t.Errorf("datagram %d: Local = %v, want %v", i, m.Local, srvAddr.Addr())
				}
				if m.IfIndex != loIndex(t) {
					t.Errorf("datagram %d: IfIndex = %d, want lo (%d)", i, m.IfIndex, loIndex(t))
				}
				if m.Flags != 0 || m.SegmentSize != 0 || m.TOS != 0 {
					t.Errorf("datagram %d: Flags %v SegmentSize %d TOS %#x, want zero", i, m.Flags, m.SegmentSize, m.TOS)
				}
			}
			expectEmpty(t, b, srv)

			replies := make([]Message, count)
			for i, m := range in {
				replies[i] = Message{Buf: fmt.Appendf(nil, "pong %d", i), Addr: m.Addr, Local: m.Local}
			}
			send(t, b, srv, replies)
			for i, m := range recvN(t, b, cli, makeMsgs(count, 2048), count) {
				if got, want := string(m.Buf[:m.N]), fmt.Sprintf("pong %d", i); got != want {
					t.Errorf("reply %d = %q, want %q", i, got, want)
				}
				if m.Addr != srvAddr {
					t.Errorf("reply %d: Addr = %v, want %v", i, m.Addr, srvAddr)
				}
			}
		})
	}
}

// TestWildcardLocal checks that a wildcard listener learns which address a
// client used and can answer from it: loopback accepts all of 127/8, so a
// datagram to 127.0.0.2 reaches 0.0.0.0, and a reply without Local would
// leave from 127.0.0.1, which a real client would drop.
func TestWildcardLocal(t *testing.T) {
	for _, tc := range []struct {
		name, listen string
	}{
		{"v4", "0.0.0.0:0"},
		{"dual-stack", "[::]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "dual-stack" {
				requireIPv6(t)
			}
			srv, srvAddr := listen(t, tc.listen, ListenOptions{})
			cli, cliAddr := listen(t, "127.0.0.1:0", ListenOptions{})
			vip := netip.MustParseAddr("127.0.0.2")
			b := NewBatch(4)

			send(t, b, cli, []Message{{Buf: []byte("hello"), Addr: netip.AddrPortFrom(vip, srvAddr.Port())}})
			m := recvN(t, b, srv, makeMsgs(1, 2048), 1)[0]
			if m.Local != vip {
				t.Errorf("Local = %v, want %v", m.Local, vip)
			}
			if m.Addr != cliAddr {
				t.Errorf("Addr = %v, want %v (unmapped)", m.Addr, cliAddr)
			}

			send(t, b, srv, []Message{{Buf: []byte("from vip"), Addr: m.Addr, Local: m.Local, IfIndex: m.IfIndex}})
			r := recvN(t, b, cli, makeMsgs(1, 2048), 1)[0]
			if want := netip.AddrPortFrom(vip, srvAddr.Port()); r.Addr != want {
				t.Errorf("reply with Local from %v, want %v", r.Addr, want)
			}

			send(t, b, srv, []Message{{Buf: []byte("kernel's choice"), Addr: m.Addr}})
			r = recvN(t, b, cli, makeMsgs(1, 2048), 1)[0]
			if want := netip.MustParseAddr("127.0.0.1"); r.Addr.Addr() != want {
				t.Errorf("reply without Local from %v, want %v (test premise)", r.Addr, want)
			}
		})
	}
}

func TestTOS(t *testing.T) {
	const perMessage, perSocket = 0xb9, 0x2a // DSCP EF + ECT(1); AF11 + ECT(0)
	for _, tc := range []struct {
		name, listen, cli string
		connected         bool
		level, opt        int
	}{
		{"v4", "127.0.0.1:0", "127.0.0.1:0", false, unix.SOL_IP, unix.IP_TOS},
		{"v4-connected", "127.0.0.1:0", "", true, unix.SOL_IP, unix.IP_TOS},
		{"v6", "[::1]:0", "[::1]:0", false, unix.SOL_IPV6, unix.IPV6_TCLASS},
		{"v6-connected", "[::1]:0", "", true, unix.SOL_IPV6, unix.IPV6_TCLASS},
		{"dual-stack-v4", "[::]:0", "127.0.0.1:0", false, unix.SOL_IP, unix.IP_TOS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.listen[0] == '[' {
				requireIPv6(t)
			}
			srv, srvAddr := listen(t, tc.listen, ListenOptions{})
			dst := srvAddr
			if tc.name == "dual-stack-v4" {
				dst = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), srvAddr.Port())
			}
			var cli int
			if tc.connected {
				// No Addr and no Local: Send writes both IP_TOS and
				// IPV6_TCLASS and the kernel uses the right one.
				cli, _ = dial(t, dst, DialOptions{})
				dst = netip.AddrPort{}
			} else {
				cli, _ = listen(t, tc.cli, ListenOptions{})
			}
			b := NewBatch(4)

			send(t, b, cli, []Message{
				{Buf: []byte("marked"), Addr: dst, TOS: perMessage},
				{Buf: []byte("default"), Addr: dst},
			})
			in := recvN(t, b, srv, makeMsgs(2, 2048), 2)
			if in[0].TOS != perMessage || in[1].TOS != 0 {
				t.Errorf("per-message TOS received as %#x, %#x; want %#x, 0", in[0].TOS, in[1].TOS, perMessage)
			}

			if err := unix.SetsockoptInt(cli, tc.level, tc.opt, perSocket); err != nil {
				t.Fatal(err)
			}
			send(t, b, cli, []Message{{Buf: []byte("socket"), Addr: dst}})
			if m := recvN(t, b, srv, makeMsgs(1, 2048), 1)[0]; m.TOS != perSocket {
				t.Errorf("socket TOS received as %#x, want %#x", m.TOS, perSocket)
			}
		})
	}
}

func TestTruncated(t *testing.T) {
	srv, srvAddr := listen(t, "127.0.0.1:0", ListenOptions{})
	cli, _ := dial(t, srvAddr, DialOptions{})
	b := NewBatch(4)
	send(t, b, cli, []Message{{Buf: make([]byte, 2000)}, {Buf: make([]byte, 100)}})
	in := recvN(t, b, srv, makeMsgs(2, 100), 2)
	if in[0].Flags != FlagTruncated || in[0].N != 100 {
		t.Errorf("oversized datagram: N %d Flags %v, want 100 and FlagTruncated", in[0].N, in[0].Flags)
	}
	if in[1].Flags != 0 || in[1].N != 100 {
		t.Errorf("fitting datagram: N %d Flags %v, want 100 and none", in[1].N, in[1].Flags)
	}
}

// TestControlTruncated checks that a control buffer too small for the
// enabled options is reported, not silently ignored.
func TestControlTruncated(t *testing.T) {
	srv, srvAddr := listen(t, "127.0.0.1:0", ListenOptions{})
	cli, _ := dial(t, srvAddr, DialOptions{})
	send(t, NewBatch(1), cli, []Message{{Buf: []byte("x")}})
	b := newBatch(1, spaceInt) // room for IP_TOS but not IP_PKTINFO
	m := recvN(t, b, srv, makeMsgs(1, 100), 1)[0]
	if m.Flags&FlagControlTruncated == 0 {
		t.Errorf("Flags = %v, want FlagControlTruncated", m.Flags)
	}
}

func TestHeaderIovec(t *testing.T) {
	srv, srvAddr := listen(t, "127.0.0.1:0", ListenOptions{})
	cli, _ := listen(t, "127.0.0.1:0", ListenOptions{})
	b := NewBatch(4)
	hdr := []byte("\r\n\r\n\x00\r\nQUIT\n!HEADER")
	send(t, b, cli, []Message{
		{Header: hdr, Buf: []byte("payload"), Addr: srvAddr},
		{Header: hdr, Buf: nil, Addr: srvAddr},
		{Buf: []byte("no header"), Addr: srvAddr},
	})
	in := recvN(t, b, srv, makeMsgs(3, 2048), 3)
	for i, want := range [][]byte{append(hdr[:len(hdr):len(hdr)], "payload"...), hdr, []byte("no header")} {
		if got := in[i].Buf[:in[i].N]; !bytes.Equal(got, want) {
			t.Errorf("datagram %d = %q, want %q", i, got, want)
		}
	}
}

// TestGSOToGRO relies on loopback passing a GSO super-datagram through
// unsegmented (kernel 5.11+, NETIF_F_GSO_UDP_L4 in lo's GSO_SOFTWARE): a
// UDP_GRO socket gets it as one read with the segment size, and a plain
// socket gets the datagrams split back.
func TestGSOToGRO(t *testing.T) {
	const seg, full, tail = 1200, 10, 500
	payload := make([]byte, full*seg+tail)
	for i := range payload {
		payload[i] = byte(i / seg)
	}
	for _, fam := range []struct{ name, listen string }{
		{"v4", "127.0.0.1:0"},
		{"v6", "[::1]:0"},
	} {
		t.Run(fam.name+"/gro", func(t *testing.T) {
			if fam.name == "v6" {
				requireIPv6(t)
			}
			srv, srvAddr := listen(t, fam.listen, ListenOptions{GRO: true})
			cli, _ := dial(t, srvAddr, DialOptions{})
			b := NewBatch(4)
			send(t, b, cli, []Message{{Buf: payload, SegmentSize: seg}})
			m := recvN(t, b, srv, makeMsgs(1, GROBufferSize), 1)[0]
			if m.N == seg && m.SegmentSize == 0 {
				skipOrFail(t, "loopback split the GSO send before a UDP_GRO socket (kernel < 5.11?)")
			}
			if m.N != len(payload) || m.SegmentSize != seg || m.Flags != 0 {
				t.Fatalf("got N %d SegmentSize %d Flags %v; want %d, %d, 0", m.N, m.SegmentSize, m.Flags, len(payload), seg)
			}
			if !bytes.Equal(m.Buf[:m.N], payload) {
				t.Error("coalesced payload differs")
			}
			expectEmpty(t, b, srv)
		})
		t.Run(fam.name+"/plain", func(t *testing.T) {
			if fam.name == "v6" {
				requireIPv6(t)
			}
			srv, srvAddr := listen(t, fam.listen, ListenOptions{})
			cli, _ := dial(t, srvAddr, DialOptions{})
			b := NewBatch(16)
			send(t, b, cli, []Message{{Buf: payload, SegmentSize: seg}})
			in := recvN(t, b, srv, makeMsgs(full+1, 2048), full+1)
			for i, m := range in {
				want := payload[i*seg : min((i+1)*seg, len(payload))]
				if !bytes.Equal(m.Buf[:m.N], want) || m.SegmentSize != 0 {
					t.Errorf("segment %d: %d bytes, SegmentSize %d; want %d bytes, 0", i, m.N, m.SegmentSize, len(want))
				}
			}
			expectEmpty(t, b, srv)
		})
	}
}

// TestRefused checks ICMP port-unreachable handling on a connected
// socket: the error surfaces on the next call, as ECONNREFUSED with n = 0
// and the failed message not sent, and the socket stays usable.
func TestRefused(t *testing.T) {
	srv, err := ListenUDP(netip.MustParseAddrPort("127.0.0.1:0"), ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	srvAddr := localAddr(t, srv)
	unix.Close(srv) // nothing listens on srvAddr any more
	cli, _ := dial(t, srvAddr, DialOptions{})
	b := NewBatch(4)

	waitRefused := func() {
		t.Helper()
		send(t, b, cli, []Message{{Buf: []byte("into the void")}})
		// The ICMP error sets sk_err, which poll reports as POLLERR.
		if waitFor(cli, unix.POLLOUT, testTimeout)&unix.POLLERR == 0 {
			t.Fatal("no ICMP error reported within the timeout")
		}
	}

	waitRefused()
	n, err := b.Send(cli, make([]Message, 3))
	if n != 0 || !errors.Is(err, unix.ECONNREFUSED) || Classify(err) != KindRefused {
		t.Fatalf("Send after ICMP error = %d, %v (%v); want 0, ECONNREFUSED (refused)", n, err, Classify(err))
	}

	waitRefused()
	n, err = b.Recv(cli, makeMsgs(4, 100))
	if n != 0 || !errors.Is(err, unix.ECONNREFUSED) || Classify(err) != KindRefused {
		t.Fatalf("Recv after ICMP error = %d, %v (%v); want 0, ECONNREFUSED (refused)", n, err, Classify(err))
	}
	if n, err := b.Recv(cli, makeMsgs(4, 100)); Classify(err) != KindWouldBlock {
		t.Fatalf("Recv after the error was consumed = %d, %v; want EAGAIN", n, err)
	}
}

// TestSendFailsMidBatch checks the Send contract on a message the kernel
// rejects in the middle of a batch: sendmmsg returns the short count, the
// retry fails on that message alone, and n points at it. The bad message
// is a GSO send of more than UDP_MAX_SEGMENTS (128 on this kernel) segments,
// which udp_send_skb rejects with EINVAL.
func TestSendFailsMidBatch(t *testing.T) {
	srv, srvAddr := listen(t, "127.0.0.1:0", ListenOptions{})
	cli, _ := dial(t, srvAddr, DialOptions{})
	b := NewBatch(4)
	msgs := []Message{
		{Buf: []byte("first")},
		{Buf: make([]byte, 200*8), SegmentSize: 8},
		{Buf: []byte("third")},
	}
	n, err := b.Send(cli, msgs)
	if n != 1 || err == nil || !IsGSOError(err) || Classify(err) != KindOther {
		t.Fatalf("Send = %d, %v; want 1 and a GSO error (EINVAL)", n, err)
	}
	send(t, b, cli, msgs[n+1:])
	for i, m := range recvN(t, b, srv, makeMsgs(2, 64), 2) {
		if got, want := string(m.Buf[:m.N]), []string{"first", "third"}[i]; got != want {
			t.Errorf("datagram %d = %q, want %q", i, got, want)
		}
	}
	expectEmpty(t, b, srv)
}

func TestRecvErrors(t *testing.T) {
	srv, _ := listen(t, "127.0.0.1:0", ListenOptions{})
	b := NewBatch(4)
	if n, err := b.Recv(srv, makeMsgs(4, 100)); n != 0 || !errors.Is(err, unix.EAGAIN) || Classify(err) != KindWouldBlock {
		t.Errorf("Recv on empty socket = %d, %v; want 0, EAGAIN", n, err)
	}
	if n, err := b.Recv(srv, nil); n != 0 || err != nil {
		t.Errorf("Recv of no messages = %d, %v; want 0, nil", n, err)
	}
	if n, err := b.Recv(-1, makeMsgs(1, 100)); n != 0 || Classify(err) != KindClosed {
		t.Errorf("Recv on fd -1 = %d, %v (%v); want closed", n, err, Classify(err))
	}
	if n, err := b.Send(-1, makeMsgs(1, 100)); n != 0 || Classify(err) != KindClosed {
		t.Errorf("Send on fd -1 = %d, %v (%v); want closed", n, err, Classify(err))
	}
}

// TestSendChunks checks that Send splits more messages than the batch
// holds into several calls, in order.
func TestSendChunks(t *testing.T) {
	srv, srvAddr := listen(t, "127.0.0.1:0", ListenOptions{})
	cli, _ := dial(t, srvAddr, DialOptions{})
	b := NewBatch(4)
	out := make([]Message, 10)
	for i := range out {
		out[i].Buf = []byte{byte(i)}
	}
	send(t, b, cli, out)
	for i, m := range recvN(t, NewBatch(16), srv, makeMsgs(10, 16), 10) {
		if m.N != 1 || m.Buf[0] != byte(i) {
			t.Errorf("datagram %d = %v, want [%d]", i, m.Buf[:m.N], i)
		}
	}
}

// TestDrops overflows a small receive buffer and checks that the next
// datagram carries the kernel's drop counter.
func TestDrops(t *testing.T) {
	srv, srvAddr := listen(t, "127.0.0.1:0", ListenOptions{RecvBuffer: 4096})
	cli, _ := dial(t, srvAddr, DialOptions{})
	b := NewBatch(64)
	flood := make([]Message, 64)
	for i := range flood {
		flood[i].Buf = make([]byte, 1000)
	}
	for range 4 {
		send(t, b, cli, flood)
	}
	in := makeMsgs(64, 2048)
	for {
		if _, err := b.Recv(srv, in); err != nil {
			if Classify(err) != KindWouldBlock {
				t.Fatal(err)
			}
			break
		}
	}
	send(t, b, cli, flood[:1])
	recvN(t, b, srv, in, 1)
	if d, ok := b.Drops(); !ok || d == 0 {
		t.Fatalf("Drops() = %d, %v after overflowing a 4 KiB buffer; want > 0, true", d, ok)
	}
}

// TestZeroAllocs checks that a full batch costs no allocation in steady
// state, with every send control message and address in use.
func TestZeroAllocs(t *testing.T) {
	for _, tc := range []struct{ name, listen string }{
		{"v4", "127.0.0.1:0"},
		{"v6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "v6" {
				requireIPv6(t)
			}
			srv, srvAddr := listen(t, tc.listen, ListenOptions{RecvBuffer: 1 << 20})
			cli, _ := listen(t, tc.listen, ListenOptions{})
			b := NewBatch(DefaultBatchSize)
			out := make([]Message, b.Size())
			for i := range out {
				out[i] = Message{Buf: make([]byte, 64), Addr: srvAddr, Local: srvAddr.Addr(), TOS: 1, Header: []byte("h")}
			}
			in := makeMsgs(b.Size(), 2048)
			roundTrip := func() {
				send(t, b, cli, out)
				recvN(t, b, srv, in, len(in))
			}
			roundTrip() // warm up
			if a := testing.AllocsPerRun(50, roundTrip); a != 0 {
				t.Errorf("Send+Recv of %d datagrams: %v allocations, want 0", len(out), a)
			}
			if a := testing.AllocsPerRun(50, func() { send(t, b, cli, out) }); a != 0 {
				t.Errorf("Send of %d datagrams: %v allocations, want 0", len(out), a)
			}
			if a := testing.AllocsPerRun(50, func() { _, _ = b.Recv(cli, in) }); a != 0 {
				t.Errorf("Recv returning EAGAIN: %v allocations, want 0", a)
			}
		})
	}
}

func BenchmarkRecvSend(b *testing.B) {
	for _, batch := range []int{1, 64} {
		for _, size := range []int{64, 1200} {
			b.Run(fmt.Sprintf("batch=%d/size=%d", batch, size), func(b *testing.B) {
				benchmarkRecvSend(b, batch, size)
			})
		}
	}
}

// benchmarkRecvSend sends batch datagrams of size bytes from a connected
// socket to a listener and reads them back, per iteration.
func benchmarkRecvSend(b *testing.B, batch, size int) {
	srv, srvAddr := listen(b, "127.0.0.1:0", ListenOptions{RecvBuffer: 4 << 20})
	cli, _ := dial(b, srvAddr, DialOptions{SendBuffer: 4 << 20})
	bt := NewBatch(batch)
	out := makeMsgs(batch, size)
	in := makeMsgs(batch, 2048)
	b.ReportAllocs()
	b.SetBytes(int64(batch * size))
	iters := 0
	for b.Loop() {
		send(b, bt, cli, out)
		recvN(b, bt, srv, in, batch)
		iters++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(iters*batch), "ns/datagram")
}
