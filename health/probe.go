package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// ErrUnexpectedReply is wrapped by the error of a probe whose target answered
// something other than what the probe expects.
var ErrUnexpectedReply = errors.New("unexpected reply")

// maxReply is the size of the buffer probes read replies into: the largest
// UDP payload, so no reply is truncated.
const maxReply = 64 << 10

// prober runs one probe. It returns nil on success; ctx carries the probe's
// deadline and is cancelled when the monitor stops. buf (maxReply bytes, owned
// by the caller) receives replies.
type prober interface {
	probe(ctx context.Context, addr netip.AddrPort, buf []byte) error
}

// newProber returns the prober for p (with defaults applied), or nil for
// KindNone.
func newProber(p *ProbeConfig) (prober, error) {
	switch p.Kind {
	case KindNone:
		return nil, nil
	case KindUDP:
		u := &udpProber{payload: p.Payload, expect: p.Expect, allowSilence: p.AllowSilence}
		if p.ExpectRegexp != "" {
			re, err := regexp.Compile(p.ExpectRegexp)
			if err != nil {
				return nil, fmt.Errorf("expect_regexp: %w", err)
			}
			u.re = re
		}
		return u, nil
	case KindDNS:
		return &dnsProber{name: dns.Fqdn(p.DNSName), qtype: p.DNSType, rcode: p.DNSRcode}, nil
	case KindTCP:
		return tcpProber{}, nil
	case KindQUIC:
		return quicProber{}, nil
	}
	return nil, fmt.Errorf("unknown probe kind %v", p.Kind)
}

// dialUDP returns a connected UDP socket to addr whose reads and writes end
// at ctx's deadline or when ctx is cancelled. The caller calls release.
func dialUDP(ctx context.Context, addr netip.AddrPort) (c *net.UDPConn, release func(), err error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "udp", addr.String())
	if err != nil {
		return nil, nil, fmt.Errorf("dial: %w", err)
	}
	c = nc.(*net.UDPConn)
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl) // cannot fail on an open socket
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	return c, func() { stop(); _ = c.Close() }, nil
}

// isTimeout reports whether err is a probe running out of time.
func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)
}

// describe turns a probe error into the short reason logged with a state
// change: "timeout", "connection refused", or the error's text.
func describe(err error) string {
	switch {
	case isTimeout(err):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	}
	return err.Error()
}

// tcpProber succeeds when a TCP connection opens.
type tcpProber struct{}

func (tcpProber) probe(ctx context.Context, addr netip.AddrPort, _ []byte) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return fmt.Errorf("tcp probe: %w", err)
	}
	_ = c.Close() // the connection did its job
	return nil
}
