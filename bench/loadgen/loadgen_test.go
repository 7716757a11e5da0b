package loadgen

import (
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

func TestHeaderRoundTrip(t *testing.T) {
	b := make([]byte, 64)
	for i := range b {
		b[i] = 0xff
	}
	h := Header{Phase: 3, Conn: 70000, Seq: 1<<40 + 5, SentNs: 123456789}
	h.Put(b)
	got, err := ParseHeader(b)
	if err != nil || got != h {
		t.Fatalf("ParseHeader = %+v, %v; want %+v", got, err, h)
	}
	if phaseOf(b) != 3 {
		t.Errorf("phaseOf = %d", phaseOf(b))
	}
	for _, bad := range [][]byte{b[:HeaderLen-1], make([]byte, 64)} {
		if _, err := ParseHeader(bad); err == nil || phaseOf(bad) != -1 {
			t.Errorf("accepted %x", bad)
		}
	}
	b[4] = MaxPhases
	if _, err := ParseHeader(b); err == nil {
		t.Error("accepted a phase out of range")
	}
}

func TestHistBuckets(t *testing.T) {
	prev := -1
	for v := uint64(0); v < 1<<22; v += 1 + v/100 {
		i := histIndex(v)
		if i < prev || i >= histBuckets {
			t.Fatalf("index(%d) = %d after %d", v, i, prev)
		}
		prev = i
		if lo, hi := histLow(i), histLow(i+1); v < lo || v >= hi {
			t.Fatalf("value %d in bucket %d = [%d, %d)", v, i, lo, hi)
		}
		if v >= histLinear {
			if w := histLow(i+1) - histLow(i); float64(w)/float64(v) > 1.0/histSub {
				t.Fatalf("bucket %d too wide (%d) for %d", i, w, v)
			}
		}
	}
	if histIndex(1<<62) != histBuckets-1 {
		t.Error("huge values must land in the last bucket")
	}
}

func TestHistQuantile(t *testing.T) {
	var h Hist
	if h.Quantile(0.5) != 0 {
		t.Error("empty histogram")
	}
	for v := 1; v <= 50; v++ { // exact range
		h.Record(time.Duration(v))
	}
	if h.Count() != 50 || h.Quantile(0.5) != 25 || h.Quantile(1) != 50 || h.Quantile(0) != 1 {
		t.Errorf("count %d p50 %v p100 %v p0 %v", h.Count(), h.Quantile(0.5), h.Quantile(1), h.Quantile(0))
	}
	var g Hist
	for range 990 {
		g.Record(100 * time.Microsecond)
	}
	for range 10 {
		g.Record(5 * time.Millisecond)
	}
	g.Record(-time.Second) // counts as 0
	p50, p99, p999 := g.Quantile(0.5), g.Quantile(0.99), g.Quantile(0.999)
	if p50 < 100*time.Microsecond || p50 > 104*time.Microsecond {
		t.Errorf("p50 = %v, want ≈100µs", p50)
	}
	if p99 != p50 || p999 != 5*time.Millisecond || g.Max() != 5*time.Millisecond {
		t.Errorf("p99 %v p99.9 %v max %v", p99, p999, g.Max())
	}
	h.Merge(&g)
	if h.Count() != 1051 || h.Max() != 5*time.Millisecond {
		t.Errorf("merged count %d max %v", h.Count(), h.Max())
	}
}

func startEcho(t *testing.T) *Echo {
	t.Helper()
	e, err := StartEcho(EchoConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func newGen(t *testing.T, cfg Config) *Generator {
	t.Helper()
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// run runs g for a 0 phase of warm, a phase 1 of d, and drains.
func run(g *Generator, warm, d time.Duration) {
	g.Start()
	time.Sleep(warm)
	g.SetPhase(1)
	time.Sleep(d)
	g.Stop(10 * time.Second) // returns as soon as everything is answered
}

// checkExact checks that every datagram of both phases came back and that
// the echo backend saw exactly what the generator sent.
func checkExact(t *testing.T, g *Generator, e *Echo) {
	t.Helper()
	// The echo counts a reply as returned just after sending it: give it
	// a moment to catch up with the generator.
	var total uint64
	for p := range 2 {
		total += g.Stats(p).Sent
	}
	for end := time.Now().Add(2 * time.Second); e.Stats().Returned < total && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}
	es := e.Stats()
	var sent uint64
	for p := range 2 {
		s := g.Stats(p)
		sent += s.Sent
		if s.Sent == 0 || s.SendErrors != 0 || s.Received != s.Sent || s.Loss() != 0 || s.Late != 0 {
			t.Errorf("phase %d: sent %d, send errors %d, received %d, late %d (loss %v)",
				p, s.Sent, s.SendErrors, s.Received, s.Late, s.Loss())
		}
		if es.PerPhase[p] != s.Sent {
			t.Errorf("phase %d: echo saw %d, generator sent %d", p, es.PerPhase[p], s.Sent)
		}
		if s.RTT.Count() != s.Received || s.RTT.Quantile(0.5) <= 0 {
			t.Errorf("phase %d: RTT count %d p50 %v", p, s.RTT.Count(), s.RTT.Quantile(0.5))
		}
		if want := s.Received * uint64(g.Config().Size); s.Bytes != want {
			t.Errorf("phase %d: %d bytes, want %d", p, s.Bytes, want)
		}
	}
	if es.Received != sent || es.Returned != sent || es.Dropped != 0 || es.Foreign != 0 {
		t.Errorf("echo %+v, generator sent %d", es, sent)
	}
	if g.Invalid() != 0 || g.Refused() != 0 {
		t.Errorf("invalid %d refused %d", g.Invalid(), g.Refused())
	}
}

func TestOpenLoopExact(t *testing.T) {
	for _, size := range []int{64, 1200} {
		e := startEcho(t)
		const rate = 2000.0
		g := newGen(t, Config{Target: e.Addr(), Conns: 8, Size: size, Rate: rate})
		run(g, 200*time.Millisecond, 500*time.Millisecond)
		checkExact(t, g, e)
		// The schedule is kept to within a tick or two of 1 ms, but the
		// phase boundaries are set by sleeps on a noisy machine.
		if s := g.Stats(1); s.Sent < rate*0.5/2 || s.Sent > rate*0.5*2 {
			t.Errorf("size %d: sent %d in 0.5 s at %v/s", size, s.Sent, rate)
		}
	}
}

func TestClosedLoopExact(t *testing.T) {
	e := startEcho(t)
	// A generous timeout: a stall of the shared machine must not look like
	// a loss.
	g := newGen(t, Config{Target: e.Addr(), Conns: 4, Size: 100, Timeout: 10 * time.Second})
	run(g, 100*time.Millisecond, 300*time.Millisecond)
	checkExact(t, g, e)
}

// TestOneFlowPerSocket checks that each client socket has its own source
// port, so a proxy sees Conns distinct flows.
func TestOneFlowPerSocket(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	target := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	const conns = 16
	g := newGen(t, Config{Target: target, Conns: conns, Rate: 2000, Tick: 2 * time.Millisecond})
	g.Start()
	defer g.Stop(0)
	seen := map[netip.AddrPort]bool{}
	buf := make([]byte, 100)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(seen) < conns {
		_, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%d sources seen: %v", len(seen), err)
		}
		seen[from] = true
	}
}

// TestStoppedTarget checks that a run against a closed port reports 100%
// loss and ends on time instead of hanging.
func TestStoppedTarget(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	target := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	for _, rate := range []float64{1000, 0} {
		g := newGen(t, Config{Target: target, Conns: 4, Rate: rate, Timeout: 50 * time.Millisecond})
		start := time.Now()
		g.Start()
		time.Sleep(300 * time.Millisecond)
		g.Stop(200 * time.Millisecond)
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("rate %v: took %v", rate, el)
		}
		s := g.Stats(0)
		if s.Attempted() == 0 || s.Received != 0 || s.Loss() != 1 {
			t.Errorf("rate %v: attempted %d, received %d, loss %v", rate, s.Attempted(), s.Received, s.Loss())
		}
	}
}

// TestFewAllocations runs load through the echo backend and checks that
// the process allocated far fewer objects than it moved datagrams.
func TestFewAllocations(t *testing.T) {
	e := startEcho(t)
	g := newGen(t, Config{Target: e.Addr(), Conns: 16, Rate: 10000})
	var m0, m1 runtime.MemStats
	g.Start()
	time.Sleep(100 * time.Millisecond) // goroutines started, buffers allocated
	runtime.ReadMemStats(&m0)
	g.SetPhase(1)
	time.Sleep(400 * time.Millisecond)
	runtime.ReadMemStats(&m1)
	g.Stop(time.Second)
	s := g.Stats(1)
	if s.Received < 1000 {
		t.Fatalf("only %d replies", s.Received)
	}
	// Both datagram directions go through the generator and the echo.
	if allocs := m1.Mallocs - m0.Mallocs; allocs > s.Received/20 {
		t.Errorf("%d allocations for %d round trips", allocs, s.Received)
	}
}
