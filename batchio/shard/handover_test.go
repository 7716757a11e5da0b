package shard

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/core"
)

// exportState pauses g and returns its handover and its state as another
// process would receive it: encoded, with the sockets as duplicates (what
// SCM_RIGHTS gives).
func exportState(t *testing.T, g *testGroup) (*Handover, *GroupState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h, err := g.Pause(ctx)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := MarshalState(&h.State)
	if err != nil {
		t.Fatal(err)
	}
	var dups []int
	for _, fd := range h.State.FDs() {
		d, err := unix.Dup(fd)
		if err != nil {
			t.Fatal(err)
		}
		dups = append(dups, d)
	}
	st, err := UnmarshalState(meta, dups)
	if err != nil {
		t.Fatal(err)
	}
	return h, st
}

// handOverTo exports g's state and starts a group resumed from it with
// options o. It returns the paused handover.
func handOverTo(t *testing.T, g *testGroup, o GroupOptions) (*Handover, *testGroup) {
	t.Helper()
	h, st := exportState(t, g)
	o.Resume = st
	return h, startGroup(t, o)
}

// TestHandoverKeepsFlows hands a two-shard group with live flows over to a
// new group while clients keep sending and the backend's replies are in
// flight (it answers 30 ms late): every request gets its reply, each flow
// keeps its one upstream source address at the backend, the new group knows
// every flow, and new flows work.
func TestHandoverKeepsFlows(t *testing.T) {
	t.Parallel()
	be := newBackend(t, backendOpts{Prefix: "r:", Delay: 30 * time.Millisecond})
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}})
	o.Shards = 2
	a := startGroup(t, o)
	const clients = 8
	cs := make([]*testClient, clients)
	for i := range cs {
		cs[i] = newClient(t, a.addr())
		cs[i].send(fmt.Sprintf("c%d-0", i))
	}
	for i, c := range cs {
		c.expect(fmt.Sprintf("r:c%d-0", i))
	}
	// Requests whose replies will arrive while the shards are paused.
	for i, c := range cs {
		c.send(fmt.Sprintf("c%d-1", i))
	}
	o.Listeners[0].Addr = a.addr()
	h, b := handOverTo(t, a, o)
	// Sent while nobody reads: waits in the listener sockets' buffers.
	for i, c := range cs {
		c.send(fmt.Sprintf("c%d-2", i))
	}
	time.Sleep(50 * time.Millisecond) // the late replies land on the upstream sockets
	h.Release()
	for i, c := range cs {
		got := map[string]bool{}
		for range 2 {
			d, err := c.recv(waitTimeout)
			if err != nil {
				t.Fatalf("client %d: %v (got %v)", i, err, got)
			}
			got[d.Payload] = true
		}
		for _, want := range []string{fmt.Sprintf("r:c%d-1", i), fmt.Sprintf("r:c%d-2", i)} {
			if !got[want] {
				t.Errorf("client %d: no %q (got %v)", i, want, got)
			}
		}
		c.send(fmt.Sprintf("c%d-3", i))
		c.expect(fmt.Sprintf("r:c%d-3", i))
	}
	// One source per client at the backend, before and after.
	src := map[string]netip.AddrPort{}
	for _, d := range be.waitReceived(t, 4*clients) {
		client := d.Payload[:len(d.Payload)-2]
		if s, ok := src[client]; ok && s != d.From {
			t.Errorf("%s: backend saw %v then %v", client, s, d.From)
		}
		src[client] = d.From
	}
	if len(src) != clients {
		t.Errorf("%d distinct flows at the backend, want %d", len(src), clients)
	}
	flows, err := b.Flows(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range flows {
		n += l.Total
	}
	if n != clients {
		t.Errorf("new group holds %d flows, want %d", n, clients)
	}
	if got := b.openSockets(0); got != clients {
		t.Errorf("new group counts %d open sockets, want %d", got, clients)
	}
	// A new client's flow.
	c := newClient(t, b.addr())
	c.send("new")
	c.expect("r:new")
}

// TestHandoverResume pauses a group and resumes it (a failed upgrade): it
// serves on, datagrams sent while paused included.
func TestHandoverResume(t *testing.T) {
	t.Parallel()
	be := newBackend(t, backendOpts{Prefix: "r:"})
	g := startGroup(t, oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}}))
	c := newClient(t, g.addr())
	c.roundTrip("r:", "one")
	h, err := g.Pause(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n := h.State.Flows(); n != 1 {
		t.Errorf("state has %d flows, want 1", n)
	}
	c.send("two")
	c.expectSilence()
	h.Resume()
	c.expect("r:two")
	c.roundTrip("r:", "three")
}

// TestHandoverRefusesMismatch: a state for another shard count or listener
// set is refused, and state encodings that name the wrong sockets too.
func TestHandoverRefusesMismatch(t *testing.T) {
	t.Parallel()
	be := newBackend(t, backendOpts{})
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}})
	g := startGroup(t, o)
	h, err := g.Pause(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Resume()
	meta, err := MarshalState(&h.State)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := UnmarshalState(meta, nil); err == nil {
		t.Error("state accepted without its sockets")
	}
	if _, err := UnmarshalState(meta, []int{1, 2}); err == nil {
		t.Error("state accepted with a socket too many")
	}
	if _, err := UnmarshalState([]byte("{"), nil); err == nil {
		t.Error("corrupt state accepted")
	}
	bad := o
	bad.Shards = 2
	bad.Resume = &h.State
	if _, err := NewGroup(bad); err == nil {
		t.Error("resumed with another shard count")
	}
	bad = o
	bad.Listeners = []Listener{{Name: "l", Addr: netip.MustParseAddrPort("127.0.0.1:1")}}
	bad.Resume = &h.State
	if _, err := NewGroup(bad); err == nil {
		t.Error("resumed on another listener address")
	}
}
