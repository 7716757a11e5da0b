package health

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
)

// QUIC probe packet layout (RFC 8999 §5.1, the version-independent long
// header):
//
//	byte 0       1 (long header), 1 (fixed bit in v1), 00 (Initial in v1),
//	             4 random bits
//	bytes 1-4    version: 0x?a?a?a?a, reserved to force version negotiation
//	             (RFC 9000 §15)
//	byte 5       DCID length (quicCIDLen), then the DCID
//	next byte    SCID length (quicCIDLen), then the SCID
//	rest         random padding up to quicProbeSize
//
// A server that does not support the version answers with a Version
// Negotiation packet (RFC 9000 §6, §17.2.1): long header, version 0, its DCID
// is our SCID and its SCID our DCID, followed by a non-empty list of 4-byte
// versions.
const (
	// quicProbeSize is the smallest datagram a server must answer with
	// Version Negotiation (RFC 9000 §14.1: 1200 bytes); quic-go drops smaller
	// ones (protocol.MinUnknownVersionPacketSize).
	quicProbeSize = 1200
	// quicCIDLen is the length of both connection IDs: 8, the minimum for a
	// client's first DCID (RFC 9000 §7.2).
	quicCIDLen = 8
)

// quicProber sends a long-header packet with a reserved version and expects
// a Version Negotiation packet that echoes its connection IDs. Other
// datagrams are ignored until the timeout.
type quicProber struct{}

func (quicProber) probe(ctx context.Context, addr netip.AddrPort, buf []byte) error {
	pkt, dcid, scid := quicProbePacket()
	c, release, err := dialUDP(ctx, addr)
	if err != nil {
		return fmt.Errorf("quic probe: %w", err)
	}
	defer release()
	if _, err := c.Write(pkt); err != nil {
		return fmt.Errorf("quic probe: send: %w", err)
	}
	ignored := 0
	for {
		n, err := c.Read(buf)
		if err != nil {
			if ignored > 0 {
				return fmt.Errorf("quic probe (%d datagrams that are not version negotiation ignored): %w", ignored, err)
			}
			return fmt.Errorf("quic probe: %w", err)
		}
		if isVersionNegotiation(buf[:n], dcid, scid) {
			return nil
		}
		ignored++
	}
}

// quicProbePacket returns a fresh probe packet and its DCID and SCID (slices
// of the packet).
func quicProbePacket() (pkt, dcid, scid []byte) {
	pkt = make([]byte, quicProbeSize)
	_, _ = rand.Read(pkt) // crypto/rand.Read never fails (Go 1.24+)
	pkt[0] = 0xc0 | pkt[0]&0x0f
	for i := 1; i <= 4; i++ {
		pkt[i] = pkt[i]&0xf0 | 0x0a
	}
	pkt[5] = quicCIDLen
	dcid = pkt[6 : 6+quicCIDLen]
	pkt[6+quicCIDLen] = quicCIDLen
	scid = pkt[7+quicCIDLen : 7+2*quicCIDLen]
	return pkt, dcid, scid
}

// isVersionNegotiation reports whether b is a Version Negotiation packet
// answering a packet with the given DCID and SCID.
func isVersionNegotiation(b, dcid, scid []byte) bool {
	if len(b) < 7 || b[0]&0x80 == 0 || binary.BigEndian.Uint32(b[1:5]) != 0 {
		return false
	}
	b = b[5:]
	echoDCID, b, ok := cutCID(b)
	if !ok || !bytes.Equal(echoDCID, scid) {
		return false
	}
	echoSCID, b, ok := cutCID(b)
	if !ok || !bytes.Equal(echoSCID, dcid) {
		return false
	}
	return len(b) > 0 && len(b)%4 == 0
}

// cutCID splits a length-prefixed connection ID off b.
func cutCID(b []byte) (cid, rest []byte, ok bool) {
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return nil, nil, false
	}
	n := int(b[0])
	return b[1 : 1+n], b[1+n:], true
}
