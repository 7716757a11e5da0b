package gso

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/fastudp/fastudp/batchio"
)

// separate returns one message per size, each in a buffer of its own (as
// replies read by recvmmsg into separate receive buffers are).
func separate(addr netip.AddrPort, sizes ...int) []batchio.Message {
	msgs := make([]batchio.Message, len(sizes))
	for i, n := range sizes {
		b := make([]byte, n, n+64) // spare capacity that must not be used
		for j := range b {
			b[j] = byte(i*13 + j)
		}
		msgs[i] = batchio.Message{Addr: addr, Buf: b}
	}
	return msgs
}

// stream returns m's bytes as the kernel sees them.
func stream(m *batchio.Message) []byte {
	b := append(bytes.Clone(m.Header), m.Buf...)
	for _, p := range m.Gather {
		b = append(b, p...)
	}
	return b
}

func concatStreams(msgs []batchio.Message) []byte {
	var b []byte
	for i := range msgs {
		b = append(b, stream(&msgs[i])...)
	}
	return b
}

func lenShapes(msgs []batchio.Message) []shape {
	out := make([]shape, len(msgs))
	for i := range msgs {
		out[i] = shape{msgs[i].Len(), msgs[i].SegmentSize}
	}
	return out
}

// TestCoalesceGather: separate (non-contiguous) datagrams to one peer merge
// into GSO runs through Gather pieces, under the same rules as contiguous
// ones: one shorter tail, a change of TOS or source ends a run, at most 64
// segments and 65,507 bytes per send, and no more pieces than parts holds.
func TestCoalesceGather(t *testing.T) {
	tests := []struct {
		name     string
		msgs     func() []batchio.Message
		parts    int
		want     []shape
		gathered int // pieces taken from parts
	}{
		{"equal datagrams", func() []batchio.Message { return separate(dst4, 1200, 1200, 1200) }, 64,
			[]shape{{3600, 1200}}, 2},
		{"short tail ends the run", func() []batchio.Message { return separate(dst4, 1200, 1200, 700, 1200) }, 64,
			[]shape{{3100, 1200}, {1200, 0}}, 2},
		{"TOS change (ECN)", func() []batchio.Message {
			m := separate(dst4, 1000, 1000, 1000, 1000)
			m[2].TOS, m[3].TOS = 0x02, 0x02
			return m
		}, 64, []shape{{2000, 1000}, {2000, 1000}}, 2},
		{"source address change", func() []batchio.Message {
			m := separate(dst4, 1000, 1000, 1000)
			m[1].Local = netip.MustParseAddr("192.0.2.9")
			m[2].Local = m[1].Local
			return m
		}, 64, []shape{{1000, 0}, {2000, 1000}}, 1},
		{"no room in parts: nothing merges", func() []batchio.Message { return separate(dst4, 100, 100, 100) }, 0,
			[]shape{{100, 0}, {100, 0}, {100, 0}}, 0},
		{"parts full mid-run", func() []batchio.Message { return separate(dst4, 100, 100, 100, 100) }, 2,
			[]shape{{300, 100}, {100, 0}}, 2},
		{"64 segments cap", func() []batchio.Message {
			sizes := make([]int, 70)
			for i := range sizes {
				sizes[i] = 10
			}
			return separate(dst4, sizes...)
		}, 128, []shape{{640, 10}, {60, 10}}, 68},
		{"IPv4 byte cap", func() []batchio.Message {
			sizes := make([]int, 60)
			for i := range sizes {
				sizes[i] = 1200
			}
			return separate(dst4, sizes...)
		}, 128, []shape{{54 * 1200, 1200}, {6 * 1200, 1200}}, 58},
		{"a GRO run and separate datagrams", func() []batchio.Message {
			m := separate(dst4, 3600, 1200, 1200, 500)
			m[0].SegmentSize = 1200
			return m
		}, 64, []shape{{6500, 1200}}, 3},
		{"header never merges", func() []batchio.Message {
			m := separate(dst4, 100, 100, 100)
			m[1].Header = []byte("PROXY")
			return m
		}, 64, []shape{{100, 0}, {105, 0}, {100, 0}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.msgs()
			want := concatStreams(in)
			parts := make([][]byte, 0, tt.parts)
			got, parts := Coalesce(in, parts)
			if s := lenShapes(got); !equalShapes(s, tt.want) {
				t.Fatalf("shapes %v, want %v", s, tt.want)
			}
			if len(parts) != tt.gathered {
				t.Fatalf("%d pieces gathered, want %d", len(parts), tt.gathered)
			}
			if !bytes.Equal(concatStreams(got), want) {
				t.Fatal("payload bytes changed")
			}
			for i := range got {
				m := &got[i]
				if Segments(m.Len(), m.SegmentSize) > MaxSegments || m.Len() > MaxBytes(m.Addr) {
					t.Fatalf("message over the limits: %d bytes, seg %d", m.Len(), m.SegmentSize)
				}
				// Every piece is whole datagrams: the kernel's cuts fall on
				// the pieces' boundaries, so Split gives back the originals.
				split, ok := Split(nil, m)
				if !ok {
					t.Fatalf("message %d does not split", i)
				}
				for _, d := range split {
					if d.Header != nil && got[i].Header == nil {
						t.Fatalf("message %d: a datagram spans two pieces", i)
					}
				}
			}
		})
	}
}

