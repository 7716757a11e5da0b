package health

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/miekg/dns"
)

// dnsProber sends one query over UDP and waits for its reply.
//
// A datagram is the reply only if it decodes, has QR set, the query's ID and
// the query's question (name compared case-insensitively, type and class);
// anything else is ignored as stray or spoofed, and the probe goes on waiting
// until its timeout. The reply succeeds when its rcode is the expected one
// (a truncated reply counts: the rcode is what is checked).
type dnsProber struct {
	name  string // fully qualified
	qtype uint16
	rcode int
}

func (d *dnsProber) probe(ctx context.Context, addr netip.AddrPort, buf []byte) error {
	q := new(dns.Msg)
	q.SetQuestion(d.name, d.qtype) // random ID from crypto/rand
	wire, err := q.Pack()
	if err != nil {
		return fmt.Errorf("dns probe: pack: %w", err)
	}
	c, release, err := dialUDP(ctx, addr)
	if err != nil {
		return fmt.Errorf("dns probe: %w", err)
	}
	defer release()
	if _, err := c.Write(wire); err != nil {
		return fmt.Errorf("dns probe: send: %w", err)
	}
	ignored := 0
	for {
		n, err := c.Read(buf)
		if err != nil {
			if ignored > 0 {
				return fmt.Errorf("dns probe (%d stray replies ignored): %w", ignored, err)
			}
			return fmt.Errorf("dns probe: %w", err)
		}
		r := new(dns.Msg)
		if r.Unpack(buf[:n]) != nil || !isReplyTo(r, q) {
			ignored++
			continue
		}
		if r.Rcode != d.rcode {
			return fmt.Errorf("dns probe: %w: rcode %s, want %s", ErrUnexpectedReply,
				dns.RcodeToString[r.Rcode], dns.RcodeToString[d.rcode])
		}
		return nil
	}
}

// isReplyTo reports whether r answers q: QR set, same ID, same question.
func isReplyTo(r, q *dns.Msg) bool {
	if !r.Response || r.Id != q.Id || len(r.Question) != 1 {
		return false
	}
	a, b := r.Question[0], q.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && dns.CanonicalName(a.Name) == dns.CanonicalName(b.Name)
}
