package gso

import (
	"net/netip"

	"github.com/fastudp/fastudp/batchio"
)

// MaxSegments is the most segments one GSO send may carry (the portable
// UDP_MAX_SEGMENTS; see the package documentation).
const MaxSegments = batchio.MaxGSOSegments

// MaxBytesIPv4 and MaxBytesIPv6 are the most payload bytes one UDP send
// may carry to an IPv4 or an IPv6 peer.
const (
	MaxBytesIPv4 = 65535 - 20 - 8
	MaxBytesIPv6 = 65535 - 8
)

// MaxBytes returns the payload limit of one send to addr: [MaxBytesIPv6]
// for a (non-mapped) IPv6 address, otherwise [MaxBytesIPv4]. The invalid
// address (a connected socket whose family is unknown here) gets the IPv4
// limit, which is safe for both.
func MaxBytes(addr netip.AddrPort) int {
	if a := addr.Addr(); a.Is6() && !a.Is4In6() {
		return MaxBytesIPv6
	}
	return MaxBytesIPv4
}

// Segments returns how many datagrams a run of n bytes with segment size
// seg carries: 1 when seg is 0 or at least n (a single datagram, even an
// empty one), otherwise ceil(n/seg).
func Segments(n, seg int) int {
	if seg <= 0 || n <= seg {
		return 1
	}
	return (n + seg - 1) / seg
}

// Segment returns segment i of run (segment size seg), a sub-slice of run.
// It panics if i is out of range.
func Segment(run []byte, seg, i int) []byte {
	if seg <= 0 || len(run) <= seg {
		if i != 0 {
			panic("gso: segment index out of range")
		}
		return run
	}
	lo := i * seg
	if i < 0 || lo >= len(run) {
		panic("gso: segment index out of range")
	}
	return run[lo:min(lo+seg, len(run))]
}

// Split appends the datagrams of m to dst as single-datagram messages
// (SegmentSize 0) with m's Addr, Local, IfIndex and TOS, and returns the
// extended slice. No payload is copied: each datagram is made of
// sub-slices of m's pieces. Header, Buf and the Gather pieces are one
// byte stream that the kernel would cut every SegmentSize bytes, and Split
// cuts it the same way: a datagram lying in one piece becomes Buf, one
// spanning two pieces becomes Header and Buf (so a header that rides with
// the first segment, PROXY v2 "first datagram", or the header before every
// segment of [HeaderEach], stays the datagram's Header). ok is false, and
// dst is returned unchanged, when the Header does not fit in the first
// segment or a datagram would span more than two pieces.
//
// Split allocates nothing when dst has room for Segments(m.Len(),
// SegmentSize) more messages.
func Split(dst []batchio.Message, m *batchio.Message) (_ []batchio.Message, ok bool) {
	seg, hl, total := m.SegmentSize, len(m.Header), m.Len()
	one := batchio.Message{Addr: m.Addr, Local: m.Local, IfIndex: m.IfIndex, TOS: m.TOS}
	if len(m.Gather) == 0 && (seg <= 0 || total <= seg) {
		one.Header, one.Buf = m.Header, m.Buf
		return append(dst, one), true
	}
	if seg <= 0 || total <= seg {
		seg = total // one datagram made of several pieces
	}
	if hl > seg {
		return dst, false
	}
	start := len(dst)
	p, cur := 0, m.Header // piece index (0 Header, 1 Buf, 2... Gather) and what is left of it
	for total > 0 {
		k := min(seg, total)
		total -= k
		var parts [2][]byte
		np := 0
		for k > 0 {
			for len(cur) == 0 {
				p++
				cur = piece(m, p)
			}
			if np == len(parts) {
				return dst[:start], false
			}
			take := min(k, len(cur))
			parts[np] = cur[:take:take]
			np++
			cur = cur[take:]
			k -= take
		}
		one.Header, one.Buf = nil, parts[0]
		if np == 2 {
			one.Header, one.Buf = parts[0], parts[1]
		}
		dst = append(dst, one)
	}
	return dst, true
}

// piece returns piece i of m's byte stream: 0 Header, 1 Buf, then the
// Gather pieces.
func piece(m *batchio.Message, i int) []byte {
	switch i {
	case 0:
		return m.Header
	case 1:
		return m.Buf
	}
	return m.Gather[i-2]
}

