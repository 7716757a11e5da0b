package core

import (
	"math"
	"slices"
	"testing"
	"time"
)

// Flows pinned to a backend marked down (ConfigBackendDown): with the
// "continue" policy (the default) they go on; with CloseOnBackendDown the
// client's next datagram closes the flow (CloseBackendDown) and starts a new
// one, which asks for a backend anew.

func backendDown(id BackendID) Input {
	return ConfigInput(ConfigEvent{Kind: ConfigBackendDown, Backend: id})
}

func backendUp(id BackendID) Input {
	return ConfigInput(ConfigEvent{Kind: ConfigBackendUp, Backend: id})
}

// closeCluster is a cluster with the "close" policy.
func closeCluster() ClusterConfig {
	return ClusterConfig{Cluster: 5, FrontTimeout: 10 * time.Second, CloseOnBackendDown: true}
}

func TestBackendDownContinue(t *testing.T) {
	h := newHarness(t, Config{}, ClusterConfig{Cluster: 5, FrontTimeout: 10 * time.Second})
	id := h.establish(0, cliA, lcl, "q1")
	if out := h.handle(backendDown(be1.ID)); len(out) != 0 {
		t.Fatalf("backend down emitted %s", fmtOutputs(out))
	}
	if !h.m.BackendDown(be1.ID) || h.m.BackendsDown() != 1 {
		t.Fatal("be1 not marked down")
	}
	h.at(time.Second)
	out := h.handle(ClientDatagram(0, cliA, lcl, []byte("q2")))
	wantKinds(t, out, OutSendToBackend)
	if out[0].Flow != id || out[0].Backend.ID != be1.ID {
		t.Fatal(fmtOutputs(out))
	}
	wantKinds(t, h.handle(BackendDatagram(id, []byte("a"))), OutSendToClient)
	if h.m.Stats().Closes[CloseBackendDown] != 0 {
		t.Fatal("continue policy closed a flow")
	}
}

