package balance_test

import (
	"fmt"
	"net/netip"

	"github.com/fastudp/fastudp/balance"
	"github.com/fastudp/fastudp/core"
)

func Example() {
	backends := []balance.Backend{
		{ID: 1, Addr: netip.MustParseAddrPort("192.0.2.10:53"), Weight: 1},
		{ID: 2, Addr: netip.MustParseAddrPort("192.0.2.11:53"), Weight: 1},
		{ID: 3, Addr: netip.MustParseAddrPort("192.0.2.12:53"), Weight: 2},
	}
	const seed = 42
	// The control plane builds the table when membership or weights change
	// and publishes it to the shards.
	tab, err := balance.NewMaglev(seed, backends, 0)
	if err != nil {
		panic(err)
	}
	// Each shard keeps the usable backends of the current table: health
	// changes edit the set, not the table.
	usable := tab.All()

	// The core asks for a backend with the client's affinity key.
	key := core.AffinityHash(seed, netip.MustParseAddrPort("198.51.100.7:5353"), core.AffinityIP)
	b, _ := tab.LookupAvailable(key, usable)
	fmt.Println("up:", b.Addr)

	// That backend goes down (or drains): new flows for the key go elsewhere.
	i, _ := tab.IndexOf(b.Addr)
	usable.Remove(i)
	b2, _ := tab.LookupAvailable(key, usable)
	fmt.Println("moved:", b2.Addr != b.Addr)
	// Output:
	// up: 192.0.2.12:53
	// moved: true
}