// Coalesce merges, in place, consecutive messages of a send batch into GSO
// runs and returns msgs[:k] holding the k messages left to send, in the
// original order, and parts extended by the pieces it gathered. Message j
// joins the run before it when all of these hold:
//
//   - same Addr, Local, IfIndex and TOS (a change of ECN/TOS or source
//     address ends a run);
//   - neither has a Header, and j has no Gather pieces;
//   - the run's last segment is full and j is either a single datagram,
//     not empty and no longer than the run's segment size, or a run with
//     the same SegmentSize (so only the last datagram may be shorter);
//   - the result keeps to [MaxSegments] and [MaxBytes];
//   - j's Buf starts where the run's Buf ends, inside its capacity
//     (contiguous memory: the run's Buf grows), or else parts has room for
//     one more piece (j's Buf becomes a Gather piece of the run: the kernel
//     gathers it, nothing is copied).
//
// A single datagram that a shorter or equal one joins becomes a run whose
// SegmentSize is its length. Messages that merge nothing are left as they
// are (a run received with UDP_GRO passes through whole). Every run's
// Gather is a sub-slice of parts, so parts must stay untouched until the
// messages are sent. Coalesce allocates nothing: it never grows parts
// beyond its capacity (with none, only contiguous datagrams merge).
func Coalesce(msgs []batchio.Message, parts [][]byte) ([]batchio.Message, [][]byte) {
	k := 0
	for j := range msgs {
		if k > 0 && tryMerge(&msgs[k-1], &msgs[j], &parts) {
			continue
		}
		if k != j {
			msgs[k] = msgs[j]
		}
		k++
	}
	clear(msgs[k:])
	return msgs[:k], parts
}

// tryMerge appends m to run r when Coalesce's rules allow and reports
// whether it did.
func tryMerge(r, m *batchio.Message, parts *[][]byte) bool {
	if r.Addr != m.Addr || r.Local != m.Local || r.IfIndex != m.IfIndex || r.TOS != m.TOS ||
		len(r.Header) > 0 || len(m.Header) > 0 || len(m.Gather) > 0 {
		return false
	}
	rn, mn := r.Len(), len(m.Buf)
	if rn == 0 || mn == 0 {
		return false
	}
	seg := r.SegmentSize
	if seg <= 0 || seg > rn {
		seg = rn // a single datagram (or a one-segment run)
	}
	if rn%seg != 0 { // the run already ends with a short tail
		return false
	}
	if m.SegmentSize > 0 && m.SegmentSize < mn {
		if m.SegmentSize != seg {
			return false
		}
	} else if mn > seg {
		return false
	}
	total := rn + mn
	if total > MaxBytes(r.Addr) || Segments(total, seg) > MaxSegments {
		return false
	}
	bn := len(r.Buf)
	switch n := len(*parts); {
	case len(r.Gather) == 0 && cap(r.Buf) >= bn+mn && &r.Buf[:bn+1][bn] == &m.Buf[0]:
		r.Buf = r.Buf[:bn+mn]
	case n == cap(*parts):
		return false
	case len(r.Gather) == 0:
		*parts = append(*parts, m.Buf)
		r.Gather = (*parts)[n : n+1]
	case n > 0 && &r.Gather[len(r.Gather)-1] == &(*parts)[n-1]:
		// The run's pieces end parts (only the last run grows), so the
		// new piece extends them.
		*parts = append(*parts, m.Buf)
		r.Gather = r.Gather[:len(r.Gather)+1]
	default:
		return false // Gather pieces the caller gave, not in parts
	}
	if Segments(total, seg) > 1 {
		r.SegmentSize = seg
	}
	return true
}

// HeaderEach appends to dst the sends that carry run, a GRO run of seg-byte
// segments (the last may be shorter; seg <= 0 or >= len(run): one
// datagram), with hdr in front of every segment, and returns dst and
// parts extended. Each send is a GSO run whose pieces are [hdr, segment 1,
// hdr, segment 2, ...] (Header, Buf, then Gather pieces in parts): every
// header points at hdr and every segment into run, nothing is copied, and
// the kernel cuts the stream every len(hdr)+seg bytes, exactly at the
// headers. A run is cut into several sends so each keeps to
// [MaxSegments] and [MaxBytes] of tmpl.Addr (headers included); a send of
// one segment is a single datagram (SegmentSize 0). Addr, Local, IfIndex
// and TOS come from tmpl.
//
// HeaderEach allocates nothing when dst has room for the sends and parts
// for 2×(segments−1) pieces.
func HeaderEach(dst []batchio.Message, parts [][]byte, tmpl *batchio.Message, hdr, run []byte, seg int) ([]batchio.Message, [][]byte) {
	one := batchio.Message{Addr: tmpl.Addr, Local: tmpl.Local, IfIndex: tmpl.IfIndex, TOS: tmpl.TOS, Header: hdr}
	if seg <= 0 || seg >= len(run) {
		one.Buf = run
		return append(dst, one), parts
	}
	wire := len(hdr) + seg
	per := max(min(MaxSegments, MaxBytes(tmpl.Addr)/wire), 1)
	for len(run) > 0 {
		k := min(seg, len(run))
		one.Buf, run = run[:k:k], run[k:]
		one.Gather, one.SegmentSize = nil, 0
		start := len(parts)
		for i := 1; i < per && len(run) > 0; i++ {
			k := min(seg, len(run))
			parts = append(parts, hdr, run[:k:k])
			run = run[k:]
		}
		if len(parts) > start {
			one.Gather = parts[start:len(parts):len(parts)]
			one.SegmentSize = wire
		}
		dst = append(dst, one)
	}
	return dst, parts
}
