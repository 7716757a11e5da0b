// Package quicgo issues QUIC-LB connection IDs from a quic-go server, so a
// load balancer such as fastudp (affinity "quic") routes every connection ID
// the server hands out, and so every path a migrating client opens, back to
// this server.
//
// Set a [Generator] as the ConnectionIDGenerator of the server's
// quic.Transport, with the same configuration as the balancer's cluster
// quic_lb table and the server ID of this backend's server_id:
//
//	gen, err := quicgo.New(quiclb.Config{ServerIDLen: 2, NonceLen: 8}, []byte{0x0a, 0x01})
//	tr := &quic.Transport{Conn: udpConn, ConnectionIDGenerator: gen}
//	ln, err := tr.Listen(tlsConf, quicConf)
//
// When the cluster's quic_lb table has a key, set the Config's Encrypted and
// Key too: the generator then encrypts its IDs.
package quicgo

import (
	"crypto/rand"
	"fmt"

	"github.com/quic-go/quic-go"

	"github.com/fastudp/fastudp/quiclb"
)

// Generator is a quic.ConnectionIDGenerator issuing QUIC-LB connection IDs:
// the configuration's first octet, the server ID and a random nonce
// (crypto/rand), encrypted when the configuration has a key (Encrypted,
// Key), and, without a self-encoded length, random low bits in the first
// octet. It is safe for concurrent use.
type Generator struct {
	codec    *quiclb.Codec
	cfg      quiclb.Config
	serverID []byte
}

var _ quic.ConnectionIDGenerator = (*Generator)(nil)

// New returns a Generator for the server with ID serverID under cfg.
func New(cfg quiclb.Config, serverID []byte) (*Generator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(serverID) != int(cfg.ServerIDLen) {
		return nil, fmt.Errorf("quicgo: server ID of %d bytes, want server_id_len %d", len(serverID), cfg.ServerIDLen)
	}
	codec, err := quiclb.NewCodec(cfg)
	if err != nil {
		return nil, err
	}
	return &Generator{codec: codec, cfg: cfg, serverID: append([]byte(nil), serverID...)}, nil
}

// GenerateConnectionID returns a new connection ID.
func (g *Generator) GenerateConnectionID() (quic.ConnectionID, error) {
	var rnd [1 + quiclb.MaxIDLen]byte
	if _, err := rand.Read(rnd[:1+int(g.cfg.NonceLen)]); err != nil {
		return quic.ConnectionID{}, fmt.Errorf("quicgo: nonce: %w", err)
	}
	var cid [quiclb.MaxCIDLen]byte
	n, err := g.codec.Encode(cid[:], g.serverID, rnd[1:1+int(g.cfg.NonceLen)], rnd[0])
	if err != nil {
		return quic.ConnectionID{}, err
	}
	return quic.ConnectionIDFromBytes(cid[:n]), nil
}

// ConnectionIDLen returns the length of the IDs: 1 + server ID + nonce.
func (g *Generator) ConnectionIDLen() int { return g.cfg.CIDLen() }