func TestBackendDownClose(t *testing.T) {
	h := newHarness(t, Config{}, closeCluster())
	h.at(time.Second)
	old := h.establish(0, cliA, lcl, "q1")
	wantKinds(t, h.handle(BackendDatagram(old, []byte("a1"))), OutSendToClient)
	h.handle(backendDown(be1.ID))

	// Replies never close the flow: only a client datagram does.
	h.at(2 * time.Second)
	out := h.handle(BackendDatagram(old, []byte("a2")))
	wantKinds(t, out, OutSendToClient)
	if out[0].Flow != old {
		t.Fatal(fmtOutputs(out))
	}

	h.at(3 * time.Second)
	out = h.handle(ClientDatagram(0, cliA, lcl, []byte("q2")))
	wantKinds(t, out, OutCloseFlow, OutMetric, OutSelectBackend, OutArmTimer)
	c := out[0]
	want := FlowStats{Created: Time(time.Second), Closed: Time(3 * time.Second), DatagramsIn: 1, BytesIn: 2, DatagramsOut: 2, BytesOut: 4}
	if c.Flow != old || c.CloseReason != CloseBackendDown || c.Backend.ID != be1.ID || c.Cluster != 5 ||
		c.Client != cliA || c.Local != lcl || c.Stats != want {
		t.Fatalf("close %s, want stats %+v", fmtOutput(&c), want)
	}
	nu := out[2].Flow
	if nu == old || out[1].Metric != MetricFlowCreated || out[1].Flow != nu || out[2].Client != cliA ||
		out[2].Key != AffinityHash(0, cliA, AffinityIP) {
		t.Fatal(fmtOutputs(out))
	}
	if out[3].Deadline != Time(13*time.Second) {
		t.Fatalf("armed %d, want the new flow's deadline", out[3].Deadline)
	}
	// The datagram is held for the new flow and goes to its backend.
	out = h.handle(Resolved(nu, be2))
	wantKinds(t, out, OutOpenUpstream, OutSendToBackend)
	if out[1].Flow != nu || out[1].Backend.ID != be2.ID || string(out[1].Payload) != "q2" || !h.pool.owns(out[1].Payload) {
		t.Fatal(fmtOutputs(out))
	}
	// The old flow is gone: its late replies are unknown.
	out = h.handle(BackendDatagram(old, []byte("late")))
	wantKinds(t, out, OutDrop)
	if out[0].DropReason != DropUnknownFlow {
		t.Fatal(fmtOutputs(out))
	}
	// The new flow's backend is up: it goes on.
	wantKinds(t, h.handle(ClientDatagram(0, cliA, lcl, []byte("q3"))), OutSendToBackend)
	s := h.m.Stats()
	if s.Closes[CloseBackendDown] != 1 || s.Created != 2 || s.Evicted != 1 || s.Active != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestBackendDownCases(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		cc   ClusterConfig
		run  func(t *testing.T, h *harness)
	}{
		{name: "another backend down leaves the flow alone", cc: closeCluster(), run: func(t *testing.T, h *harness) {
			id := h.establish(0, cliA, lcl, "q")
			h.handle(backendDown(be2.ID), backendDown(0), backendDown(1000))
			out := h.handle(ClientDatagram(0, cliA, lcl, []byte("x")))
			wantKinds(t, out, OutSendToBackend)
			if out[0].Flow != id {
				t.Fatal(fmtOutputs(out))
			}
		}},
		{name: "backend up clears the mark", cc: closeCluster(), run: func(t *testing.T, h *harness) {
			id := h.establish(0, cliA, lcl, "q")
			h.handle(backendDown(be1.ID), backendDown(be1.ID), backendUp(be1.ID))
			if h.m.BackendDown(be1.ID) || h.m.BackendsDown() != 0 {
				t.Fatal("be1 still down")
			}
			out := h.handle(ClientDatagram(0, cliA, lcl, []byte("x")))
			wantKinds(t, out, OutSendToBackend)
			if out[0].Flow != id {
				t.Fatal(fmtOutputs(out))
			}
		}},
		{name: "a flow awaiting its backend is not affected", cc: closeCluster(), run: func(t *testing.T, h *harness) {
			id := h.open(0, cliA, lcl, "q1")
			h.handle(backendDown(0), backendDown(be1.ID))
			if out := h.handle(ClientDatagram(0, cliA, lcl, []byte("q2"))); len(out) != 0 {
				t.Fatalf("held datagram: %s", fmtOutputs(out))
			}
			// Resolved to a backend already down (the picker raced): the
			// held datagrams go out, the next client datagram moves it.
			out := h.handle(Resolved(id, be1))
			wantKinds(t, out, OutOpenUpstream, OutSendToBackend, OutSendToBackend)
			out = h.handle(ClientDatagram(0, cliA, lcl, []byte("q3")))
			wantKinds(t, out, OutCloseFlow, OutMetric, OutSelectBackend)
			if out[0].Flow != id || out[0].CloseReason != CloseBackendDown || out[0].Stats.DatagramsIn != 2 {
				t.Fatal(fmtOutputs(out))
			}
		}},
		{name: "a GRO run goes whole to the new flow", cc: closeCluster(), run: func(t *testing.T, h *harness) {
			h.establish(0, cliA, lcl, "q")
			h.handle(backendDown(be1.ID))
			out := h.handle(groClient(0, cliA, lcl, []byte("aaaabbbbcc"), 4))
			wantKinds(t, out, OutCloseFlow, OutMetric, OutSelectBackend)
			nu := out[2].Flow
			out = h.handle(Resolved(nu, be2))
			wantKinds(t, out, OutOpenUpstream, OutSendToBackend)
			if string(out[1].Payload) != "aaaabbbbcc" || out[1].SegmentSize != 4 {
				t.Fatal(fmtOutputs(out))
			}
		}},
		{name: "a GRO run past the new flow's request cap starts another", cc: ClusterConfig{Requests: 2, CloseOnBackendDown: true},
			run: func(t *testing.T, h *harness) {
				h.establish(0, cliA, lcl, "q")
				h.handle(backendDown(be1.ID))
				out := h.handle(groClient(0, cliA, lcl, []byte("aaaabbbbcc"), 4))
				wantKinds(t, out, OutCloseFlow, OutMetric, OutSelectBackend, OutMetric, OutMetric, OutSelectBackend)
				if out[3].Metric != MetricRequestsReached || out[3].Flow != out[2].Flow || out[5].Flow == out[2].Flow {
					t.Fatal(fmtOutputs(out))
				}
				a, b := out[2].Flow, out[5].Flow
				out = h.handle(Resolved(a, be2), Resolved(b, be2))
				wantKinds(t, out, OutOpenUpstream, OutSendToBackend, OutOpenUpstream, OutSendToBackend)
				if string(out[1].Payload) != "aaaabbbb" || out[1].SegmentSize != 4 || string(out[3].Payload) != "cc" || out[3].SegmentSize != 0 {
					t.Fatal(fmtOutputs(out))
				}
			}},
		{name: "the new flow sends its own PROXY v2 header", cc: ClusterConfig{ProxyProtocol: ProxyFirst, CloseOnBackendDown: true},
			run: func(t *testing.T, h *harness) {
				h.establish(0, cliA, lcl, "q1")
				if s := pick(h.handle(ClientDatagram(0, cliA, lcl, []byte("q2"))), OutSendToBackend); len(s) != 1 || s[0].Header != nil {
					t.Fatal("second datagram carried a header")
				}
				h.handle(backendDown(be1.ID))
				out := h.handle(ClientDatagram(0, cliA, lcl, []byte("q3")))
				nu := pick(out, OutSelectBackend)[0].Flow
				out = h.handle(Resolved(nu, be2))
				wantKinds(t, out, OutOpenUpstream, OutSendToBackend)
				if out[1].Header == nil || string(out[1].Payload) != "q3" {
					t.Fatal(fmtOutputs(out))
				}
			}},
		{name: "draining: closed, then one draining drop", cc: closeCluster(), run: func(t *testing.T, h *harness) {
			id := h.establish(0, cliA, lcl, "q")
			h.handle(backendDown(be1.ID), configEvent(ConfigDrain, 0))
			out := h.handle(ClientDatagram(0, cliA, lcl, []byte("x")))
			wantKinds(t, out, OutCloseFlow, OutDrop, OutArmTimer)
			if out[0].Flow != id || out[0].CloseReason != CloseBackendDown {
				t.Fatal(fmtOutputs(out))
			}
			if d := out[1]; d.DropReason != DropDraining || d.Datagrams != 1 || d.Bytes != 1 || d.Flow != 0 || d.Listener != 0 {
				t.Fatal(fmtOutputs(out))
			}
			if s := h.m.Stats(); s.Drops[DropDraining] != 1 || s.Closes[CloseBackendDown] != 1 || s.Active != 0 {
				t.Fatalf("stats %+v", s)
			}
		}},
		{name: "draining: a GRO run is one drop", cc: closeCluster(), run: func(t *testing.T, h *harness) {
			h.establish(0, cliA, lcl, "q")
			h.handle(backendDown(be1.ID), configEvent(ConfigDrain, 0))
			out := h.handle(groClient(0, cliA, lcl, []byte("aaaabbbbcc"), 4))
			wantKinds(t, out, OutCloseFlow, OutDrop, OutArmTimer)
			if d := out[1]; d.DropReason != DropDraining || d.Datagrams != 3 || d.Bytes != 10 {
				t.Fatal(fmtOutputs(out))
			}
		}},
		{name: "at max flows the close frees the slot", cfg: Config{MaxFlows: 1}, cc: closeCluster(), run: func(t *testing.T, h *harness) {
			h.establish(0, cliA, lcl, "q")
			h.handle(backendDown(be1.ID))
			out := h.handle(ClientDatagram(0, cliA, lcl, []byte("x")))
			wantKinds(t, out, OutCloseFlow, OutMetric, OutSelectBackend)
			if h.m.FlowCount() != 1 {
				t.Fatalf("%d flows", h.m.FlowCount())
			}
		}},
		{name: "above a shrunk cap the new flow is shed", cfg: Config{MaxFlows: 2}, cc: closeCluster(), run: func(t *testing.T, h *harness) {
			h.establish(0, cliA, lcl, "q")
			h.establish(0, cliB, lcl, "q")
			h.handle(backendDown(be1.ID), configEvent(ConfigSetMaxFlows, 1))
			out := h.handle(ClientDatagram(0, cliA, lcl, []byte("x")))
			wantKinds(t, out, OutCloseFlow, OutDrop)
			if out[1].DropReason != DropShed {
				t.Fatal(fmtOutputs(out))
			}
		}},
		{name: "past its deadline the flow expires as idle", cc: closeCluster(), run: func(t *testing.T, h *harness) {
			h.establish(0, cliA, lcl, "q")
			h.handle(backendDown(be1.ID))
			h.at(time.Minute)
			out := h.handle(ClientDatagram(0, cliA, lcl, []byte("x")))
			wantKinds(t, out, OutCloseFlow, OutMetric, OutSelectBackend, OutArmTimer)
			if out[0].CloseReason != CloseIdle {
				t.Fatal(fmtOutputs(out))
			}
		}},
		{name: "a detached flow keeps its replies", cc: ClusterConfig{Requests: 1, Responses: 2, CloseOnBackendDown: true},
			run: func(t *testing.T, h *harness) {
				old := h.establish(0, cliA, lcl, "q")
				h.handle(backendDown(be1.ID))
				out := h.handle(ClientDatagram(0, cliA, lcl, []byte("x")))
				wantKinds(t, out, OutMetric, OutSelectBackend, OutMetric)
				wantKinds(t, h.handle(BackendDatagram(old, []byte("a"))), OutSendToClient)
				out = h.handle(BackendDatagram(old, []byte("b")))
				wantKinds(t, out, OutSendToClient, OutCloseFlow)
				if out[1].CloseReason != CloseResponses {
					t.Fatal(fmtOutputs(out))
				}
			}},
		{name: "live flows keep the policy they were admitted under", cc: ClusterConfig{}, run: func(t *testing.T, h *harness) {
			cont := h.establish(0, cliA, lcl, "q")
			h.handle(setCluster(0, closeCluster()))
			closing := h.establish(0, cliB, lcl, "q")
			h.handle(backendDown(be1.ID))
			out := h.handle(ClientDatagram(0, cliA, lcl, []byte("x")), ClientDatagram(0, cliB, lcl, []byte("y")))
			wantKinds(t, out, OutSendToBackend, OutCloseFlow, OutMetric, OutSelectBackend)
			if out[0].Flow != cont || out[1].Flow != closing {
				t.Fatal(fmtOutputs(out))
			}
			// Back to continue: the flows admitted under close still close.
			h.handle(setCluster(0, ClusterConfig{}))
			nu := out[3].Flow
			wantKinds(t, h.handle(Resolved(nu, be1)), OutOpenUpstream, OutSendToBackend)
			out = h.handle(ClientDatagram(0, cliB, lcl, []byte("z")))
			wantKinds(t, out, OutCloseFlow, OutMetric, OutSelectBackend, OutArmTimer)
			if out[0].Flow != nu {
				t.Fatal(fmtOutputs(out))
			}
		}},
		{name: "close all after backend down", cc: closeCluster(), run: func(t *testing.T, h *harness) {
			h.establish(0, cliA, lcl, "q")
			h.handle(backendDown(be1.ID))
			out := h.handle(configEvent(ConfigCloseAll, 0))
			wantKinds(t, out, OutCloseFlow, OutArmTimer)
			if out[0].CloseReason != CloseShutdown {
				t.Fatal(fmtOutputs(out))
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, newHarness(t, tc.cfg, tc.cc))
		})
	}
}

