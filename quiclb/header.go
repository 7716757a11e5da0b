package quiclb

import (
	"encoding/binary"
	"errors"
)

// ErrMalformed is returned for a datagram that breaks the QUIC invariants:
// empty, or a long header cut short.
var ErrMalformed = errors.New("quiclb: malformed QUIC header")

// Known QUIC versions, whose long-header packet types this package can read.
const (
	Version1 uint32 = 0x00000001 // RFC 9000
	Version2 uint32 = 0x6b3343cf // RFC 9369
	// VersionNegotiation is the version field of a Version Negotiation packet.
	VersionNegotiation uint32 = 0
)

// MaxCIDLen is the longest connection ID QUIC versions 1 and 2 allow; the
// invariants allow up to 255 bytes in long headers of other versions.
const MaxCIDLen = 20

// Header is the version-independent part of a QUIC packet header (RFC 8999).
// DCID and SCID point into the datagram they were parsed from.
type Header struct {
	// First is the first octet.
	First byte
	// Long reports the long header form (the first octet's high bit).
	Long bool
	// Version is the long header's version (0 for a short header).
	Version uint32
	// DCID and SCID are the long header's connection IDs; nil for a short
	// header, whose DCID length only the configuration knows
	// ([Config.ShortDCID]).
	DCID, SCID []byte
}

// ParseHeader reads the invariant header of the first packet of pkt. Every
// version is accepted, so that an unknown one can be routed to a server that
// answers with Version Negotiation. It fails with [ErrMalformed] only for an
// empty datagram or a long header cut short.
func ParseHeader(pkt []byte) (Header, error) {
	if len(pkt) == 0 {
		return Header{}, ErrMalformed
	}
	h := Header{First: pkt[0], Long: pkt[0]&0x80 != 0}
	if !h.Long {
		return h, nil
	}
	// First octet, version (4), DCID length (1).
	if len(pkt) < 6 {
		return Header{}, ErrMalformed
	}
	h.Version = binary.BigEndian.Uint32(pkt[1:5])
	n := int(pkt[5])
	rest := pkt[6:]
	if len(rest) < n+1 {
		return Header{}, ErrMalformed
	}
	h.DCID, rest = rest[:n:n], rest[n:]
	n = int(rest[0])
	rest = rest[1:]
	if len(rest) < n {
		return Header{}, ErrMalformed
	}
	h.SCID = rest[:n:n]
	return h, nil
}

// ClientChosenDCID reports whether the long header h carries a destination
// connection ID the client chose (an Initial or 0-RTT packet of QUIC version 1
// or 2), which says nothing about a server and is routed by its hash. It is
// also true for an unknown version, whose packet types cannot be read: a
// client's first packet in a version the balancer does not know. Other long
// headers (Handshake, Retry) and short headers carry an ID a server issued.
func (h *Header) ClientChosenDCID() bool {
	if !h.Long {
		return false
	}
	typ := h.First >> 4 & 3
	switch h.Version {
	case Version1:
		return typ == 0 || typ == 1 // Initial, 0-RTT
	case Version2:
		return typ == 1 || typ == 2 // Initial, 0-RTT
	}
	return true
}
