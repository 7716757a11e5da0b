package shard

import (
	"bytes"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/gso"
)

// datagrams cuts arrivals at a GRO peer back into the datagrams sent.
func datagrams(as []arrival) [][]byte {
	var out [][]byte
	for _, a := range as {
		for i := range gso.Segments(len(a.data), a.seg) {
			out = append(out, gso.Segment(a.data, a.seg, i))
		}
	}
	return out
}

// TestE2EGSOProxyProtocol: a client UDP_SEGMENT run, the flow's first
// message, goes through a PROXY v2 cluster to a UDP_GRO backend on
// loopback.
//   - every: it leaves as ONE GSO send of header+segment datagrams (the
//     header an iovec before every segment, nothing copied), the backend
//     gets one coalesced run of len(header)+seg-byte segments, each a
//     valid header and the right segment; a 64-segment run, 1,792 header
//     bytes over 65,507, goes as a GSO send of 63 and a datagram.
//   - first: the header and the first segment as one datagram, the rest as
//     one GSO send.
//   - with GSO off on the sockets, the same datagrams leave one by one,
//     every header in place;
//   - refused: the upstream socket has SO_NO_CHECK, with which the kernel
//     refuses every GSO send (EINVAL, udp_send_skb): the shard falls back
//     to single header+segment datagrams, counts the fallback, and the
//     backend still gets every header and segment.
func TestE2EGSOProxyProtocol(t *testing.T) {
	t.Parallel()
	const seg = 1000
	for _, tc := range []struct {
		mode           core.ProxyMode
		n              int
		noGSO, refused bool
		// GSO sends and segments expected on the client→backend leg.
		sends, segs uint64
	}{
		{core.ProxyEvery, 10, false, false, 1, 10},
		{core.ProxyEvery, 64, false, false, 1, 63},
		{core.ProxyEvery, 10, true, false, 0, 0},
		{core.ProxyEvery, 10, false, true, 0, 0},
		{core.ProxyFirst, 10, false, false, 1, 9},
		{core.ProxyFirst, 10, true, false, 0, 0},
		{core.ProxyFirst, 10, false, true, 0, 0},
	} {
		t.Run(fmt.Sprintf("%v/n=%d/gso-off=%v/refused=%v", tc.mode, tc.n, tc.noGSO, tc.refused), func(t *testing.T) {
			t.Parallel()
			be := newGROPeer(t, "127.0.0.1:0")
			o := oneListener("127.0.0.1:0", core.ClusterConfig{ProxyProtocol: tc.mode}, fixedPicker{{ID: 0, Addr: be.addr}})
			o.GRO, o.NoGSO = true, tc.noGSO
			if tc.refused {
				o.upstreamHook = func(fd int) {
					if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_NO_CHECK, 1); err != nil {
						t.Errorf("SO_NO_CHECK: %v", err)
					}
				}
			}
			g := startGroup(t, o)
			cl := newGROPeer(t, "127.0.0.1:0")
			req := pattern(seg*tc.n-300, 7) // a shorter last segment
			if tc.n == 64 {
				req = pattern(seg*tc.n, 7)
			}
			cl.sendRun(g.addr(), req, seg, 0x01)
			const hl = core.ProxyHeaderLenIPv4
			want := len(req) + hl
			if tc.mode == core.ProxyEvery {
				want = len(req) + tc.n*hl
			}
			got := be.recvBytes(want, waitTimeout)
			ds := datagrams(got)
			if len(ds) != tc.n {
				t.Fatalf("%d datagrams at the backend, want %d", len(ds), tc.n)
			}
			var payload []byte
			for i, d := range ds {
				h, ok, err := parseProxyHeader(d)
				if wantHdr := tc.mode == core.ProxyEvery || i == 0; ok != wantHdr {
					t.Fatalf("datagram %d: header %v, want %v", i, ok, wantHdr)
				}
				if ok {
					if err != nil || h.Len != hl || h.Src != cl.addr || h.Dst != g.addr() {
						t.Fatalf("datagram %d: header %+v (%v), want %d bytes %v -> %v", i, h, err, hl, cl.addr, g.addr())
					}
					d = d[h.Len:]
				}
				if want := gso.Segment(req, seg, i); !bytes.Equal(d, want) {
					t.Fatalf("datagram %d: %d payload bytes differ from segment %d (%d bytes)", i, len(d), i, len(want))
				}
				payload = append(payload, d...)
			}
			if !bytes.Equal(payload, req) {
				t.Fatal("payload bytes differ")
			}
			for _, a := range got {
				if a.tos != 0x01 {
					t.Fatalf("backend got TOS %#x, want 0x01", a.tos)
				}
			}
			if tc.mode == core.ProxyEvery && !tc.noGSO && !tc.refused && tc.n == 10 {
				// One GSO send on loopback reaches a UDP_GRO socket whole.
				if len(got) != 1 || got[0].seg != hl+seg {
					t.Errorf("%d receives (first of segment size %d), want one run of %d", len(got), got[0].seg, hl+seg)
				}
			}
			// Counters are published once per loop iteration, together.
			waitValue(t, "backend datagrams in", func() uint64 { return g.backend(0, BackendDatagramsIn) }, uint64(tc.n))
			if s, n := g.shard(ShardGSOSends), g.shard(ShardGSOSegments); s != tc.sends || n != tc.segs {
				t.Errorf("%d GSO sends of %d segments, want %d of %d", s, n, tc.sends, tc.segs)
			}
			if v, want := g.shard(ShardGSOFallbacks), map[bool]uint64{false: 0, true: 1}[tc.refused]; v != want {
				t.Errorf("%d GSO fallbacks, want %d", v, want)
			}
			if v := g.backend(0, BackendSendErrors); v != 0 {
				t.Errorf("%d backend send errors", v)
			}
		})
	}
}

