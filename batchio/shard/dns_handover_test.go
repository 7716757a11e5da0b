package shard

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/dns"
)

// slowDNS answers each query (echo with QR set) delay after it arrives and
// records the source addresses it saw.
type slowDNS struct {
	conn  *net.UDPConn
	mu    sync.Mutex
	srcs  map[netip.AddrPort]bool
	count int
}

func newSlowDNS(t *testing.T, delay time.Duration) *slowDNS {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &slowDNS{conn: c, srcs: map[netip.AddrPort]bool{}}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			a := echoAnswer(buf[:n])
			r.mu.Lock()
			r.srcs[from] = true
			r.count++
			r.mu.Unlock()
			time.AfterFunc(delay, func() { _, _ = c.WriteToUDPAddrPort(a, from) })
		}
	}()
	return r
}

func (r *slowDNS) stats() (queries, sources int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count, len(r.srcs)
}

// TestHandoverCarriesDNSQueries hands a two-shard DNS-mode group over while
// every client's query is outstanding at a backend that answers 300 ms
// late: the new group matches each late answer to its query and returns it
// to its client, once, under the client's ID and with its question; new
// queries go out on the same upstream sockets.
func TestHandoverCarriesDNSQueries(t *testing.T) {
	t.Parallel()
	be := newSlowDNS(t, 300*time.Millisecond)
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.conn.LocalAddr().(*net.UDPAddr).AddrPort()}})
	o.Shards = 2
	o.Listeners[0].DNS = &DNSListener{Sockets: 2, MaxInFlight: 100, Timeout: 10 * time.Second}
	a := startGroup(t, o)
	const clients = 16
	conns := make([]*net.UDPConn, clients)
	name := func(i, round int) string { return fmt.Sprintf("c%d-r%d.example.test.", i, round) }
	for i := range conns {
		conns[i] = dnsClient(t, a.addr())
	}
	check := func(round int) {
		t.Helper()
		for i, c := range conns {
			ans, err := readAnswer(c, waitTimeout)
			if err != nil {
				t.Fatalf("client %d round %d: %v", i, round, err)
			}
			q, err := dns.ParseQuestion(ans)
			if err != nil {
				t.Fatal(err)
			}
			if dns.ID(ans) != uint16(1000+i) || dns.NameString(q.Name) != name(i, round) || ans[2]&0x80 == 0 {
				t.Fatalf("client %d round %d: id %d name %s", i, round, dns.ID(ans), dns.NameString(q.Name))
			}
		}
		for i, c := range conns {
			if ans, err := readAnswer(c, 20*time.Millisecond); err == nil {
				t.Fatalf("client %d round %d: second answer %x", i, round, ans)
			}
		}
	}
	send := func(round int) {
		t.Helper()
		for i, c := range conns {
			if _, err := c.Write(query(t, uint16(1000+i), name(i, round))); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(0)
	check(0) // every shard has its sockets open
	send(1)
	// Every query of round 1 reaches the backend before the handover.
	waitValue(t, "queries at the backend", func() uint64 { q, _ := be.stats(); return uint64(q) }, 2*clients)
	_, before := be.stats()
	o.Listeners[0].Addr = a.addr()
	h, b := handOverTo(t, a, o)
	h.Release()
	check(1)
	waitValue(t, "answers matched by the new group", func() uint64 { return b.backend(0, BackendDNSAnswers) }, clients)
	if n := b.backend(0, BackendDNSUnknown); n != 0 {
		t.Fatalf("new group dropped %d answers as unknown", n)
	}
	send(2)
	check(2)
	if before > 2*o.Shards {
		t.Fatalf("%d sources at the backend, want at most %d", before, 2*o.Shards)
	}
	if _, after := be.stats(); after != before {
		t.Fatalf("the new group opened new sockets: %d sources, then %d", before, after)
	}
}

// TestHandoverBadDNSState resumes a group from DNS state that is corrupt
// (a table that does not decode), names a backend the group lacks, or
// repeats a socket index: the group starts without panicking, closes those
// sockets, and answers new queries on the one valid socket.
func TestHandoverBadDNSState(t *testing.T) {
	t.Parallel()
	r := newDNSResponder(t)
	o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: r.addr()}})
	o.Listeners[0].DNS = &DNSListener{Sockets: 4, MaxInFlight: 100, Timeout: 5 * time.Second}
	a := startGroup(t, o)
	c := dnsClient(t, a.addr())
	if _, err := c.Write(query(t, 77, "before.example.test.")); err != nil {
		t.Fatal(err)
	}
	if _, err := readAnswer(c, waitTimeout); err != nil {
		t.Fatal(err)
	}
	h, st := exportState(t, a)
	socks := st.Shards[0].DNSSockets
	if len(socks) != 4 {
		t.Fatalf("%d DNS sockets handed over, want 4", len(socks))
	}
	socks[0].Table = []byte{1, 0, 0, 0, 9, 1, 2}
	socks[1].Backend = 99
	socks[3].Index = socks[2].Index // socket 2 is taken over, this one refused
	o.Listeners[0].Addr = a.addr()
	o.Resume = st
	b := startGroup(t, o)
	h.Release()
	for i := range 5 {
		if _, err := c.Write(query(t, uint16(100+i), "after.example.test.")); err != nil {
			t.Fatal(err)
		}
		ans, err := readAnswer(c, waitTimeout)
		if err != nil || dns.ID(ans) != uint16(100+i) {
			t.Fatalf("query %d after the handover: %v", i, err)
		}
	}
	// The one socket taken over serves them: no socket of its own opened.
	waitValue(t, "DNS sockets", func() uint64 { return b.openSockets(0) }, 1)
}
