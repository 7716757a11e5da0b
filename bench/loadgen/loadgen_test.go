package loadgen

import (
	"bytes"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
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

// exactQuantile is Hist.Quantile's rank rule applied to sorted raw samples.
func exactQuantile(sorted []time.Duration, q float64) time.Duration {
	rank := int(q*float64(len(sorted)) + 0.5)
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// TestHistogramMatchesRawSamples runs load through the echo backend and
// checks that the histogram's percentiles are within one bucket of the
// exact percentiles of the raw samples, and that every sample was kept.
func TestHistogramMatchesRawSamples(t *testing.T) {
	e := startEcho(t)
	g := newGen(t, Config{Target: e.Addr(), Conns: 4, Rate: 4000, RawSamples: 10000})
	run(g, 50*time.Millisecond, 500*time.Millisecond)
	s := g.Stats(1)
	if s.Received == 0 || uint64(len(s.Raw)) != s.Received || s.RTT.Count() != s.Received {
		t.Fatalf("received %d, raw %d, hist %d", s.Received, len(s.Raw), s.RTT.Count())
	}
	raw := slices.Clone(s.Raw)
	slices.Sort(raw)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
		exact, got := exactQuantile(raw, q), s.RTT.Quantile(q)
		if d := histIndex(uint64(got)) - histIndex(uint64(exact)); d < -1 || d > 1 {
			t.Errorf("q%v: histogram %v, exact %v (%d buckets apart)", q, got, exact, d)
		}
	}
}

// TestOpenLoopTimesFromSchedule checks that open-loop round trips are timed
// from when each request was planned to leave, not from when it left: asked
// for far more than one socket can send, the sender falls further and
// further behind its schedule, and that lag shows in the round trips (a
// generator timing from the actual send would report the echo's fast
// answers and hide it: coordinated omission).
func TestOpenLoopTimesFromSchedule(t *testing.T) {
	e := startEcho(t)
	g := newGen(t, Config{Target: e.Addr(), Conns: 1, Rate: 5e6, Batch: 8})
	g.Start()
	g.SetPhase(1)
	time.Sleep(400 * time.Millisecond)
	g.Stop(300 * time.Millisecond) // the echo drops some: do not wait for all
	s := g.Stats(1)
	if s.Received < 100 {
		t.Fatalf("only %d replies", s.Received)
	}
	if p50, p99 := s.RTT.Quantile(0.5), s.RTT.Quantile(0.99); p50 < 20*time.Millisecond || p99 < 50*time.Millisecond {
		t.Errorf("p50 %v, p99 %v: the sender's lag is hidden", p50, p99)
	}
}

func TestScheduledAt(t *testing.T) {
	const tick = int64(time.Millisecond)
	for _, tc := range []struct {
		k    uint64
		want int64
	}{{1, tick}, {1000, tick}, {1001, 2 * tick}, {2000, 2 * tick}, {2500, 3 * tick}} {
		// 1e6 requests/s: 1000 ns apart.
		if got := scheduledAt(tc.k, 1000, tick); got != tc.want {
			t.Errorf("scheduledAt(%d) = %d, want %d", tc.k, got, tc.want)
		}
	}
}

func TestSizeMix(t *testing.T) {
	e := startEcho(t)
	sizes := []int{64, 200, 1200}
	g := newGen(t, Config{Target: e.Addr(), Conns: 3, Sizes: sizes, Timeout: 10 * time.Second})
	run(g, 50*time.Millisecond, 200*time.Millisecond)
	for p := range 2 {
		s := g.Stats(p)
		if s.Received != s.Sent || s.Sent < 30 {
			t.Fatalf("phase %d: sent %d received %d", p, s.Sent, s.Received)
		}
		// Requests take the sizes in turn: the mean is within a few
		// requests' worth of the mix's mean.
		mean, want := float64(s.Bytes)/float64(s.Received), (64.0+200+1200)/3
		if mean < want*0.8 || mean > want*1.2 {
			t.Errorf("phase %d: mean size %.0f, want ≈%.0f", p, mean, want)
		}
	}
	if g.Invalid() != 0 {
		t.Errorf("%d invalid replies", g.Invalid())
	}
}

// TestSourcesAndChurn checks that sockets take their source addresses
// from Sources and that churn gives every request a new source port.
func TestSourcesAndChurn(t *testing.T) {
	srcs := LoopbackSources(300)
	if srcs[0] != netip.MustParseAddr("127.0.0.1") || srcs[254] != netip.MustParseAddr("127.0.1.1") {
		t.Fatalf("sources %v %v", srcs[0], srcs[254])
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	g := newGen(t, Config{Target: pc.LocalAddr().(*net.UDPAddr).AddrPort(), Conns: 4, Sources: srcs[250:254],
		Churn: true, Timeout: 5 * time.Second})
	g.Start()
	defer g.Stop(0)
	ips, ports := map[netip.Addr]bool{}, map[netip.AddrPort]bool{}
	buf := make([]byte, 100)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range 40 {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%d sources seen: %v", len(ports), err)
		}
		ips[from.Addr()], ports[from] = true, true
		pc.WriteToUDPAddrPort(buf[:n], from)
	}
	// The kernel picks ephemeral ports at random: a closed socket's port
	// may, rarely, come back.
	if len(ports) < 36 {
		t.Errorf("%d distinct sources in 40 requests", len(ports))
	}
	if len(ips) != 4 {
		t.Errorf("source addresses %v, want the 4 given", ips)
	}
	for ip := range ips {
		if !slices.Contains(srcs[250:254], ip) {
			t.Errorf("unexpected source %v", ip)
		}
	}
}

func TestDNSClosedAndOpenLoop(t *testing.T) {
	for _, rate := range []float64{0, 3000} {
		d, err := StartDNS(DNSConfig{})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		g := newGen(t, Config{Target: d.Addr(), Conns: 4, DNS: GenerateQueries(10), Rate: rate, Timeout: 10 * time.Second})
		run(g, 50*time.Millisecond, 300*time.Millisecond)
		var sent uint64
		for p := range 2 {
			s := g.Stats(p)
			sent += s.Sent
			if s.Sent == 0 || s.Received != s.Sent || s.Completed != s.Sent || s.Late != 0 || s.RTT.Count() != s.Received {
				t.Errorf("rate %v phase %d: %+v", rate, p, s)
			}
		}
		time.Sleep(20 * time.Millisecond)
		if ds := d.Stats(); ds.Answered != sent || ds.Invalid != 0 || g.Invalid() != 0 {
			t.Errorf("rate %v: responder %+v, sent %d, invalid %d", rate, ds, sent, g.Invalid())
		}
	}
}

func TestBlaster(t *testing.T) {
	for _, noGSO := range []bool{false, true} {
		bl, err := StartBlaster(BlasterConfig{Run: 8, NoGSO: noGSO})
		if err != nil {
			t.Fatal(err)
		}
		defer bl.Close()
		g := newGen(t, Config{Target: bl.Addr(), Conns: 4, ReplyDatagrams: 8, Timeout: 10 * time.Second,
			RecvBuffer: 4 << 20})
		run(g, 50*time.Millisecond, 300*time.Millisecond)
		s := g.Stats(1)
		if s.Sent == 0 || s.Completed != s.Sent || s.Received != 8*s.Sent || s.Bytes != 1200*s.Received || s.Loss() != 0 {
			t.Errorf("noGSO %v: %+v loss %v", noGSO, s, s.Loss())
		}
		// The blaster counts a request before its run is sent: let the last
		// requests (late ones after the window included) finish before
		// comparing the two counters.
		st := bl.Stats()
		for deadline := time.Now().Add(5 * time.Second); st.Datagrams != 8*st.Requests && time.Now().Before(deadline); st = bl.Stats() {
			time.Sleep(10 * time.Millisecond)
		}
		if st.GSO == noGSO || st.Requests == 0 || st.Datagrams != 8*st.Requests {
			t.Errorf("noGSO %v: blaster %+v", noGSO, st)
		}
	}
}

// TestUploadSink: the generator sends each request as one GSO run of 32
// × 1200 B; the upload sink (reading with GRO) answers each run's last
// datagram, every request completes once; a PROXY v2 header in front of
// each datagram (as proxy_protocol every puts there) is skipped.
func TestUploadSink(t *testing.T) {
	bl, err := StartBlaster(BlasterConfig{Upload: 32})
	if err != nil {
		t.Fatal(err)
	}
	defer bl.Close()
	g := newGen(t, Config{Target: bl.Addr(), Conns: 4, Size: 1200, RequestDatagrams: 32, Timeout: 10 * time.Second,
		SendBuffer: 4 << 20})
	run(g, 50*time.Millisecond, 300*time.Millisecond)
	s := g.Stats(1)
	if s.Sent == 0 || s.Completed != s.Sent || s.Received != s.Sent || s.Bytes != HeaderLen*s.Received || s.Loss() != 0 {
		t.Errorf("%+v loss %v", s, s.Loss())
	}
	if st := bl.Stats(); st.Requests < s.Completed || st.Foreign != 0 {
		t.Errorf("sink %+v, generator completed %d", st, s.Completed)
	}

	// A run whose datagrams each carry a PROXY v2 header: the ack comes
	// back for the last one, without the header.
	fd, err := batchio.DialUpstream(netip.AddrPort{}, bl.Addr(), batchio.DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	hdr := append(append([]byte{}, proxySig...), 0x21, 0x12, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1, 0x13, 0x88, 0, 53)
	var pkt []byte
	for seg := range 32 {
		pkt = append(pkt, hdr...)
		body := make([]byte, 100)
		h := Header{Seg: uint16(seg), Len: 100, Seq: 77}
		h.Put(body)
		pkt = append(pkt, body...)
	}
	b := batchio.NewBatch(4)
	if _, err := b.Send(fd, []batchio.Message{{Buf: pkt, SegmentSize: len(hdr) + 100}}); err != nil {
		t.Fatal(err)
	}
	rx := []batchio.Message{{Buf: make([]byte, 2048)}}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, _ := b.Recv(fd, rx)
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no ack for a run with PROXY headers")
		}
		time.Sleep(time.Millisecond)
	}
	if h, err := ParseHeader(rx[0].Buf[:rx[0].N]); err != nil || h.Seq != 77 || rx[0].N != HeaderLen {
		t.Fatalf("ack %x: %+v %v", rx[0].Buf[:rx[0].N], h, err)
	}
	if got := StripProxy(hdr); len(got) != 0 {
		t.Errorf("StripProxy left %d bytes of a bare header", len(got))
	}
	if got := StripProxy(hdr[:20]); len(got) != 20 {
		t.Errorf("StripProxy cut a truncated header")
	}
}

