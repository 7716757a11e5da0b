package shard

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/core"
)

// groPeer is a test endpoint on a batchio socket with UDP_GRO on: it sends
// runs with UDP_SEGMENT and records how datagrams arrive (coalesced or not).
type groPeer struct {
	t    testing.TB
	fd   int
	addr netip.AddrPort
	b    *batchio.Batch
	msgs []batchio.Message
}

type arrival struct {
	from netip.AddrPort
	data []byte
	seg  int
	tos  uint8
}

func newGROPeer(t testing.TB, addr string) *groPeer {
	t.Helper()
	fd, err := batchio.ListenUDP(netip.MustParseAddrPort(addr), batchio.ListenOptions{GRO: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	a := sa.(*unix.SockaddrInet4)
	p := &groPeer{t: t, fd: fd, addr: netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), b: batchio.NewBatch(8)}
	for range 8 {
		p.msgs = append(p.msgs, batchio.Message{Buf: make([]byte, batchio.GROBufferSize)})
	}
	return p
}

// sendRun sends payload to addr as one GSO send of seg-byte segments.
func (p *groPeer) sendRun(to netip.AddrPort, payload []byte, seg int, tos uint8) {
	p.t.Helper()
	m := []batchio.Message{{Buf: payload, Addr: to, SegmentSize: seg, TOS: tos}}
	if _, err := p.b.Send(p.fd, m); err != nil {
		p.t.Fatalf("GSO send: %v", err)
	}
}

// recvBytes reads until want bytes arrived (or the timeout) and returns
// every receive.
func (p *groPeer) recvBytes(want int, timeout time.Duration) []arrival {
	p.t.Helper()
	var got []arrival
	total := 0
	deadline := time.Now().Add(timeout)
	for total < want {
		left := time.Until(deadline)
		if left <= 0 {
			p.t.Fatalf("received %d bytes in %d receives, want %d", total, len(got), want)
		}
		fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(left/time.Millisecond)+1); err != nil && err != unix.EINTR {
			p.t.Fatal(err)
		}
		n, _ := p.b.Recv(p.fd, p.msgs)
		for i := range n {
			m := &p.msgs[i]
			if m.Flags != 0 {
				p.t.Fatalf("receive flags %v", m.Flags)
			}
			got = append(got, arrival{m.Addr, bytes.Clone(m.Buf[:m.N]), m.SegmentSize, m.TOS})
			total += m.N
		}
	}
	return got
}

// expectSilence checks that nothing arrives for a moment.
func (p *groPeer) expectSilence() {
	p.t.Helper()
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	if n, _ := unix.Poll(fds, 100); n > 0 {
		n, _ := p.b.Recv(p.fd, p.msgs)
		p.t.Fatalf("%d unexpected receives, first %d bytes", n, p.msgs[0].N)
	}
}

func pattern(n int, salt byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31) ^ byte(i>>8) ^ salt
	}
	return b
}

func joined(as []arrival) []byte {
	var b []byte
	for _, a := range as {
		b = append(b, a.data...)
	}
	return b
}

// runShape checks how the arrivals were cut: with coalesced, every receive
// of more than one segment must carry seg as its segment size; without,
// every receive must be a single datagram of at most seg bytes.
func runShape(t testing.TB, leg string, as []arrival, seg int, coalesced bool) {
	t.Helper()
	runs := 0
	for _, a := range as {
		switch {
		case a.seg == 0 && len(a.data) > seg:
			t.Errorf("%s: a %d-byte datagram without segment size", leg, len(a.data))
		case a.seg != 0 && a.seg != seg:
			t.Errorf("%s: segment size %d, want %d", leg, a.seg, seg)
		case a.seg != 0 && len(a.data) > seg:
			runs++
		}
	}
	if coalesced && runs == 0 {
		t.Errorf("%s: %d receives, none a coalesced run", leg, len(as))
	}
	if !coalesced && runs > 0 {
		t.Errorf("%s: %d coalesced runs with GRO off", leg, runs)
	}
}