// TestBackendDownSet checks the down set itself: marks are idempotent, ids
// never marked are up, bad ids are counted invalid and change nothing, and
// only marking grows the set.
func TestBackendDownSet(t *testing.T) {
	h := newHarness(t, Config{})
	for _, id := range []BackendID{MaxDownBackendID, MaxDownBackendID + 1, math.MaxUint32} {
		for _, in := range []Input{backendDown(id), backendUp(id)} {
			out := h.handle(in)
			wantKinds(t, out, OutMetric)
			if out[0].Metric != MetricInvalidInput {
				t.Fatal(fmtOutputs(out))
			}
			if h.m.BackendDown(id) || h.m.BackendsDown() != 0 {
				t.Fatalf("%d marked", id)
			}
		}
	}
	if out := h.handle(backendUp(MaxDownBackendID - 1)); len(out) != 0 || len(h.m.down) != 0 {
		t.Fatalf("up of a never-marked id: %s, set of %d words", fmtOutputs(out), len(h.m.down))
	}
	ids := []BackendID{0, 63, 64, 7, MaxDownBackendID - 1}
	for _, id := range ids {
		h.handle(backendDown(id), backendDown(id))
	}
	if h.m.BackendsDown() != len(ids) || len(h.m.down) != MaxDownBackendID/64 {
		t.Fatalf("%d down, set of %d words", h.m.BackendsDown(), len(h.m.down))
	}
	var got []BackendID
	h.m.DownBackends(func(id BackendID) bool { got = append(got, id); return true })
	if want := []BackendID{0, 7, 63, 64, MaxDownBackendID - 1}; !slices.Equal(got, want) {
		t.Fatalf("DownBackends %v, want %v", got, want)
	}
	got = got[:0]
	h.m.DownBackends(func(id BackendID) bool { got = append(got, id); return false })
	if len(got) != 1 {
		t.Fatalf("DownBackends did not stop: %v", got)
	}
	for _, id := range []BackendID{1, 62, 65, MaxDownBackendID - 2} {
		if h.m.BackendDown(id) {
			t.Fatalf("%d down", id)
		}
	}
	for _, id := range ids {
		h.handle(backendUp(id), backendUp(id))
	}
	if h.m.BackendsDown() != 0 {
		t.Fatalf("%d down after up", h.m.BackendsDown())
	}
}