func TestDNSWire(t *testing.T) {
	qs, err := ParseQueries(strings.NewReader("# c\nwww.example.test A\n\nexample.test. TXT\nx.test TYPE65\n"))
	if err != nil || len(qs) != 3 || qs[1].Type != 16 || qs[2].Type != 65 {
		t.Fatalf("ParseQueries = %v, %v", qs, err)
	}
	if _, err := ParseQueries(strings.NewReader("a A B\n")); err == nil {
		t.Error("accepted three fields")
	}
	q, err := EncodeQuery(nil, 0xbeef, qs[0])
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 600)
	n := answerQuery(out, q, [4]byte{192, 0, 2, 9})
	if n != len(q)+16 {
		t.Fatalf("answer length %d", n)
	}
	id, resp := dnsID(out[:n])
	if id != 0xbeef || !resp || out[7] != 1 || !bytes.Equal(out[n-4:n], []byte{192, 0, 2, 9}) {
		t.Errorf("answer %x", out[:n])
	}
	q2, _ := EncodeQuery(nil, 1, qs[1])
	if n := answerQuery(out, q2, [4]byte{}); n != len(q2) || out[7] != 0 {
		t.Errorf("TXT answer %x", out[:n])
	}
	for _, bad := range [][]byte{q[:11], q[:len(q)-1], out[:n]} {
		if answerQuery(make([]byte, 600), bad, [4]byte{}) != 0 {
			t.Errorf("answered %x", bad)
		}
	}
	if _, err := EncodeQuery(nil, 1, Query{Name: "a..b", Type: 1}); err == nil {
		t.Error("encoded an empty label")
	}
}

// TestSprayer opens 2,000 flows from distinct (address, port) pairs
// through the echo backend and checks every one was answered.
func TestSprayer(t *testing.T) {
	e := startEcho(t)
	s, err := NewSprayer(SprayConfig{Target: e.Addr(), Sockets: 4, Sources: LoopbackSources(500), Rate: 20000, Count: 2000})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Flows() != 2000 {
		t.Fatalf("flows %d", s.Flows())
	}
	s.Start()
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not done")
	}
	s.Stop(2 * time.Second)
	if st := s.Stats(0); st.Sent != 2000 || st.Received != 2000 || st.SendErrors != 0 {
		t.Errorf("%+v", st)
	}
	if es := e.Stats(); es.Received != 2000 {
		t.Errorf("echo %+v", es)
	}
}
