package bpf_test

import (
	"fmt"
	"net/netip"

	"github.com/fastudp/fastudp/bpf"
)

// ShardFor tells which shard `steering = "hash"` sends a client to: with
// steering_key = "ip" every port of the client shares it.
func ExampleShardFor() {
	const seed = 0x66617374756470 // config.DefaultSeed
	a := netip.MustParseAddrPort("192.0.2.10:5000")
	b := netip.MustParseAddrPort("192.0.2.10:5001")
	fmt.Println(bpf.ShardFor(seed, a, bpf.KeyIP, 4) == bpf.ShardFor(seed, b, bpf.KeyIP, 4))
	fmt.Println(bpf.ShardFor(seed, a, bpf.KeyFlow, 4), bpf.ShardFor(seed, b, bpf.KeyFlow, 4))
	// Output:
	// true
	// 2 3
}
