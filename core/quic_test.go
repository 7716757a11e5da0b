package core

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/fastudp/fastudp/quiclb"
)

// quicInitial builds a QUIC v1 Initial-shaped datagram with destination
// connection ID dcid, padded to n bytes.
func quicInitial(dcid []byte, n int) []byte {
	b := []byte{0xc3}
	b = binary.BigEndian.AppendUint32(b, quiclb.Version1)
	b = append(b, byte(len(dcid)))
	b = append(b, dcid...)
	b = append(b, 0) // empty SCID
	return append(b, make([]byte, max(0, n-len(b)))...)
}

var testQUICLB = quiclb.Config{ConfigID: 0, ServerIDLen: 2, NonceLen: 6}

// TestAffinityQUIC: an Initial's key is the hash of its DCID, the same from
// every client port; a short header gets the ip-port key; the select output
// carries the first datagram (the first segment of a GRO run).
func TestAffinityQUIC(t *testing.T) {
	const seed = 99
	h := newHarness(t, Config{Seed: seed}, ClusterConfig{Affinity: AffinityQUIC, QUIC: testQUICLB})
	dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	initial := quicInitial(dcid, 1200)
	var keys []uint64
	for _, c := range []struct {
		src     [2]byte
		payload []byte
		seg     int
	}{{[2]byte{}, initial, 0}, {[2]byte{1}, append(append([]byte(nil), initial...), initial...), 1200}} {
		in := ClientDatagram(0, cliA, lcl, c.payload)
		if c.seg > 0 {
			in.Src, in.SegmentSize = cliA2, c.seg
		}
		sel := pick(h.handle(in), OutSelectBackend)
		if len(sel) != 1 {
			t.Fatal("no select")
		}
		if !bytes.Equal(sel[0].Payload, initial) {
			t.Fatalf("select payload of %d bytes, want the first datagram (%d)", len(sel[0].Payload), len(initial))
		}
		keys = append(keys, sel[0].Key)
	}
	if keys[0] != keys[1] || keys[0] != QUICCIDHash(seed, dcid) {
		t.Fatalf("keys %#x, want both %#x", keys, QUICCIDHash(seed, dcid))
	}
	if QUICCIDHash(seed, []byte{1, 2, 3, 4, 5, 6, 7, 9}) == keys[0] || QUICCIDHash(seed+1, dcid) == keys[0] {
		t.Fatal("the key ignores the ID or the seed")
	}
	// A short header: the ip-port key (the picker's fallback).
	var cid [quiclb.MaxCIDLen]byte
	n, _ := testQUICLB.Encode(cid[:], []byte{0xab, 0xcd}, []byte{1, 2, 3, 4, 5, 6}, 0)
	short := append([]byte{0x40}, cid[:n]...)
	sel := pick(h.handle(ClientDatagram(0, cliB, lcl, short)), OutSelectBackend)
	if len(sel) != 1 || sel[0].Key != AffinityHash(seed, cliB, AffinityIPPort) || !bytes.Equal(sel[0].Payload, short) {
		t.Fatalf("short header select: %+v", sel)
	}
	if AffinityQUIC.String() != "quic" {
		t.Fatal(AffinityQUIC.String())
	}
	if a, err := ParseAffinity("quic"); err != nil || a != AffinityQUIC {
		t.Fatal(a, err)
	}
}

// TestAffinityQUICMalformed: a new flow's first datagram that breaks the
// invariants is one counted drop and no flow; a live flow's datagrams are not
// inspected; other affinities do not look.
func TestAffinityQUICMalformed(t *testing.T) {
	h := newHarness(t, Config{Seed: 1}, ClusterConfig{Affinity: AffinityQUIC, QUIC: testQUICLB}, ClusterConfig{Affinity: AffinityIPPort})
	for _, p := range [][]byte{
		quicInitial([]byte{1, 2, 3, 4}, 0)[:8], // long header cut in its DCID
		{0x40, 0, 1, 2},                        // short header without its 9-byte DCID
	} {
		out := h.handle(ClientDatagram(0, cliA, lcl, p))
		d := pick(out, OutDrop)
		if len(out) != 1 || len(d) != 1 || d[0].DropReason != DropMalformed || d[0].Bytes != len(p) {
			t.Fatalf("%x: want one malformed drop, got\n%s", p, fmtOutputs(out))
		}
	}
	if h.m.FlowCount() != 0 || h.m.Stats().Drops[DropMalformed] != 2 {
		t.Fatalf("%d flows, %d malformed", h.m.FlowCount(), h.m.Stats().Drops[DropMalformed])
	}
	// Another affinity does not parse QUIC.
	if sel := pick(h.handle(ClientDatagram(1, cliA, lcl, []byte{0xc0})), OutSelectBackend); len(sel) != 1 {
		t.Fatal("ip-port cluster dropped a datagram")
	}
	// A live QUIC flow forwards what follows, whatever it is.
	sel := pick(h.handle(ClientDatagram(0, cliB, lcl, quicInitial([]byte{9}, 50))), OutSelectBackend)
	if len(sel) != 1 {
		t.Fatal("no select")
	}
	h.handle(Resolved(sel[0].Flow, be1))
	if s := pick(h.handle(ClientDatagram(0, cliB, lcl, []byte{0xc0})), OutSendToBackend); len(s) != 1 {
		t.Fatal("live flow's datagram not forwarded")
	}
	if DropMalformed.String() != "malformed" {
		t.Fatal(DropMalformed.String())
	}
}

// TestAllocsQUICAdmission: admitting QUIC flows (Initials and short
// headers), resolving them and closing them on their reply allocates nothing.
func TestAllocsQUICAdmission(t *testing.T) {
	m, err := NewManager(Config{Seed: 3, Pool: newTestPool(0)})
	if err != nil {
		t.Fatal(err)
	}
	out := m.Handle(1, []Input{setCluster(0, ClusterConfig{Affinity: AffinityQUIC, QUIC: testQUICLB, Responses: 1})}, nil)
	initial := quicInitial([]byte{1, 2, 3, 4, 5, 6, 7, 8}, 1200)
	short := append([]byte{0x40}, make([]byte, 20)...)
	in := make([]Input, 0, 16)
	now := Time(1)
	port := uint16(1)
	assertNoAllocs(t, "quic admission", func() {
		now += 1000
		in = in[:0]
		for i := range 8 {
			p := initial
			if i%2 == 1 {
				p = short
			}
			port++
			in = append(in, ClientDatagram(0, netip.AddrPortFrom(cliA.Addr(), port), lcl, p))
		}
		out = m.Handle(now, in, out[:0])
		in = in[:0]
		for i := range out {
			if out[i].Kind == OutSelectBackend {
				in = append(in, Resolved(out[i].Flow, be1))
			}
		}
		if len(in) != 8 {
			t.Fatalf("%d selects", len(in))
		}
		out = m.Handle(now, in, out[:0])
		for i := range in {
			in[i] = BackendDatagram(in[i].Flow, short)
		}
		out = m.Handle(now, in, out[:0])
	})
	if m.FlowCount() != 0 {
		t.Fatalf("%d flows left", m.FlowCount())
	}
}
