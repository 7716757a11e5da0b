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

// With a key, a Codec encrypts the server ID and nonce (here the draft's
// four-pass example) and decrypts the server ID back; observers see neither.
func ExampleCodec() {
	cfg := quiclb.Config{ServerIDLen: 3, NonceLen: 4, SelfEncodedLength: true, Encrypted: true,
		Key: [quiclb.KeyLen]byte{0xfd, 0xf7, 0x26, 0xa9, 0x89, 0x3e, 0xc0, 0x5c, 0x06, 0x32, 0xd3, 0x95, 0x66, 0x80, 0xba, 0xf0}}
	codec, err := quiclb.NewCodec(cfg)
	if err != nil {
		panic(err)
	}
	var cid [quiclb.MaxCIDLen]byte
	n, err := codec.Encode(cid[:], []byte{0x31, 0x44, 0x1a}, []byte{0x9c, 0x69, 0xc2, 0x75}, 0)
	if err != nil {
		panic(err)
	}
	var buf [quiclb.MaxServerIDLen]byte
	route, sid := codec.Classify(append([]byte{0x40}, cid[:n]...), buf[:])
	fmt.Printf("cid %x: %v %x; config %v\n", cid[:n], route, sid, cfg)
	// Output:
	// cid 0732c363fce1e0d2: server_id 31441a; config {config_id 0, server_id_len 3, nonce_len 4, self_encoded_length true, key redacted}
}
