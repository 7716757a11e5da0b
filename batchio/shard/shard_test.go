package shard

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/fastudp/fastudp/core"
)

type fixedPicker []core.Backend

func (p fixedPicker) Pick(_ core.ClusterID, key uint64) (core.Backend, bool) {
	if len(p) == 0 {
		return core.Backend{}, false
	}
	return p[key%uint64(len(p))], true
}

// echoBackend answers every datagram with "<name>:" + payload.
func echoBackend(t *testing.T, name string) netip.AddrPort {
	t.Helper()
	return echoAt(t, "127.0.0.1:0", name)
}

func TestGroupForwardAndReturn(t *testing.T) {
	b := echoBackend(t, "b0")
	g, err := NewGroup(GroupOptions{
		Shards:    2,
		Listeners: []Listener{{Name: "l", Addr: netip.MustParseAddrPort("127.0.0.1:0"), Cluster: core.ClusterConfig{Responses: 1}}},
		Backends:  1,
		Picker:    fixedPicker{{ID: 0, Addr: b}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g.Start(ctx)
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(g.Addrs()[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 20; i++ {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 100)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if string(buf[:n]) != "b0:ping" {
			t.Fatalf("got %q", buf[:n])
		}
	}
	g.Stop(time.Second)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	var created uint64
	for _, s := range g.Shards() {
		created += s.Counters().Listener(0, ListenerFlowsCreated)
	}
	if created != 20 {
		t.Fatalf("flows created %d, want 20", created)
	}
}
