package health_test

import (
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/fastudp/fastudp/balance"
	"github.com/fastudp/fastudp/health"
)

// The binary converts its configuration into a ProbeConfig and a
// PassiveConfig per cluster, adds the clusters, starts the monitor, and hands
// each Cluster (or its Views) to the data path.
func ExampleMonitor() {
	a := netip.MustParseAddrPort("192.0.2.1:53")
	b := netip.MustParseAddrPort("192.0.2.2:53")
	table, err := balance.NewMaglev(1, []balance.Backend{{Addr: a, Weight: 1}, {Addr: b, Weight: 1}}, 0)
	if err != nil {
		panic(err)
	}
	m := health.NewMonitor(health.Options{Logger: slog.New(slog.DiscardHandler)})
	// A real cluster would probe, e.g. ProbeConfig{Kind: health.KindDNS,
	// DNSName: "example.test"}, and call m.Start(ctx) and m.Close().
	cl, err := m.AddCluster("dns", table, health.ProbeConfig{}, health.PassiveConfig{}, true)
	if err != nil {
		panic(err)
	}

	// The control plane drains a backend: new flows avoid it.
	if err := m.SetDraining("dns", a, true); err != nil {
		panic(err)
	}
	// The data path, for each new flow: one atomic load, no lock, no allocation.
	be, ok := cl.Pick(0x1234_5678_9abc_def0)
	fmt.Println(be.Addr, ok)

	for _, c := range m.Snapshot() {
		for _, s := range c.Backends {
			fmt.Println(c.Name, s.Addr, s.State, "usable:", s.Usable)
		}
	}
	// Output:
	// 192.0.2.2:53 true
	// dns 192.0.2.1:53 draining usable: false
	// dns 192.0.2.2:53 up usable: true
}
