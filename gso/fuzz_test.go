package gso

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/fastudp/fastudp/batchio"
)

// FuzzCoalesceSplit lays out datagrams described by the input (length,
// destination, TOS, whether a gap breaks contiguity) in one arena,
// coalesces them and splits every result again: the datagrams must come
// back byte for byte, in order, with their own metadata, and every
// coalesced message must keep to the limits.
func FuzzCoalesceSplit(f *testing.F) {
	f.Add([]byte{0x10, 0, 0x10, 0, 0x10, 0, 0x08, 0})
	f.Add([]byte{0xff, 0x01, 0xff, 0x02, 0x80, 0x04, 0x80, 0x08, 0x01, 0x00})
	f.Add(bytes.Repeat([]byte{0x40, 0x00}, 100))
	f.Fuzz(func(t *testing.T, in []byte) {
		addrs := [...]netip.AddrPort{dst4, dst4b, dst6, {}}
		type dgram struct {
			b    []byte
			addr netip.AddrPort
			tos  uint8
		}
		var want []dgram
		arena := make([]byte, 0, 4*65536)
		var msgs []batchio.Message
		for i := 0; i+1 < len(in) && len(msgs) < 300; i += 2 {
			n, ctl := int(in[i])*int(in[i]&0x0f+1)%1500, in[i+1]
			if ctl&0x40 != 0 && len(arena) < cap(arena) {
				arena = arena[:len(arena)+1] // a gap: not contiguous
			}
			if len(arena)+n > cap(arena) {
				break
			}
			start := len(arena)
			for j := range n {
				arena = append(arena, byte(start+j))
			}
			m := batchio.Message{Buf: arena[start : start+n], Addr: addrs[ctl&3], TOS: (ctl >> 2) & 1}
			msgs = append(msgs, m)
			want = append(want, dgram{m.Buf, m.Addr, m.TOS})
		}
		// Keep copies: coalescing only re-slices, so the bytes must match.
		for i := range want {
			want[i].b = bytes.Clone(want[i].b)
		}
		gatherCap := 0
		if len(in) > 0 {
			gatherCap = int(in[0] & 0x3f) // 0: contiguous merges only
		}
		out, _ := Coalesce(msgs, make([][]byte, 0, gatherCap))
		var got []batchio.Message
		for i := range out {
			m := &out[i]
			if Segments(m.Len(), m.SegmentSize) > MaxSegments || m.Len() > MaxBytes(m.Addr) {
				t.Fatalf("over the limits: %d bytes, segment %d", m.Len(), m.SegmentSize)
			}
			var ok bool
			if got, ok = Split(got, m); !ok {
				t.Fatal("split failed")
			}
		}
		if len(got) != len(want) {
			t.Fatalf("%d datagrams back, want %d", len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(append(bytes.Clone(got[i].Header), got[i].Buf...), want[i].b) || got[i].Addr != want[i].addr || got[i].TOS != want[i].tos {
				t.Fatalf("datagram %d differs: %d bytes to %v tos %d, want %d bytes to %v tos %d",
					i, len(got[i].Buf), got[i].Addr, got[i].TOS, len(want[i].b), want[i].addr, want[i].tos)
			}
		}
	})
}

// FuzzHeaderEach builds the PROXY "every datagram" sends for a run of the
// fuzzed length and segment size and a header of the fuzzed length, then
// cuts each send as the kernel would: every datagram must be the header
// followed by the next segment, and every send must keep to the limits.
func FuzzHeaderEach(f *testing.F) {
	f.Add(uint16(10000), uint16(1000), uint8(28), false)
	f.Add(uint16(64000), uint16(1000), uint8(52), true)
	f.Add(uint16(5), uint16(0), uint8(16), false)
	f.Fuzz(func(t *testing.T, n, seg uint16, hl uint8, v6 bool) {
		run := make([]byte, n)
		for i := range run {
			run[i] = byte(i*7 + i>>8)
		}
		hdr := bytes.Repeat([]byte{0xAB}, int(hl%64))
		tmpl := batchio.Message{Addr: dst4}
		if v6 {
			tmpl.Addr = dst6
		}
		sends, _ := HeaderEach(nil, nil, &tmpl, hdr, run, int(seg))
		var got []byte
		for i := range sends {
			m := &sends[i]
			segs := Segments(m.Len(), m.SegmentSize)
			if segs > 1 && (segs > MaxSegments || m.Len() > MaxBytes(m.Addr) || m.SegmentSize != len(hdr)+int(seg)) {
				t.Fatalf("send %d: %d segments of %d, %d bytes", i, segs, m.SegmentSize, m.Len())
			}
			split, ok := Split(nil, m)
			if !ok {
				t.Fatalf("send %d does not split", i)
			}
			for _, d := range split {
				if !bytes.Equal(d.Header, hdr) && !(len(hdr) == 0 && d.Header == nil) {
					t.Fatalf("a datagram led by %d bytes, not the %d-byte header", len(d.Header), len(hdr))
				}
				got = append(got, d.Buf...)
			}
		}
		if !bytes.Equal(got, run) {
			t.Fatalf("segments differ from the run (%d vs %d bytes)", len(got), len(run))
		}
	})
}
