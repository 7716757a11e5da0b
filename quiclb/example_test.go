package quiclb_test

import (
	"fmt"

	"github.com/fastudp/fastudp/quiclb"
)

// A server encodes its server ID into a connection ID; a balancer reads it
// back from a short-header packet carrying that ID.
func Example() {
	cfg := quiclb.Config{ConfigID: 1, ServerIDLen: 2, NonceLen: 6}
	var cid [quiclb.MaxCIDLen]byte
	n, err := cfg.Encode(cid[:], []byte{0x0a, 0x01}, []byte{1, 2, 3, 4, 5, 6}, 0x15)
	if err != nil {
		panic(err)
	}
	pkt := append([]byte{0x41}, cid[:n]...) // a 1-RTT packet's first octet, then the DCID
	pkt = append(pkt, "...protected payload..."...)
	route, sid := cfg.Classify(pkt)
	fmt.Printf("cid %x: %v %x\n", cid[:n], route, sid)

	initial := []byte{0xc0, 0, 0, 0, 1, 4, 0xde, 0xad, 0xbe, 0xef, 0}
	route, dcid := cfg.Classify(initial)
	fmt.Printf("initial: %v %x\n", route, dcid)
	// Output:
	// cid 350a01010203040506: server_id 0a01
	// initial: cid_hash deadbeef
}
