package core

import (
	"testing"
)

// Steady-state allocation tests: once the manager's slices and the buffer
// pool have grown, the data path allocates nothing. The rigs are those of
// bench_test.go.

const allocFlows = 1_000

// allocWarmRuns is how many operations run before counting, so every slice the
// operation appends to (outputs, release list, free lists, pool classes) has
// reached its working size.
const allocWarmRuns = 2 * benchBatch

func assertNoAllocs(t *testing.T, what string, f func()) {
	t.Helper()
	for range allocWarmRuns {
		f()
	}
	if n := testing.AllocsPerRun(1000, f); n != 0 {
		t.Errorf("%s: %v allocations per run, want 0", what, n)
	}
}

func TestAllocsForward(t *testing.T) {
	r := newBenchRig(t, allocFlows, benchCluster())
	payload := make([]byte, 100)
	rng := benchRand(1)
	r.forwarding(payload)
	assertNoAllocs(t, "forward", func() {
		r.forward(rng.intn(allocFlows))
		if len(r.out) != 1 || r.out[0].Kind != OutSendToBackend {
			t.Fatalf("forward: %+v", r.out)
		}
	})
}

// TestAllocsForwardBackendsDown: the forward path with backends marked down
// (but not the flows' own) under the close policy: the down-set lookup
// allocates nothing and forwards as usual.
func TestAllocsForwardBackendsDown(t *testing.T) {
	cc := benchCluster()
	cc.CloseOnBackendDown = true
	r := newBenchRig(t, allocFlows, cc)
	r.markDown(2, 3, 700, MaxDownBackendID-1)
	payload := make([]byte, 100)
	rng := benchRand(5)
	r.forwarding(payload)
	assertNoAllocs(t, "forward, backends down", func() {
		r.forward(rng.intn(allocFlows))
		if len(r.out) != 1 || r.out[0].Kind != OutSendToBackend {
			t.Fatalf("forward: %+v", r.out)
		}
	})
	if r.m.BackendsDown() != 4 || r.m.Stats().Closes[CloseBackendDown] != 0 {
		t.Fatalf("%d backends down, %d closed", r.m.BackendsDown(), r.m.Stats().Closes[CloseBackendDown])
	}
}

func TestAllocsReturn(t *testing.T) {
	r := newBenchRig(t, allocFlows, benchCluster())
	payload := make([]byte, 100)
	rng := benchRand(2)
	r.replying(payload)
	assertNoAllocs(t, "return", func() {
		r.reply(rng.intn(allocFlows))
		if len(r.out) != 1 || r.out[0].Kind != OutSendToClient {
			t.Fatalf("return: %+v", r.out)
		}
	})
}

// TestAllocsDNSLifecycle: admit + SelectBackend, resolve + forward of the held
// query (a pool buffer), reply + close, one flow and a batch of 64.
func TestAllocsDNSLifecycle(t *testing.T) {
	for _, batch := range []int{1, 64} {
		r := newBenchRig(t, allocFlows, benchCluster())
		d := newBenchDNS(r)
		assertNoAllocs(t, "dns lifecycle", func() {
			out := d.lifecycle(batch)
			closes := 0
			for i := range out {
				if out[i].Kind == OutCloseFlow {
					closes++
				}
			}
			if closes != batch {
				t.Fatalf("batch %d: %d flows closed: %+v", batch, closes, out)
			}
		})
		if r.m.FlowCount() != allocFlows {
			t.Fatalf("%d flows live, want %d", r.m.FlowCount(), allocFlows)
		}
	}
}

// TestAllocsForwardGROProxy: a GRO run forwarded with a PROXY v2 header on
// every datagram (the header comes from the manager's per-call arena; the
// run stays one output, the header preceding each segment).
func TestAllocsForwardGROProxy(t *testing.T) {
	cc := benchCluster()
	cc.ProxyProtocol = ProxyEvery
	r := newBenchRig(t, allocFlows, cc)
	payload := make([]byte, 16*1200)
	rng := benchRand(4)
	assertNoAllocs(t, "gro+proxy forward", func() {
		r.now += benchStep
		r.in[0] = Input{Kind: InClientDatagram, Listener: benchListener, Src: benchClient(rng.intn(allocFlows)),
			Dst: benchLocal, Payload: payload, SegmentSize: 1200}
		r.out = r.m.Handle(r.now, r.in[:1], r.out[:0])
		if len(r.out) != 1 || r.out[0].Header == nil || r.out[0].Segments() != 16 {
			t.Fatalf("%d outputs, want one run of 16 segments with a header", len(r.out))
		}
	})
}

// TestMemoryPerFlow bounds the live heap per established flow (goal 200 B;
// the bound is generous so noise never fails it, a regression does).
func TestMemoryPerFlow(t *testing.T) {
	n := 1_000_000
	if testing.Short() {
		n = 100_000
	}
	_, perFlow := benchHeapPerFlow(t, n)
	t.Logf("%d flows: %.1f B/flow", n, perFlow)
	if perFlow > 300 {
		t.Errorf("%.1f B per flow at %d flows, want ≤ 300", perFlow, n)
	}
}
