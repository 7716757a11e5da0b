package health

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"regexp"
)

// udpProber sends a payload on a fresh connected socket and reads one reply.
//
// Success is: the reply equals expect, when set; the reply matches re, when
// set; otherwise any reply, or, with allowSilence, also no reply at all
// within the timeout. ICMP port unreachable (read as ECONNREFUSED on the
// connected socket) fails at once in every mode.
type udpProber struct {
	payload      []byte
	expect       []byte
	re           *regexp.Regexp
	allowSilence bool
}

func (u *udpProber) probe(ctx context.Context, addr netip.AddrPort, buf []byte) error {
	c, release, err := dialUDP(ctx, addr)
	if err != nil {
		return fmt.Errorf("udp probe: %w", err)
	}
	defer release()
	if _, err := c.Write(u.payload); err != nil {
		return fmt.Errorf("udp probe: send: %w", err)
	}
	n, err := c.Read(buf)
	if err != nil {
		if u.allowSilence && isTimeout(err) && ctx.Err() != context.Canceled {
			return nil
		}
		return fmt.Errorf("udp probe: %w", err)
	}
	reply := buf[:n]
	switch {
	case u.expect != nil && !bytes.Equal(reply, u.expect):
		return fmt.Errorf("udp probe: %w: %d bytes differ from the expected %d", ErrUnexpectedReply, n, len(u.expect))
	case u.re != nil && !u.re.Match(reply):
		return fmt.Errorf("udp probe: %w: %d bytes do not match %q", ErrUnexpectedReply, n, u.re.String())
	}
	return nil
}
