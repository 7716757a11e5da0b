package shard

import (
	"bytes"
	"fmt"
	"testing"

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
//   - with GSO off on the sockets (the path a refused GSO send falls back
//     to), the same datagrams leave one by one, every header in place.
func TestE2EGSOProxyProtocol(t *testing.T) {
	t.Parallel()
	const seg = 1000
	for _, tc := range []struct {
		mode  core.ProxyMode
		n     int
		noGSO bool
		// GSO sends and segments expected on the client→backend leg.
		sends, segs uint64
	}{
		{core.ProxyEvery, 10, false, 1, 10},
		{core.ProxyEvery, 64, false, 1, 63},
		{core.ProxyEvery, 10, true, 0, 0},
		{core.ProxyFirst, 10, false, 1, 9},
		{core.ProxyFirst, 10, true, 0, 0},
	} {
		t.Run(fmt.Sprintf("%v/n=%d/gso-off=%v", tc.mode, tc.n, tc.noGSO), func(t *testing.T) {
			t.Parallel()
			be := newGROPeer(t, "127.0.0.1:0")
			o := oneListener("127.0.0.1:0", core.ClusterConfig{ProxyProtocol: tc.mode}, fixedPicker{{ID: 0, Addr: be.addr}})
			o.GRO, o.NoGSO = true, tc.noGSO
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
			if tc.mode == core.ProxyEvery && !tc.noGSO && tc.n == 10 {
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
			if v := g.shard(ShardGSOFallbacks); v != 0 {
				t.Errorf("%d GSO fallbacks on loopback", v)
			}
		})
	}
}
