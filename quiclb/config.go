package quiclb

import (
	"errors"
	"fmt"
	"log/slog"
)

// Limits of a plaintext QUIC-LB configuration.
const (
	// MaxConfigID is the largest routable config rotation ID; the value 7
	// ([Unroutable]) marks a connection ID that carries no server ID.
	MaxConfigID = 6
	// Unroutable is the config rotation value of connection IDs a server
	// issues without a server ID.
	Unroutable = 7
	// MaxServerIDLen is the longest server ID.
	MaxServerIDLen = 15
	// MinNonceLen is the shortest nonce: fewer random bytes would let
	// connection IDs of one server repeat.
	MinNonceLen = 4
	// MaxIDLen bounds server ID + nonce: with the first octet, a connection
	// ID of at most 20 bytes.
	MaxIDLen = MaxCIDLen - 1
)

// ErrUnroutable is returned by [Config.ShortDCID] when a self-encoded
// connection ID length cannot be read: the ID belongs to another config
// rotation ID (or is marked unroutable, 7).
var ErrUnroutable = errors.New("quiclb: connection ID not routable by this configuration")

// Config is a plaintext QUIC-LB configuration shared by a load balancer and
// its servers. A connection ID under it is
//
//	first octet: config rotation ID (3 high bits), then 5 bits that are
//	             random or, with SelfEncodedLength, the ID's length minus one
//	server ID:   ServerIDLen bytes
//	nonce:       NonceLen bytes, random
//
// so every ID is 1 + ServerIDLen + NonceLen bytes long. The zero Config is
// not valid; see [Config.Validate].
type Config struct {
	// ConfigID is the config rotation ID, 0..6: during a rotation the old
	// and the new configuration differ in it.
	ConfigID uint8
	// ServerIDLen is the server ID's length, 1..15 bytes.
	ServerIDLen uint8
	// NonceLen is the nonce's length, at least 4 bytes; ServerIDLen +
	// NonceLen is at most 19.
	NonceLen uint8
	// SelfEncodedLength puts the connection ID's length minus one in the
	// low 5 bits of the first octet (the draft's length self-description):
	// the balancer reads a short header's DCID length from the ID itself,
	// so servers may use different nonce lengths (NonceLen is then the
	// length this server's IDs use).
	SelfEncodedLength bool
	// Encrypted says the server ID and nonce are encrypted with Key
	// (AES-128-ECB, single-pass or four-pass as the draft describes), so
	// observers cannot read the server ID. Encrypted IDs are encoded and
	// decoded by a [Codec].
	Encrypted bool
	// Key is the cluster's secret 16-byte key, used when Encrypted. The
	// String, GoString and LogValue methods of Config never show it.
	Key [KeyLen]byte
}

// Layout returns c without its key: the connection ID's shape (first octet,
// lengths), which is all that parsing packets needs.
func (c Config) Layout() Config {
	c.Encrypted, c.Key = false, [KeyLen]byte{}
	return c
}

// String describes c, with the key redacted.
func (c Config) String() string {
	key := "none"
	if c.Encrypted {
		key = "redacted"
	}
	return fmt.Sprintf("{config_id %d, server_id_len %d, nonce_len %d, self_encoded_length %t, key %s}",
		c.ConfigID, c.ServerIDLen, c.NonceLen, c.SelfEncodedLength, key)
}

// GoString is String, so that %#v does not print the key either.
func (c Config) GoString() string { return "quiclb.Config" + c.String() }

// LogValue implements slog.LogValuer: c without its key.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.String()) }

// Validate reports the first invalid field of c.
func (c *Config) Validate() error {
	switch {
	case c.ConfigID > MaxConfigID:
		return fmt.Errorf("quiclb: config_id %d: want 0..%d (%d marks unroutable IDs)", c.ConfigID, MaxConfigID, Unroutable)
	case c.ServerIDLen < 1 || c.ServerIDLen > MaxServerIDLen:
		return fmt.Errorf("quiclb: server_id_len %d: want 1..%d", c.ServerIDLen, MaxServerIDLen)
	case c.NonceLen < MinNonceLen:
		return fmt.Errorf("quiclb: nonce_len %d: want at least %d", c.NonceLen, MinNonceLen)
	case int(c.ServerIDLen)+int(c.NonceLen) > MaxIDLen:
		return fmt.Errorf("quiclb: server_id_len %d + nonce_len %d: want at most %d", c.ServerIDLen, c.NonceLen, MaxIDLen)
	case !c.Encrypted && c.Key != [KeyLen]byte{}:
		return errors.New("quiclb: a key without Encrypted")
	}
	return nil
}

// CIDLen returns the length of the connection IDs of c: 1 + ServerIDLen +
// NonceLen.
func (c *Config) CIDLen() int { return 1 + int(c.ServerIDLen) + int(c.NonceLen) }

// Encode writes into dst (at least [Config.CIDLen] bytes) a connection ID
// carrying serverID (ServerIDLen bytes) and nonce (NonceLen bytes); random
// supplies the first octet's low 5 bits when the length is not self-encoded.
// It returns the ID's length.
// An encrypted configuration fails: its IDs are encoded by a [Codec].
func (c *Config) Encode(dst, serverID, nonce []byte, random byte) (int, error) {
	if c.Encrypted {
		return 0, errEncrypted
	}
	return c.encodePlain(dst, serverID, nonce, random)
}