// TestE2EGSOCoalesceReplies: a backend sends bursts of 10 separate
// datagrams (one sendmmsg, no GSO): 4+1 of 1,200 bytes with ECT(1), 4 of
// 1,200 and a 700-byte tail with ECT(0). The shard reads them into separate
// receive buffers and coalesces the client's replies of one batch into GSO
// sends with iovecs (zero copy). The GRO client gets every datagram, in
// order, each with its own TOS: a run never mixes ECN marks, and only the
// last datagram of a run is shorter. Bursts repeat until a GSO send shows
// (a loaded box may wake the shard mid-burst); with GSO off none may.
func TestE2EGSOCoalesceReplies(t *testing.T) {
	t.Parallel()
	const ect1, ect0 = 0x01, 0x02
	for _, tc := range []struct {
		name       string
		gro, noGSO bool
	}{{"gro-off", false, false}, {"gro-on", true, false}, {"gso-off", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			be := newGROPeer(t, "127.0.0.1:0")
			o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.addr}})
			o.GRO, o.NoGSO = tc.gro, tc.noGSO
			g := startGroup(t, o)
			cl := newGROPeer(t, "127.0.0.1:0")
			cl.sendRun(g.addr(), []byte("hello"), 0, 0)
			up := be.recvBytes(5, waitTimeout)[0].from

			sizes := []int{1200, 1200, 1200, 1200, 1200, 1200, 1200, 1200, 1200, 700}
			tos := func(i int) uint8 {
				if i < 5 {
					return ect1
				}
				return ect0
			}
			sent := 0
			for burst := 0; burst < 20; burst++ {
				var msgs []batchio.Message
				var want [][]byte
				for i, n := range sizes {
					d := pattern(n, byte(burst*16+i))
					want = append(want, d)
					msgs = append(msgs, batchio.Message{Buf: d, Addr: up, TOS: tos(i)})
				}
				if n, err := be.b.Send(be.fd, msgs); err != nil || n != len(msgs) {
					t.Fatalf("backend send: %d, %v", n, err)
				}
				total := 0
				for _, n := range sizes {
					total += n
				}
				got := cl.recvBytes(total, waitTimeout)
				i := 0
				for _, a := range got {
					segs := gso.Segments(len(a.data), a.seg)
					for k := range segs {
						d := gso.Segment(a.data, a.seg, k)
						if i >= len(want) || !bytes.Equal(d, want[i]) {
							t.Fatalf("burst %d: datagram %d of %d bytes differs (or is extra)", burst, i, len(d))
						}
						if a.tos != tos(i) {
							t.Fatalf("burst %d: datagram %d arrived with TOS %#x in a run of %d, sent with %#x", burst, i, a.tos, segs, tos(i))
						}
						if segs > 1 && k < segs-1 && len(d) != a.seg {
							t.Fatalf("burst %d: a short datagram inside a run", burst)
						}
						i++
					}
				}
				if i != len(want) {
					t.Fatalf("burst %d: %d datagrams, want %d", burst, i, len(want))
				}
				sent += len(sizes)
				g.waitListener(t, "tx datagrams", ListenerTxDatagrams, uint64(sent))
				if tc.noGSO || g.shard(ShardGSOSends) > 0 {
					break
				}
			}
			sends, segs := g.shard(ShardGSOSends), g.shard(ShardGSOSegments)
			t.Logf("%d datagrams returned, %d GSO sends of %d segments", sent, sends, segs)
			if tc.noGSO && sends != 0 {
				t.Fatalf("%d GSO sends with GSO off", sends)
			}
			if !tc.noGSO && (sends == 0 || segs < 2*sends || sends >= uint64(sent)) {
				t.Fatalf("%d GSO sends of %d segments for %d replies: not coalesced", sends, segs, sent)
			}
		})
	}
}
