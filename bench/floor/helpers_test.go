package floor

import "net/netip"

func loopback0() netip.AddrPort { return netip.MustParseAddrPort("127.0.0.1:0") }
