package config

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/quiclb"
)

// DefaultQUICNonceLen is quic_lb's nonce_len when it is not given: 8 bytes,
// or 19 - server_id_len when that is smaller (but at least 4).
const DefaultQUICNonceLen = 8

// defaultNonceLen returns the nonce length for a server ID of sidLen bytes
// when nonce_len is not given.
func defaultNonceLen(sidLen uint8) uint8 {
	return uint8(max(quiclb.MinNonceLen, min(DefaultQUICNonceLen, quiclb.MaxIDLen-int(sidLen))))
}

// quicLBFields are the keys of a cluster's quic_lb table.
var quicLBFields = []field[quiclb.Config]{
	{"config_id", func(v value, c *quiclb.Config) { v.uint8(&c.ConfigID, quiclb.MaxConfigID) }},
	{"server_id_len", func(v value, c *quiclb.Config) { v.uint8(&c.ServerIDLen, quiclb.MaxServerIDLen) }},
	{"nonce_len", func(v value, c *quiclb.Config) { v.uint8(&c.NonceLen, quiclb.MaxIDLen) }},
	{"self_encoded_length", func(v value, c *quiclb.Config) { v.bool(&c.SelfEncodedLength) }},
	{"key", func(v value, c *quiclb.Config) { v.quicKey(c) }},
}

// quicKey decodes quic_lb's key: 32 hexadecimal digits (16 bytes, AES-128),
// with optional "0x". Errors never repeat the value: it is a secret.
func (v value) quicKey(c *quiclb.Config) {
	s, ok := v.raw.(string)
	if !ok {
		v.fail("want a string of %d hexadecimal digits", 2*quiclb.KeyLen)
		return
	}
	k, err := parseQUICKey(s)
	if err != nil {
		v.fail("%v", err)
		return
	}
	c.Key, c.Encrypted = k, true
}

// parseQUICKey parses a QUIC-LB key: 32 hexadecimal digits, optional "0x"
// and surrounding white space (a key file's final newline).
func parseQUICKey(s string) ([quiclb.KeyLen]byte, error) {
	var k [quiclb.KeyLen]byte
	s = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(s), "0x"), "0X")
	if len(s) != 2*quiclb.KeyLen {
		return k, fmt.Errorf("want %d hexadecimal digits (a %d-byte AES-128 key), got %d characters", 2*quiclb.KeyLen, quiclb.KeyLen, len(s))
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return k, errors.New("want hexadecimal digits only")
	}
	return k, nil
}

// uint8 decodes an integer in 0..hi.
func (v value) uint8(dst *uint8, hi int64) {
	if n, ok := v.integer(0, hi); ok {
		*dst = uint8(n)
	}
}

// serverID decodes a backend's server_id: hexadecimal, with optional "0x".
func (v value) serverID(dst *string) {
	var s string
	if !v.string(&s) {
		return
	}
	b, err := parseServerID(s)
	if err != nil {
		v.fail("%q: %v", s, err)
		return
	}
	*dst = string(b)
}

func parseServerID(s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X"))
	if err != nil || len(b) == 0 {
		return nil, errServerIDHex
	}
	return b, nil
}

var errServerIDHex = errors.New("want the server ID in hexadecimal (e.g. \"0a01\")")

// decodeQUICLB decodes a cluster's quic_lb table (inline or
// [cluster.quic_lb]) into cl.
func decodeQUICLB(d *decoder, v value, item string, cl *Cluster) {
	m, ok := v.raw.(map[string]any)
	if !ok {
		v.wrongType("a table (quic_lb = { server_id_len = N, ... })")
		return
	}
	decodeTable(d, m, "cluster.quic_lb", v.path, item, quicLBFields, &cl.QUICLB, nil)
	if _, given := m["nonce_len"]; !given {
		cl.QUICLB.NonceLen = defaultNonceLen(cl.QUICLB.ServerIDLen)
	}
}

// quicLB checks a cluster's quic_lb table and its backends' server IDs.
func (v *validator) quicLB(cl *Cluster, path, item string) {
	qpath := joinPath(path, "quic_lb")
	set := cl.QUICLB != (quiclb.Config{})
	if set {
		if err := cl.QUICLB.Validate(); err != nil {
			v.fail(qpath, item, "quic_lb", "%s", strings.TrimPrefix(err.Error(), "quiclb: "))
		}
		if cl.Affinity != core.AffinityQUIC {
			v.fail(qpath, item, "quic_lb", "needs affinity = \"quic\" (affinity is %q)", cl.Affinity)
		}
	}
	if cl.Affinity == core.AffinityQUIC && cl.Mode != ModeUDP {
		v.fail(joinPath(path, "affinity"), item, "affinity", "\"quic\" needs mode = \"udp\"")
	}
	seen := map[string]int{}
	for j := range cl.Backends {
		b := &cl.Backends[j]
		if b.ServerID == "" {
			continue
		}
		bpath := joinPath(indexPath(joinPath(path, "backend"), j), "server_id")
		bitem := item + " " + backendItem(b, j)
		switch {
		case !set:
			v.fail(bpath, bitem, "server_id", "needs the cluster's quic_lb table")
		case len(b.ServerID) != int(cl.QUICLB.ServerIDLen):
			v.fail(bpath, bitem, "server_id", "%x is %d bytes, quic_lb's server_id_len is %d", b.ServerID, len(b.ServerID), cl.QUICLB.ServerIDLen)
		default:
			if k, dup := seen[b.ServerID]; dup {
				v.fail(bpath, bitem, "server_id", "%x is also the server ID of %s%s", b.ServerID, backendItem(&cl.Backends[k], k),
					v.at(joinPath(indexPath(joinPath(path, "backend"), k), "server_id")))
				continue
			}
			seen[b.ServerID] = j
		}
	}
}
