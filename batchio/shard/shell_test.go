package shard

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fastudp/fastudp/core"
)

// TestUpstreamOpenFailureShedsFlow makes every upstream socket fail to open
// (the only upstream source address is not on this host): the new flow is
// shed with a per-backend metric and the shard keeps running.
func TestUpstreamOpenFailureShedsFlow(t *testing.T) {
	t.Parallel()
	b := newBackend(t, backendOpts{Prefix: "b:"})
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: b.Addr}})
	o.UpstreamSources = []netip.Addr{netip.MustParseAddr("192.0.2.77")} // TEST-NET-1: never local
	g := startGroup(t, o)
	c := newClient(t, g.addr())
	c.send("q1")
	waitValue(t, "upstream open failures", func() uint64 { return g.backend(0, BackendOpenFailures) }, 1)
	c.expectSilence()
	if n := b.count(); n != 0 {
		t.Fatalf("backend received %d datagrams through a socket that never opened", n)
	}
	waitValue(t, "flows evicted", func() uint64 { return g.listener(ListenerFlowsEvicted) }, 1)
	if open := g.openSockets(0); open != 0 {
		t.Fatalf("%d upstream sockets open", open)
	}
	// The shard still serves: another attempt fails the same way, counted.
	c.send("q2")
	waitValue(t, "upstream open failures", func() uint64 { return g.backend(0, BackendOpenFailures) }, 2)
}

// syncBuffer is a bytes.Buffer safe for the shard goroutine to write while
// the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAccessLogOneLinePerFlow checks the access log: one JSON line per closed
// flow, with client, backend, counts, duration and reason.
func TestAccessLogOneLinePerFlow(t *testing.T) {
	t.Parallel()
	b := newBackend(t, backendOpts{Prefix: "b:"})
	var logBuf syncBuffer
	o := oneListener("127.0.0.1:0", core.ClusterConfig{Responses: 1}, fixedPicker{{ID: 0, Addr: b.Addr}})
	o.AccessLog = slog.New(slog.NewJSONHandler(&logBuf, nil))
	g := startGroup(t, o)
	c := newClient(t, g.addr())
	c.roundTrip("b:", "one")
	c.roundTrip("b:", "two")
	waitUntil(t, 5*time.Second, "two access log lines", func() bool {
		return strings.Count(logBuf.String(), "\n") >= 2
	})
	lines := strings.Split(strings.TrimSpace(logBuf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d access log lines, want 2:\n%s", len(lines), logBuf.String())
	}
	for _, line := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not JSON: %q: %v", line, err)
		}
		if rec["msg"] != "flow closed" || rec["client"] != c.Addr().String() || rec["reason"] != "responses" ||
			rec["datagrams_in"] != 1.0 || rec["datagrams_out"] != 1.0 || rec["listener"] != "l" {
			t.Fatalf("access log record %v", rec)
		}
		if _, ok := rec["duration"]; !ok {
			t.Fatalf("no duration in %v", rec)
		}
	}
}