// encodePlain is Encode without encryption.
func (c *Config) encodePlain(dst, serverID, nonce []byte, random byte) (int, error) {
	n := c.CIDLen()
	switch {
	case len(serverID) != int(c.ServerIDLen):
		return 0, fmt.Errorf("quiclb: server ID of %d bytes, want %d", len(serverID), c.ServerIDLen)
	case len(nonce) != int(c.NonceLen):
		return 0, fmt.Errorf("quiclb: nonce of %d bytes, want %d", len(nonce), c.NonceLen)
	case len(dst) < n:
		return 0, fmt.Errorf("quiclb: buffer of %d bytes for a %d-byte connection ID", len(dst), n)
	}
	low := random & 0x1f
	if c.SelfEncodedLength {
		low = byte(n-1) & 0x1f
	}
	dst[0] = c.ConfigID<<5 | low
	copy(dst[1:], serverID)
	copy(dst[1+len(serverID):], nonce)
	return n, nil
}

// ServerID returns the server ID in cid, or false when cid is not an ID of c:
// another config rotation ID (or 7, unroutable), or the wrong length. With
// SelfEncodedLength the length is the one the first octet gives, and any
// nonce of at least [MinNonceLen] bytes is accepted (servers may differ in
// nonce length); otherwise the ID must be [Config.CIDLen] bytes. An
// encrypted configuration returns false: its IDs are decoded by a [Codec].
func (c *Config) ServerID(cid []byte) ([]byte, bool) {
	if c.Encrypted || !c.ownID(cid) {
		return nil, false
	}
	return cid[1 : 1+int(c.ServerIDLen)], true
}

// ownID reports whether cid is an ID of c (config rotation ID and length).
func (c *Config) ownID(cid []byte) bool {
	if len(cid) == 0 || cid[0]>>5 != c.ConfigID {
		return false
	}
	if c.SelfEncodedLength {
		return int(cid[0]&0x1f)+1 == len(cid) && len(cid) >= 1+int(c.ServerIDLen)+MinNonceLen
	}
	return len(cid) == c.CIDLen()
}

// serverID reads cid's server ID with k (into sid) or, without k, as
// plaintext.
func (c *Config) serverID(cid []byte, k *Codec, sid []byte) ([]byte, bool) {
	if k != nil {
		return k.ServerID(cid, sid)
	}
	return c.ServerID(cid)
}

// ShortDCID returns the destination connection ID of the short-header packet
// pkt: its [Config.CIDLen] bytes after the first octet, or, with
// SelfEncodedLength, as many as the ID's first octet says when its config
// rotation ID is c's. It fails with [ErrMalformed] when pkt is too short to
// hold the ID, and with [ErrUnroutable] when the ID's length cannot be known
// (a self-encoded length under another config rotation ID).
func (c *Config) ShortDCID(pkt []byte) ([]byte, error) {
	if len(pkt) < 2 {
		return nil, ErrMalformed
	}
	n := c.CIDLen()
	if c.SelfEncodedLength {
		if pkt[1]>>5 != c.ConfigID {
			return nil, ErrUnroutable
		}
		n = int(pkt[1]&0x1f) + 1
	}
	if len(pkt) < 1+n {
		return nil, ErrMalformed
	}
	return pkt[1 : 1+n : 1+n], nil
}

// Route is how a datagram of a new flow is routed.
type Route uint8

// Routes.
const (
	// RouteMalformed: the datagram breaks the invariants; drop it.
	RouteMalformed Route = iota
	// RouteServerID: the DCID carries a server ID of c (returned).
	RouteServerID
	// RouteCIDHash: a long header with a client-chosen DCID (an Initial or
	// 0-RTT, or an unknown version): route by a hash of the DCID, so that
	// every retransmission agrees, whatever port it comes from.
	RouteCIDHash
	// RouteFallback: the DCID carries no server ID of c; route as the
	// cluster routes any new flow.
	RouteFallback
)

var routeNames = [...]string{"malformed", "server_id", "cid_hash", "fallback"}

func (r Route) String() string {
	if int(r) < len(routeNames) {
		return routeNames[r]
	}
	return fmt.Sprintf("route(%d)", uint8(r))
}

// Classify says how to route pkt, the first datagram of a new flow, under c:
// by the server ID it returns, by a hash of the long header's DCID (also
// returned), or by the fallback. The zero Config (no QUIC-LB configuration)
// routes every short header by the fallback. An encrypted configuration
// routes by the fallback where a [Codec] would decrypt a server ID. It
// allocates nothing.
func (c *Config) Classify(pkt []byte) (Route, []byte) {
	return c.classify(pkt, nil, nil)
}

// classify is Classify, reading server IDs with k when it is not nil.
func (c *Config) classify(pkt []byte, k *Codec, sidBuf []byte) (Route, []byte) {
	h, err := ParseHeader(pkt)
	if err != nil {
		return RouteMalformed, nil
	}
	if c.ServerIDLen == 0 {
		if h.Long && h.ClientChosenDCID() {
			return RouteCIDHash, h.DCID
		}
		return RouteFallback, nil
	}
	if h.Long {
		if h.ClientChosenDCID() {
			return RouteCIDHash, h.DCID
		}
		if sid, ok := c.serverID(h.DCID, k, sidBuf); ok {
			return RouteServerID, sid
		}
		return RouteFallback, nil
	}
	dcid, err := c.ShortDCID(pkt)
	switch {
	case errors.Is(err, ErrMalformed):
		return RouteMalformed, nil
	case err != nil:
		return RouteFallback, nil
	}
	if sid, ok := c.serverID(dcid, k, sidBuf); ok {
		return RouteServerID, sid
	}
	return RouteFallback, nil
}