// TestE2EGSORuns sends a UDP_SEGMENT run through fastudp both ways to
// UDP_GRO receivers on loopback: with GRO on it arrives as coalesced runs
// (one GSO send per run on each leg), with GRO off as single datagrams to
// the backend (the replies, read one by one, may be coalesced again); every
// byte arrives in order and ECN bits pass unchanged.
func TestE2EGSORuns(t *testing.T) {
	t.Parallel()
	const (
		reqSeg, reqN = 1000, 10
		repSeg, repN = 1200, 10
		ect1, ect0   = 0x01, 0x02
	)
	for _, tc := range []struct {
		name       string
		gro, noGSO bool
	}{{"gro-on", true, false}, {"gro-off", false, false}, {"gro-on-gso-off", true, true}} {
		gro, coalesced := tc.gro, tc.gro && !tc.noGSO
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			be := newGROPeer(t, "127.0.0.1:0")
			o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.addr}})
			o.GRO, o.NoGSO = gro, tc.noGSO
			g := startGroup(t, o)
			cl := newGROPeer(t, "127.0.0.1:0")

			// Open the flow first: a new flow holds only pending_limit (4)
			// datagrams, counted per segment, until its backend is resolved.
			cl.sendRun(g.addr(), []byte("hello"), 0, ect1)
			if h := be.recvBytes(5, waitTimeout); string(h[0].data) != "hello" {
				t.Fatalf("first datagram %q", h[0].data)
			}
			req := pattern(reqSeg*reqN-300, 1) // a shorter last segment
			cl.sendRun(g.addr(), req, reqSeg, ect1)
			got := be.recvBytes(len(req), waitTimeout)
			if !bytes.Equal(joined(got), req) {
				t.Fatal("request bytes differ")
			}
			runShape(t, "client→backend", got, reqSeg, coalesced)
			for _, a := range got {
				if a.tos != ect1 {
					t.Fatalf("backend got TOS %#x, want %#x", a.tos, ect1)
				}
			}

			rep := pattern(repSeg*repN, 2)
			be.sendRun(got[0].from, rep, repSeg, ect0)
			back := cl.recvBytes(len(rep), waitTimeout)
			if !bytes.Equal(joined(back), rep) {
				t.Fatal("reply bytes differ")
			}
			if tc.gro {
				runShape(t, "backend→client", back, repSeg, coalesced)
			} else {
				// Read as separate datagrams, the reply's segments may
				// still leave as GSO runs: a client's replies within one
				// batch are coalesced (TestE2EGSOCoalesceReplies).
				runShape(t, "backend→client", back, repSeg, len(back) < repN)
			}
			for _, a := range back {
				if a.tos != ect0 {
					t.Fatalf("client got TOS %#x, want %#x", a.tos, ect0)
				}
			}
			g.waitListener(t, "tx datagrams", ListenerTxDatagrams, repN)
			if v := g.listener(ListenerRxDatagrams); v != reqN+1 {
				t.Errorf("rx datagrams %d, want %d", v, reqN+1)
			}
			if runs := g.shard(ShardGRORuns); (runs > 0) != gro {
				t.Errorf("GRO runs %d with GRO %v", runs, gro)
			}
			if sends := g.shard(ShardGSOSends); tc.gro && (sends > 0) != coalesced {
				t.Errorf("GSO sends %d with GRO %v, GSO off %v", sends, gro, tc.noGSO)
			}
			if v := g.shard(ShardGSOFallbacks); v != 0 {
				t.Errorf("%d GSO fallbacks on loopback", v)
			}
		})
	}
}

// TestE2EGSOResponsesCap: responses=3 on a 10-segment reply run forwards
// exactly 3 segments, still as one run; responses=1 (whose upstream sockets
// skip UDP_GRO) forwards exactly the first segment.
func TestE2EGSOResponsesCap(t *testing.T) {
	t.Parallel()
	const seg = 1200
	for _, responses := range []uint32{3, 1} {
		t.Run(fmt.Sprintf("responses=%d", responses), func(t *testing.T) {
			t.Parallel()
			be := newGROPeer(t, "127.0.0.1:0")
			o := oneListener("127.0.0.1:0", core.ClusterConfig{Responses: responses}, fixedPicker{{ID: 0, Addr: be.addr}})
			o.GRO = true
			g := startGroup(t, o)
			cl := newGROPeer(t, "127.0.0.1:0")
			cl.sendRun(g.addr(), []byte("q"), 0, 0)
			got := be.recvBytes(1, waitTimeout)
			rep := pattern(10*seg, 3)
			be.sendRun(got[0].from, rep, seg, 0)
			n := int(responses)
			back := cl.recvBytes(n*seg, waitTimeout)
			if !bytes.Equal(joined(back), rep[:n*seg]) {
				t.Fatalf("the %d forwarded segments differ from the run's first %d", n, n)
			}
			runShape(t, "backend→client", back, seg, n > 1)
			cl.expectSilence()
			g.waitListener(t, "flows evicted", ListenerFlowsEvicted, 1)
			if v := g.listener(ListenerTxDatagrams); v != uint64(n) {
				t.Errorf("tx datagrams %d, want %d", v, n)
			}
		})
	}
}
