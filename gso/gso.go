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
// extended slice. No payload is copied: each Buf is a sub-slice of m.Buf.
// A Header is the head of the byte stream the kernel would have cut, so
// the first message keeps m.Header and only seg−len(Header) bytes of Buf
// (PROXY v2 "first datagram" mode). ok is false, and dst is returned
// unchanged, when the Header does not fit in the first segment.
//
// Split allocates nothing when dst has room for Segments(len(Header)+len(Buf),
// SegmentSize) more messages.
func Split(dst []batchio.Message, m *batchio.Message) (_ []batchio.Message, ok bool) {
	seg, hl := m.SegmentSize, len(m.Header)
	one := batchio.Message{Addr: m.Addr, Local: m.Local, IfIndex: m.IfIndex, TOS: m.TOS}
	if seg <= 0 || hl+len(m.Buf) <= seg {
		one.Header, one.Buf = m.Header, m.Buf
		return append(dst, one), true
	}
	if hl > seg {
		return dst, false
	}
	buf := m.Buf
	first := true
	for first || len(buf) > 0 {
		k := seg
		one.Header = nil
		if first {
			k -= hl
			one.Header = m.Header
			first = false
		}
		k = min(k, len(buf))
		one.Buf = buf[:k:k]
		buf = buf[k:]
		dst = append(dst, one)
	}
	return dst, true
}

// Coalesce merges, in place, consecutive messages of a send batch into GSO
// runs and returns msgs[:k] holding the k messages left to send, in the
// original order. Message j joins the run before it when all of these hold:
//
//   - same Addr, Local, IfIndex and TOS (a change of ECN/TOS or source
//     address ends a run);
//   - neither has a Header;
//   - j's Buf starts where the run's Buf ends, inside the run's capacity
//     (contiguous memory: nothing is copied);
//   - the run's last segment is full and j is either a single datagram,
//     not empty and no longer than the run's segment size, or a run with
//     the same SegmentSize (so only the last datagram may be shorter);
//   - the result keeps to [MaxSegments] and [MaxBytes].
//
// A single datagram that a shorter or equal one joins becomes a run whose
// SegmentSize is its length. Messages that merge nothing are left as they
// are (a run received with UDP_GRO passes through whole). Coalesce
// allocates nothing.
func Coalesce(msgs []batchio.Message) []batchio.Message {
	k := 0
	for j := range msgs {
		if k > 0 && tryMerge(&msgs[k-1], &msgs[j]) {
			continue
		}
		if k != j {
			msgs[k] = msgs[j]
		}
		k++
	}
	clear(msgs[k:])
	return msgs[:k]
}

// tryMerge appends m to run r when Coalesce's rules allow and reports
// whether it did.
func tryMerge(r, m *batchio.Message) bool {
	if r.Addr != m.Addr || r.Local != m.Local || r.IfIndex != m.IfIndex || r.TOS != m.TOS ||
		len(r.Header) > 0 || len(m.Header) > 0 {
		return false
	}
	rn, mn := len(r.Buf), len(m.Buf)
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
	if cap(r.Buf) < total || &r.Buf[:rn+1][rn] != &m.Buf[0] {
		return false
	}
	r.Buf = r.Buf[:total]
	if Segments(total, seg) > 1 {
		r.SegmentSize = seg
	}
	return true
}
