package core

import (
	"bytes"
	"testing"
)

// TestAmplificationBudget: with MaxAmplification 10 and an allowance of 100
// bytes, a flow that forwarded 20 request bytes may return 300 reply bytes:
// exact counts, the drop is counted and does not close or refresh the flow,
// and a new request raises the budget.
func TestAmplificationBudget(t *testing.T) {
	cc := ClusterConfig{Cluster: 1, MaxAmplification: 10, AmplificationAllowance: 100}
	h := newHarness(t, Config{Seed: 1}, cc)
	id := h.establish(0, cliA, lcl, string(make([]byte, 20)))
	reply := func(n int) []Output {
		return h.handle(BackendDatagram(id, make([]byte, n)))
	}
	// 250 of 300 bytes: forwarded.
	if out := reply(250); len(pick(out, OutSendToClient)) != 1 {
		t.Fatalf("250: %s", fmtOutputs(out))
	}
	// 51 more would make 301: dropped, counted, nothing else.
	info, _ := h.m.Flow(id)
	h.at(1e9)
	out := reply(51)
	wantKinds(t, out, OutDrop)
	if out[0].DropReason != DropAmplification || out[0].Datagrams != 1 || out[0].Bytes != 51 || out[0].Flow != id {
		t.Fatalf("drop: %s", fmtOutputs(out))
	}
	if after, _ := h.m.Flow(id); after.Deadline != info.Deadline {
		t.Fatalf("a dropped reply moved the deadline from %d to %d", info.Deadline, after.Deadline)
	}
	// Exactly 50 fits.
	if out := reply(50); len(pick(out, OutSendToClient)) != 1 {
		t.Fatalf("50: %s", fmtOutputs(out))
	}
	if out := reply(1); out[0].DropReason != DropAmplification {
		t.Fatalf("1 past the budget: %s", fmtOutputs(out))
	}
	// A 10-byte request adds 100 bytes of budget.
	h.handle(ClientDatagram(0, cliA, lcl, make([]byte, 10)))
	if out := reply(100); len(pick(out, OutSendToClient)) != 1 {
		t.Fatalf("after a request: %s", fmtOutputs(out))
	}
	st := h.m.Stats()
	if st.Drops[DropAmplification] != 2 || st.BytesOut != 400 {
		t.Fatalf("amplification drops %d, bytes out %d; want 2, 400", st.Drops[DropAmplification], st.BytesOut)
	}
}

// TestAmplificationFirstReply: the allowance lets a first reply larger than
// the ratio through (a DNS answer to a small query), and a flow with the guard
// off is not limited.
func TestAmplificationFirstReply(t *testing.T) {
	h := newHarness(t, Config{Seed: 1},
		ClusterConfig{Cluster: 1, MaxAmplification: 3, AmplificationAllowance: 1200},
		ClusterConfig{Cluster: 2})
	id := h.establish(0, cliA, lcl, string(make([]byte, 40)))
	if out := h.handle(BackendDatagram(id, make([]byte, 1300))); len(pick(out, OutSendToClient)) != 1 {
		t.Fatalf("first reply of 1300 bytes for 40 (budget 1320): %s", fmtOutputs(out))
	}
	if out := h.handle(BackendDatagram(id, make([]byte, 21))); out[0].DropReason != DropAmplification {
		t.Fatalf("21 more: %s", fmtOutputs(out))
	}
	off := h.establish(1, cliB, lcl, "x")
	for range 10 {
		if out := h.handle(BackendDatagram(off, make([]byte, 4000))); len(pick(out, OutSendToClient)) != 1 {
			t.Fatalf("guard off: %s", fmtOutputs(out))
		}
	}
}

// TestAmplificationRun: of a GRO reply run, the leading segments that fit are
// forwarded as a run, the rest dropped; with Responses the excess beyond the
// responses cap is flow_closed and the rest amplification.
func TestAmplificationRun(t *testing.T) {
	h := newHarness(t, Config{Seed: 1},
		ClusterConfig{Cluster: 1, MaxAmplification: 2},
		ClusterConfig{Cluster: 2, MaxAmplification: 1, Responses: 3})
	id := h.establish(0, cliA, lcl, string(make([]byte, 100))) // budget 200
	run := bytes.Repeat([]byte("r"), 5*60)                     // 5 segments of 60
	out := h.handle(groBackend(id, run, 60))
	wantKinds(t, out, OutSendToClient, OutDrop)
	if len(out[0].Payload) != 180 || out[0].SegmentSize != 60 || out[1].DropReason != DropAmplification ||
		out[1].Datagrams != 2 || out[1].Bytes != 120 {
		t.Fatalf("run: %s", fmtOutputs(out))
	}
	// Budget 20 left: one short reply of 20 fits as a single datagram.
	out = h.handle(groBackend(id, append(make([]byte, 20), make([]byte, 20)...), 20))
	wantKinds(t, out, OutSendToClient, OutDrop)
	if len(out[0].Payload) != 20 || out[0].SegmentSize != 0 || out[1].Datagrams != 1 {
		t.Fatalf("last 20: %s", fmtOutputs(out))
	}

	// Responses 3 per request, one 100-byte request: budget 100. A run of
	// 5 × 40: the cap takes 3 (120 bytes), the budget 2 of them.
	id2 := h.establish(1, cliB, lcl, string(make([]byte, 100)))
	out = h.handle(groBackend(id2, make([]byte, 200), 40))
	wantKinds(t, out, OutSendToClient, OutDrop, OutDrop)
	if len(out[0].Payload) != 80 || out[1].DropReason != DropAmplification || out[1].Datagrams != 1 || out[1].Bytes != 40 ||
		out[2].DropReason != DropFlowClosed || out[2].Datagrams != 2 || out[2].Bytes != 80 {
		t.Fatalf("responses and amplification: %s", fmtOutputs(out))
	}
	// Nothing fits: all of it is dropped, split between the two reasons.
	out = h.handle(groBackend(id2, make([]byte, 200), 40))
	wantKinds(t, out, OutDrop, OutDrop)
	if out[0].DropReason != DropAmplification || out[0].Datagrams != 1 || out[0].Bytes != 40 ||
		out[1].DropReason != DropFlowClosed || out[1].Datagrams != 4 || out[1].Bytes != 160 {
		t.Fatalf("nothing fits: %s", fmtOutputs(out))
	}
	if _, ok := h.m.Flow(id2); !ok {
		t.Fatal("the flow closed")
	}
}

// TestAllocsAmplification: the reply path with the guard on, forwarding and
// dropping, allocates nothing.
func TestAllocsAmplification(t *testing.T) {
	cc := benchCluster()
	cc.MaxAmplification = 2
	r := newBenchRig(t, allocFlows, cc)
	r.forwarding(make([]byte, 100))
	for i := range allocFlows {
		r.forward(i)
	}
	r.replying(make([]byte, 150))
	rng := benchRand(3)
	assertNoAllocs(t, "reply, amplification guard", func() {
		r.reply(rng.intn(allocFlows))
		if len(r.out) != 1 || (r.out[0].Kind != OutSendToClient && r.out[0].DropReason != DropAmplification) {
			t.Fatalf("reply: %s", fmtOutputs(r.out))
		}
	})
}