// TestHeaderEach: a GRO run with a PROXY v2 header before every segment
// becomes GSO sends whose pieces alternate header and segment, within the
// limits (headers counted), each datagram on the wire being header +
// segment.
func TestHeaderEach(t *testing.T) {
	hdr := bytes.Repeat([]byte{'H'}, 28)
	tmpl := batchio.Message{Addr: dst4, TOS: 0x01, Local: netip.MustParseAddr("192.0.2.7")}
	for _, tc := range []struct {
		name      string
		n, seg    int
		addr      netip.AddrPort
		wantSends []int // segments per send
	}{
		{"one send", 10*1000 - 300, 1000, dst4, []int{10}},
		{"single datagram", 500, 0, dst4, []int{1}},
		{"segment size beyond the run", 500, 600, dst4, []int{1}},
		// 64 × (1000+28) = 65,792 > 65,507: 63 segments per send.
		{"byte cap with headers", 64 * 1000, 1000, dst4, []int{63, 1}},
		{"segment cap", 100 * 100, 100, dst4, []int{64, 36}},
		// 65,527 / 1,028 = 63.7 for IPv6, still 63.
		{"IPv6", 64 * 1000, 1000, dst6, []int{63, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := pattern(tc.n)
			tm := tmpl
			tm.Addr = tc.addr
			msgs, parts := HeaderEach(nil, make([][]byte, 0, 128), &tm, hdr, run, tc.seg)
			if len(msgs) != len(tc.wantSends) {
				t.Fatalf("%d sends, want %d", len(msgs), len(tc.wantSends))
			}
			var payload []byte
			for i := range msgs {
				m := &msgs[i]
				if m.Addr != tc.addr || m.TOS != tmpl.TOS || m.Local != tmpl.Local {
					t.Fatalf("send %d lost its metadata: %+v", i, m)
				}
				segs := Segments(m.Len(), m.SegmentSize)
				if segs != tc.wantSends[i] || segs > MaxSegments || m.Len() > MaxBytes(m.Addr) {
					t.Fatalf("send %d: %d segments of %d bytes, %d bytes in all", i, segs, m.SegmentSize, m.Len())
				}
				if segs > 1 && m.SegmentSize != len(hdr)+tc.seg {
					t.Fatalf("send %d: segment size %d, want %d", i, m.SegmentSize, len(hdr)+tc.seg)
				}
				// Cut the stream as the kernel does: every datagram is the
				// header and then one segment.
				split, ok := Split(nil, m)
				if !ok || len(split) != segs {
					t.Fatalf("send %d: split ok %v into %d, want %d", i, ok, len(split), segs)
				}
				for _, d := range split {
					if !bytes.Equal(d.Header, hdr) || &d.Header[0] != &hdr[0] {
						t.Fatalf("a datagram without the (shared) header: %q", d.Header)
					}
					payload = append(payload, d.Buf...)
				}
			}
			if !bytes.Equal(payload, run) {
				t.Fatal("segments differ from the run")
			}
			for _, p := range parts {
				if len(p) == len(hdr) && &p[0] != &hdr[0] {
					t.Fatal("a header was copied")
				}
			}
		})
	}
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31) ^ byte(i>>8)
	}
	return b
}

// TestSplitPieces: Split cuts Header, Buf and Gather as one stream and
// refuses a datagram that would span more than two pieces.
func TestSplitPieces(t *testing.T) {
	m := batchio.Message{Addr: dst4, Buf: []byte("aaaa"), Gather: [][]byte{[]byte("bbbb"), []byte("cc")}, SegmentSize: 4}
	got, ok := Split(nil, &m)
	if !ok || len(got) != 3 || string(got[0].Buf) != "aaaa" || string(got[1].Buf) != "bbbb" || string(got[2].Buf) != "cc" {
		t.Fatalf("split %v %+v", ok, got)
	}
	// Cuts across pieces: "aaab|bbbc|c" spans two pieces each time.
	m = batchio.Message{Addr: dst4, Buf: []byte("aaa"), Gather: [][]byte{[]byte("bbbb"), []byte("cc")}, SegmentSize: 4}
	got, ok = Split(nil, &m)
	if !ok || len(got) != 3 || string(got[0].Header)+string(got[0].Buf) != "aaab" ||
		string(got[1].Header)+string(got[1].Buf) != "bbbc" || string(got[2].Buf) != "c" {
		t.Fatalf("split across pieces %v %+v", ok, got)
	}
	// Three pieces in one datagram cannot be a single Header+Buf message.
	m = batchio.Message{Addr: dst4, Header: []byte("H"), Buf: []byte("a"), Gather: [][]byte{[]byte("b")}, SegmentSize: 4}
	if got, ok := Split(make([]batchio.Message, 1), &m); ok || len(got) != 1 {
		t.Fatalf("three pieces: ok %v, %d messages", ok, len(got))
	}
}

// TestGatherZeroAllocs: coalescing separate datagrams, building header
// runs and splitting them allocate nothing given room.
func TestGatherZeroAllocs(t *testing.T) {
	sizes := make([]int, 64)
	for i := range sizes {
		sizes[i] = 1200
	}
	tmpl := separate(dst4, sizes...)
	msgs := make([]batchio.Message, len(tmpl))
	parts := make([][]byte, 0, 256)
	split := make([]batchio.Message, 0, 128)
	hdr := make([]byte, 28)
	run := make([]byte, 64*1000)
	sends := make([]batchio.Message, 0, 4)
	allocs := testing.AllocsPerRun(100, func() {
		copy(msgs, tmpl)
		out, p := Coalesce(msgs, parts[:0])
		split = split[:0]
		for i := range out {
			split, _ = Split(split, &out[i])
		}
		sends, _ = HeaderEach(sends[:0], p, &tmpl[0], hdr, run, 1000)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per run, want 0", allocs)
	}
	if len(split) != 64 || len(sends) != 2 {
		t.Fatalf("%d datagrams after split, want 64; %d header sends, want 2", len(split), len(sends))
	}
}
