package quicgo_test

import (
	"fmt"

	"github.com/quic-go/quic-go"

	"github.com/fastudp/fastudp/quiclb"
	"github.com/fastudp/fastudp/quiclb/quicgo"
)

// A backend behind fastudp with
//
//	[[cluster]]
//	affinity = "quic"
//	quic_lb = { config_id = 0, server_id_len = 2, nonce_len = 8 }
//	  [[cluster.backend]]
//	  address = "10.0.0.1:443"
//	  server_id = "0a01"
//
// issues its connection IDs with a Generator of the same configuration and
// server ID; the balancer reads the server ID back out of any of them.
func Example() {
	cfg := quiclb.Config{ConfigID: 0, ServerIDLen: 2, NonceLen: 8}
	gen, err := quicgo.New(cfg, []byte{0x0a, 0x01})
	if err != nil {
		panic(err)
	}
	// Used as: tr := &quic.Transport{Conn: udpConn, ConnectionIDGenerator: gen}
	var _ quic.ConnectionIDGenerator = gen

	cid, err := gen.GenerateConnectionID()
	if err != nil {
		panic(err)
	}
	sid, ok := cfg.ServerID(cid.Bytes())
	fmt.Printf("%d-byte IDs, server ID %x, routable %v\n", gen.ConnectionIDLen(), sid, ok)
	// Output: 11-byte IDs, server ID 0a01, routable true
}
