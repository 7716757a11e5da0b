package core

import (
	"testing"
	"time"
)

// TestAffinityDatagram: under AffinityDatagram every client datagram opens
// a flow of its own with a different key; the earlier flows stay open for
// their replies; the keys are the same on a replay.
func TestAffinityDatagram(t *testing.T) {
	keys := func() []uint64 {
		h := newHarness(t, Config{Seed: 7}, ClusterConfig{Affinity: AffinityDatagram, BackTimeout: 3 * time.Second})
		var ks []uint64
		var ids []FlowID
		for range 4 {
			out := h.handle(ClientDatagram(0, cliA, lcl, []byte("d")))
			sel := pick(out, OutSelectBackend)
			if len(sel) != 1 {
				t.Fatalf("want one select per datagram, got\n%s", fmtOutputs(out))
			}
			ks = append(ks, sel[0].Key)
			ids = append(ids, sel[0].Flow)
			if s := pick(h.handle(Resolved(sel[0].Flow, be1)), OutSendToBackend); len(s) != 1 {
				t.Fatal("datagram not forwarded")
			}
		}
		// Every flow is detached (its client's next datagram opened the
		// next one) and still returns replies.
		for _, id := range ids {
			info, ok := h.m.Flow(id)
			if !ok || info.Attached {
				t.Fatalf("flow %v: %+v", id, info)
			}
			if s := pick(h.handle(BackendDatagram(id, []byte("r"))), OutSendToClient); len(s) != 1 || s[0].Client != cliA {
				t.Fatalf("reply of flow %v not returned", id)
			}
		}
		return ks
	}
	a, b := keys(), keys()
	seen := map[uint64]bool{}
	for i, k := range a {
		if seen[k] {
			t.Fatalf("key %#x repeated: %v", k, a)
		}
		seen[k] = true
		if b[i] != k {
			t.Fatalf("replay gave keys %v, first run %v", b, a)
		}
	}
	if AffinityDatagram.String() != "datagram" {
		t.Fatal(AffinityDatagram.String())
	}
	if got, err := ParseAffinity("datagram"); err != nil || got != AffinityDatagram {
		t.Fatal(got, err)
	}
}
