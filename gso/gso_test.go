package gso

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/fastudp/fastudp/batchio"
)

var (
	dst4  = netip.MustParseAddrPort("192.0.2.1:443")
	dst4b = netip.MustParseAddrPort("192.0.2.2:443")
	dst6  = netip.MustParseAddrPort("[2001:db8::1]:443")
)

// arena lays out datagrams of the given sizes back to back in one buffer
// (gap bytes between them when gap is set) and returns one message each.
func arena(addr netip.AddrPort, gap int, sizes ...int) []batchio.Message {
	total := 0
	for _, n := range sizes {
		total += n + gap
	}
	buf := make([]byte, total)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	msgs := make([]batchio.Message, len(sizes))
	off := 0
	for i, n := range sizes {
		msgs[i] = batchio.Message{Addr: addr, Buf: buf[off : off+n]}
		off += n + gap
	}
	return msgs
}

type shape struct{ n, seg int }

func shapes(msgs []batchio.Message) []shape {
	out := make([]shape, len(msgs))
	for i, m := range msgs {
		out[i] = shape{len(m.Buf), m.SegmentSize}
	}
	return out
}

func TestCoalesce(t *testing.T) {
	tests := []struct {
		name string
		msgs func() []batchio.Message
		want []shape
	}{
		{"equal run", func() []batchio.Message { return arena(dst4, 0, 1200, 1200, 1200) },
			[]shape{{3600, 1200}}},
		{"short tail", func() []batchio.Message { return arena(dst4, 0, 1200, 1200, 700) },
			[]shape{{3100, 1200}}},
		{"tail ends the run", func() []batchio.Message { return arena(dst4, 0, 1200, 700, 700) },
			[]shape{{1900, 1200}, {700, 0}}},
		{"longer datagram ends the run", func() []batchio.Message { return arena(dst4, 0, 700, 1200, 1200) },
			[]shape{{700, 0}, {2400, 1200}}},
		{"not contiguous", func() []batchio.Message { return arena(dst4, 1, 1200, 1200) },
			[]shape{{1200, 0}, {1200, 0}}},
		{"single", func() []batchio.Message { return arena(dst4, 0, 100) },
			[]shape{{100, 0}}},
		{"empty datagrams never merge", func() []batchio.Message { return arena(dst4, 0, 0, 0, 10, 0) },
			[]shape{{0, 0}, {0, 0}, {10, 0}, {0, 0}}},
		{"destination change", func() []batchio.Message {
			m := arena(dst4, 0, 100, 100, 100, 100)
			m[2].Addr, m[3].Addr = dst4b, dst4b
			return m
		}, []shape{{200, 100}, {200, 100}}},
		{"TOS change (ECN)", func() []batchio.Message {
			m := arena(dst4, 0, 100, 100, 100)
			m[1].TOS = 0x01
			return m
		}, []shape{{100, 0}, {100, 0}, {100, 0}}},
		{"source change", func() []batchio.Message {
			m := arena(dst4, 0, 100, 100, 100)
			m[2].Local = netip.MustParseAddr("192.0.2.9")
			return m
		}, []shape{{200, 100}, {100, 0}}},
		{"header never merges", func() []batchio.Message {
			m := arena(dst4, 0, 100, 100, 100)
			m[1].Header = []byte("PROXY")
			return m
		}, []shape{{100, 0}, {100, 0}, {100, 0}}},
		{"64 segments cap", func() []batchio.Message {
			sizes := make([]int, 70)
			for i := range sizes {
				sizes[i] = 10
			}
			return arena(dst4, 0, sizes...)
		}, []shape{{640, 10}, {60, 10}}},
		{"IPv4 byte cap", func() []batchio.Message {
			sizes := make([]int, 60)
			for i := range sizes {
				sizes[i] = 1200
			}
			return arena(dst4, 0, sizes...)
		}, []shape{{54 * 1200, 1200}, {6 * 1200, 1200}}},
		{"IPv6 byte cap", func() []batchio.Message {
			// 65527/1489 = 44.0..., 65507/1489 = 43.99: the v6 limit fits one more.
			sizes := make([]int, 50)
			for i := range sizes {
				sizes[i] = 1489
			}
			return arena(dst6, 0, sizes...)
		}, []shape{{44 * 1489, 1489}, {6 * 1489, 1489}}},
		{"GRO run passes through, datagrams join it", func() []batchio.Message {
			m := arena(dst4, 0, 3600, 1200, 500)
			m[0].SegmentSize = 1200
			return m
		}, []shape{{5300, 1200}}},
		{"runs of equal segment size join", func() []batchio.Message {
			m := arena(dst4, 0, 2400, 1300)
			m[0].SegmentSize, m[1].SegmentSize = 1200, 1200
			return m
		}, []shape{{3700, 1200}}},
		{"runs of different segment size do not", func() []batchio.Message {
			m := arena(dst4, 0, 2400, 2000)
			m[0].SegmentSize, m[1].SegmentSize = 1200, 1000
			return m
		}, []shape{{2400, 1200}, {2000, 1000}}},
		{"run with short tail takes nothing", func() []batchio.Message {
			m := arena(dst4, 0, 2000, 100)
			m[0].SegmentSize = 1200
			return m
		}, []shape{{2000, 1200}, {100, 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.msgs()
			want := concat(in)
			got, _ := Coalesce(in, nil)
			if s := shapes(got); !equalShapes(s, tt.want) {
				t.Fatalf("shapes %v, want %v", s, tt.want)
			}
			if !bytes.Equal(concat(got), want) {
				t.Fatal("payload bytes changed")
			}
			for _, m := range got {
				if Segments(len(m.Buf), m.SegmentSize) > MaxSegments || len(m.Buf) > MaxBytes(m.Addr) {
					t.Fatalf("message over the limits: %d bytes, seg %d", len(m.Buf), m.SegmentSize)
				}
			}
		})
	}
}

func concat(msgs []batchio.Message) []byte {
	var b []byte
	for _, m := range msgs {
		b = append(b, m.Header...)
		b = append(b, m.Buf...)
	}
	return b
}

func equalShapes(a, b []shape) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSegments(t *testing.T) {
	for _, c := range []struct{ n, seg, want int }{
		{0, 0, 1}, {0, 100, 1}, {100, 0, 1}, {100, 100, 1}, {101, 100, 2}, {200, 100, 2}, {201, 100, 3},
	} {
		if got := Segments(c.n, c.seg); got != c.want {
			t.Errorf("Segments(%d, %d) = %d, want %d", c.n, c.seg, got, c.want)
		}
	}
	run := []byte("aaabbbc")
	for i, w := range []string{"aaa", "bbb", "c"} {
		if got := string(Segment(run, 3, i)); got != w {
			t.Errorf("Segment %d = %q, want %q", i, got, w)
		}
	}
}

func TestSplit(t *testing.T) {
	local := netip.MustParseAddr("192.0.2.7")
	m := batchio.Message{Addr: dst4, Local: local, TOS: 0x2e << 2, Buf: []byte("aaaabbbbcc"), SegmentSize: 4}
	got, ok := Split(nil, &m)
	if !ok || len(got) != 3 {
		t.Fatalf("Split: ok %v, %d messages", ok, len(got))
	}
	for i, w := range []string{"aaaa", "bbbb", "cc"} {
		g := got[i]
		if string(g.Buf) != w || g.SegmentSize != 0 || g.Addr != dst4 || g.Local != local || g.TOS != m.TOS {
			t.Errorf("message %d = %+v", i, g)
		}
	}
	// A header rides with the first segment: Header+Buf is one stream.
	m = batchio.Message{Addr: dst4, Header: []byte("HH"), Buf: []byte("aabbbbcc"), SegmentSize: 4}
	got, ok = Split(got[:0], &m)
	if !ok || len(got) != 3 || string(got[0].Header) != "HH" || string(got[0].Buf) != "aa" ||
		got[1].Header != nil || string(got[1].Buf) != "bbbb" || string(got[2].Buf) != "cc" {
		t.Fatalf("Split with header: ok %v %+v", ok, got)
	}
	m.Header = []byte("HHHHH")
	if _, ok := Split(nil, &m); ok {
		t.Fatal("a header longer than the segment size must not split")
	}
	// A single datagram (or a one-segment run) stays one.
	m = batchio.Message{Addr: dst4, Buf: []byte("abc"), SegmentSize: 10}
	if got, ok := Split(nil, &m); !ok || len(got) != 1 || string(got[0].Buf) != "abc" || got[0].SegmentSize != 0 {
		t.Fatalf("one segment: %+v", got)
	}
}

func TestZeroAllocs(t *testing.T) {
	sizes := make([]int, 64)
	for i := range sizes {
		sizes[i] = 1200
	}
	tmpl := arena(dst4, 0, sizes...)
	msgs := make([]batchio.Message, len(tmpl))
	split := make([]batchio.Message, 0, 128)
	allocs := testing.AllocsPerRun(100, func() {
		copy(msgs, tmpl)
		out, _ := Coalesce(msgs, nil)
		split = split[:0]
		for i := range out {
			split, _ = Split(split, &out[i])
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per run, want 0", allocs)
	}
	if len(split) != 64 {
		t.Fatalf("%d datagrams after split, want 64", len(split))
	}
}
