package core

import (
	"net/netip"
	"testing"
	"time"
)

func TestSmokeDNSLifecycle(t *testing.T) {
	m, err := NewManager(Config{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	cfg := ClusterConfig{Cluster: 7, Responses: 1}
	out := m.Handle(0, []Input{ConfigInput(ConfigEvent{Kind: ConfigSetCluster, Cluster: cfg})}, nil)
	if len(out) != 0 {
		t.Fatalf("config produced %v", out)
	}
	src := netip.MustParseAddrPort("10.0.0.1:5000")
	dst := netip.MustParseAddrPort("192.0.2.1:53")
	out = m.Handle(1, []Input{ClientDatagram(0, src, dst, []byte("query"))}, out[:0])
	if len(out) != 3 || out[1].Kind != OutSelectBackend || out[2].Kind != OutArmTimer {
		t.Fatalf("admission: %+v", out)
	}
	id := out[1].Flow
	if out[2].Deadline != Time(1).Add(30*time.Second) {
		t.Fatalf("deadline %d", out[2].Deadline)
	}
	out = m.Handle(2, []Input{Resolved(id, Backend{ID: 3, Addr: netip.MustParseAddrPort("10.1.0.1:53")})}, out[:0])
	if len(out) != 2 || out[0].Kind != OutOpenUpstream || out[1].Kind != OutSendToBackend || string(out[1].Payload) != "query" {
		t.Fatalf("resolve: %+v", out)
	}
	out = m.Handle(3, []Input{BackendDatagram(id, []byte("answer"))}, out[:0])
	if len(out) != 3 || out[0].Kind != OutSendToClient || out[0].Client != src || out[0].Local != dst || out[1].Kind != OutCloseFlow || out[2].Kind != OutArmTimer || out[2].Deadline != Never {
		t.Fatalf("reply: %+v", out)
	}
	if err := m.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	if m.FlowCount() != 0 {
		t.Fatalf("flows %d", m.FlowCount())
	}
}
