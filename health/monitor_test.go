package health

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fastudp/fastudp/balance"
)

// addrs returns n loopback addresses (nothing listens there; the tests that
// use them run no probe).
func addrs(n int) []netip.AddrPort {
	out := make([]netip.AddrPort, n)
	for i := range out {
		out[i] = netip.MustParseAddrPort(fmt.Sprintf("127.0.0.%d:53", i+1))
	}
	return out
}

// manual is a probe config for clusters whose probe results the test feeds
// itself through setHealth, on a monitor that is never started.
var manual = ProbeConfig{Kind: KindUDP, Rise: 2, Fall: 3}

// setHealth feeds c enough probe results to make the backend at addr healthy
// or not.
func setHealth(t *testing.T, c *Cluster, addr netip.AddrPort, healthy bool) {
	t.Helper()
	c.mu.Lock()
	b, err := c.backendLocked(addr)
	c.unlock()
	if err != nil {
		t.Fatal(err)
	}
	var res error
	n := c.probe.Rise
	if !healthy {
		res, n = errors.New("test failure"), c.probe.Fall
	}
	for range n {
		c.probeResult(b, res)
	}
}

// usable returns the backends v lets new flows go to.
func usable(v *View) []netip.AddrPort {
	var out []netip.AddrPort
	for i := range v.Table.Len() {
		if v.Usable == nil || v.Usable.Has(i) {
			out = append(out, v.Table.Backend(i).Addr)
		}
	}
	return out
}

func checkUsable(t *testing.T, c *Cluster, want ...netip.AddrPort) {
	t.Helper()
	got := usable(c.View())
	want = slices.Clone(want)
	slices.SortFunc(want, netip.AddrPort.Compare) // table order
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("usable %v, want %v", got, want)
	}
}

func backendStatus(t *testing.T, c *Cluster, addr netip.AddrPort) BackendStatus {
	t.Helper()
	for _, b := range c.Status().Backends {
		if b.Addr == addr {
			return b
		}
	}
	t.Fatalf("no backend %v", addr)
	return BackendStatus{}
}

// TestMonitorDNSKnot follows a real knot through death and restart on the
// same port.
func TestMonitorDNSKnot(t *testing.T) {
	k := runKnot(t)
	m, log := newMonitor(t, Options{})
	probe := ProbeConfig{Kind: KindDNS, DNSName: "www.example.test", Interval: testInterval, Timeout: testTimeout, Rise: 2, Fall: 3}
	c, err := m.AddCluster("dns", newTable(t, k.addr()), probe, PassiveConfig{}, false)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "successful probes", func() bool { return backendStatus(t, c, k.addr()).ProbeSuccesses >= 3 })
	// A probe may time out while knot is still loading its zone or the
	// machine is busy; three successes must have made it up.
	if s := backendStatus(t, c, k.addr()); s.State != Up {
		t.Fatalf("status %+v, want up", s)
	}

	k.stop()
	waitFor(t, "knot marked down", func() bool { return backendStatus(t, c, k.addr()).State == Down })
	s := backendStatus(t, c, k.addr())
	if s.ProbeFailures < 3 || !strings.HasPrefix(s.Reason, "3 probes failed: ") {
		t.Fatalf("down with %d failures, reason %q; want at least 3 and \"3 probes failed: ...\"", s.ProbeFailures, s.Reason)
	}
	checkUsable(t, c) // fail closed: nothing
	if !strings.Contains(log.String(), "from=up to=down") {
		t.Fatalf("no state change logged:\n%s", log)
	}

	k.start()
	waitFor(t, "knot marked up", func() bool { return backendStatus(t, c, k.addr()).State == Up })
	if s := backendStatus(t, c, k.addr()); s.Reason != "2 probes succeeded" {
		t.Fatalf("up with reason %q", s.Reason)
	}
	checkUsable(t, c, k.addr())
}

// TestMonitorStartDown checks that StartDown backends wait for Rise probes.
func TestMonitorStartDown(t *testing.T) {
	echo := startEcho(t, func([]byte) []byte { return []byte("ok") })
	silent := startEcho(t, func([]byte) []byte { return nil })
	m := NewMonitor(Options{Logger: discardLogger()})
	probe := ProbeConfig{Kind: KindUDP, Expect: []byte("ok"), StartDown: true, Interval: testInterval, Timeout: testTimeout}
	c, err := m.AddCluster("c", newTable(t, echo, silent), probe, PassiveConfig{}, false)
	if err != nil {
		t.Fatal(err)
	}
	checkUsable(t, c) // nothing before the first probes
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	waitFor(t, "echo up", func() bool { return backendStatus(t, c, echo).State == Up })
	checkUsable(t, c, echo)
	waitFor(t, "failed probes of the silent backend", func() bool { return backendStatus(t, c, silent).ProbeFailures >= 3 })
	if s := backendStatus(t, c, silent); s.State != Down || s.LastError != "timeout" {
		t.Fatalf("silent backend %+v, want down after a timeout", s)
	}
}

// TestMonitorPassive runs passive-only health with real goroutines: reported
// failures without successes take a backend down, the cooldown brings it back.
func TestMonitorPassive(t *testing.T) {
	a := addrs(3)
	m, log := newMonitor(t, Options{})
	passive := PassiveConfig{Enabled: true, Interval: testInterval, MinFailures: 2, Cooldown: 500 * time.Millisecond}
	c, err := m.AddCluster("p", newTable(t, a...), ProbeConfig{Fall: 3}, passive, true)
	if err != nil {
		t.Fatal(err)
	}
	// a[0] fails without answers; a[1] fails but also answers; a[2] is quiet.
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var f0, f1, s1 uint64
		for !stop.Load() {
			f0 += 5
			f1, s1 = f1+5, s1+1
			_ = c.ReportPassive(a[0], f0, 0)
			_ = c.ReportPassive(a[1], f1, s1)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	waitFor(t, "a[0] down", func() bool { return backendStatus(t, c, a[0]).State == Down })
	s := backendStatus(t, c, a[0])
	if !strings.HasPrefix(s.Reason, "3 passive intervals with failures and no success") || s.PassiveFailures == 0 {
		t.Fatalf("a[0] %+v", s)
	}
	checkUsable(t, c, a[1], a[2])
	if b := backendStatus(t, c, a[1]); b.State != Up {
		t.Fatalf("a[1] answers but is %v", b.State)
	}
	stop.Store(true)
	wg.Wait()
	waitFor(t, "a[0] back on probation", func() bool { return backendStatus(t, c, a[0]).State == Up })
	if s := backendStatus(t, c, a[0]); !strings.Contains(s.Reason, "probation") {
		t.Fatalf("a[0] up with reason %q", s.Reason)
	}
	// On probation one failed interval is enough.
	before := strings.Count(log.String(), "to=down")
	f := s.PassiveFailures
	waitFor(t, "a[0] down again", func() bool {
		f += 5
		_ = c.AddPassive(a[0], 5, 0)
		return strings.Count(log.String(), "to=down") > before
	})
	if r := backendStatus(t, c, a[0]).Reason; !strings.HasPrefix(r, "3 passive intervals") {
		t.Fatalf("down again with reason %q", r)
	}
}

func TestDraining(t *testing.T) {
	a := addrs(3)
	m := NewMonitor(Options{Logger: discardLogger()})
	c, err := m.AddCluster("d", newTable(t, a...), manual, PassiveConfig{}, true)
	if err != nil {
		t.Fatal(err)
	}
	if c.Usable() != nil {
		t.Fatal("all up, but the usable set is not nil")
	}
	if err := m.SetDraining("d", a[1], true); err != nil {
		t.Fatal(err)
	}
	checkUsable(t, c, a[0], a[2])
	s := backendStatus(t, c, a[1])
	if s.State != Draining || !s.Healthy || s.Usable || s.Reason != "drained by the control plane" {
		t.Fatalf("drained backend %+v", s)
	}
	// A draining backend still serves its connections.
	if v := c.View(); !v.IsServing(a[1]) || v.IsUsable(a[1]) {
		t.Fatal("a healthy draining backend must be serving, not usable")
	}
	// A failing draining backend stays Draining, not Down.
	setHealth(t, c, a[1], false)
	if c.View().IsServing(a[1]) {
		t.Fatal("a failing backend is serving")
	}
	if s := backendStatus(t, c, a[1]); s.State != Draining || s.Healthy {
		t.Fatalf("failing drained backend %+v", s)
	}
	// Draining everything leaves nothing, even failing open.
	for _, x := range a {
		if err := c.SetDraining(x, true); err != nil {
			t.Fatal(err)
		}
	}
	checkUsable(t, c)
	if v := c.View(); v.FailingOpen || v.Usable == nil || v.Usable.Len() != 0 {
		t.Fatalf("all draining: view %+v", v)
	}
	if _, ok := c.Pick(1); ok {
		t.Fatal("pick succeeded with every backend draining")
	}
	if c.View().IsUsable(a[0]) {
		t.Fatal("a draining backend is usable")
	}
	if err := c.SetDraining(a[0], false); err != nil {
		t.Fatal(err)
	}
	checkUsable(t, c, a[0])
	if v := c.View(); !v.IsUsable(a[0]) || v.IsUsable(a[1]) || v.IsUsable(netip.MustParseAddrPort("10.9.9.9:1")) {
		t.Fatal("IsUsable disagrees with the usable set")
	}
	if err := c.SetDraining(netip.MustParseAddrPort("10.9.9.9:1"), true); !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("draining an unknown backend: %v", err)
	}
	if err := m.SetDraining("nope", a[0], true); !errors.Is(err, ErrUnknownCluster) {
		t.Fatalf("draining in an unknown cluster: %v", err)
	}
}

func TestFailOpen(t *testing.T) {
	a := addrs(3)
	for _, failOpen := range []bool{true, false} {
		t.Run(fmt.Sprintf("failOpen=%v", failOpen), func(t *testing.T) {
			lg := &testLogger{}
			m := NewMonitor(Options{Logger: textLogger(lg)})
			c, err := m.AddCluster("f", newTable(t, a...), manual, PassiveConfig{}, failOpen)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.SetDraining(a[2], true); err != nil {
				t.Fatal(err)
			}
			setHealth(t, c, a[0], false)
			checkUsable(t, c, a[1])
			setHealth(t, c, a[1], false)
			v := c.View()
			if failOpen {
				checkUsable(t, c, a[0], a[1]) // every non-draining backend
				if !v.FailingOpen || !c.Status().FailingOpen || !strings.Contains(lg.String(), "failing open") {
					t.Fatalf("not failing open: view %+v, log:\n%s", v, lg)
				}
			} else {
				checkUsable(t, c)
				if v.FailingOpen {
					t.Fatal("failing open without fail-open")
				}
			}
			setHealth(t, c, a[1], true)
			checkUsable(t, c, a[1])
			if c.View().FailingOpen {
				t.Fatal("still failing open with a backend up")
			}
		})
	}
}

// TestMinimalDisruption checks that a swap of the usable set moves only the
// keys of the backend that changed, and that published views never change.
func TestMinimalDisruption(t *testing.T) {
	a := addrs(10)
	bs := make([]balance.Backend, len(a))
	for i := range a {
		bs[i] = balance.Backend{Addr: a[i], Weight: 1}
	}
	maglev, err := balance.NewMaglev(7, bs, 0)
	if err != nil {
		t.Fatal(err)
	}
	hrw, err := balance.NewHRW(7, bs)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range []*balance.Table{maglev, hrw} {
		t.Run(tb.Algorithm().String(), func(t *testing.T) {
			m := NewMonitor(Options{Logger: discardLogger()})
			c, err := m.AddCluster("c", tb, manual, PassiveConfig{}, true)
			if err != nil {
				t.Fatal(err)
			}
			const keys = 20000
			pick := func(v *View) []netip.AddrPort {
				out := make([]netip.AddrPort, keys)
				for k := range out {
					b, ok := v.Pick(uint64(k) * 0x9e3779b97f4a7c15)
					if !ok {
						t.Fatal("pick failed")
					}
					out[k] = b.Addr
				}
				return out
			}
			v0 := c.View()
			before := pick(v0)
			setHealth(t, c, a[3], false)
			v1 := c.View()
			if v1 == v0 || v1.Gen != v0.Gen+1 {
				t.Fatalf("view not swapped: gen %d -> %d", v0.Gen, v1.Gen)
			}
			if v0.Usable != nil {
				t.Fatal("the old view changed")
			}
			after := pick(v1)
			moved := 0
			for k := range before {
				switch {
				case after[k] == a[3]:
					t.Fatalf("key %d still goes to the down backend", k)
				case before[k] == a[3]:
					moved++
				case after[k] != before[k]:
					t.Fatalf("key %d moved from %v to %v though neither changed state", k, before[k], after[k])
				}
			}
			if moved == 0 {
				t.Fatal("the down backend had no keys")
			}
			setHealth(t, c, a[3], true)
			if got := pick(c.View()); fmt.Sprint(got) != fmt.Sprint(before) {
				t.Fatal("keys did not return when the backend came back")
			}
		})
	}
}

func TestPickAllocatesNothing(t *testing.T) {
	a := addrs(5)
	m := NewMonitor(Options{Logger: discardLogger()})
	c, err := m.AddCluster("c", newTable(t, a...), manual, PassiveConfig{}, true)
	if err != nil {
		t.Fatal(err)
	}
	setHealth(t, c, a[2], false)
	key := uint64(0)
	if n := testing.AllocsPerRun(1000, func() {
		key += 0x9e3779b97f4a7c15
		if _, ok := c.Pick(key); !ok {
			t.Fatal("pick failed")
		}
	}); n != 0 {
		t.Fatalf("Pick allocates %v times", n)
	}
}

// TestSetTable replaces a cluster's table on a running monitor: backends that
// remain keep their state, removed ones stop being probed.
func TestSetTable(t *testing.T) {
	ok := func([]byte) []byte { return []byte("ok") }
	e := []netip.AddrPort{startEcho(t, ok), startEcho(t, ok), startEcho(t, ok), startEcho(t, ok)}
	m, _ := newMonitor(t, Options{})
	probe := ProbeConfig{Kind: KindUDP, Interval: testInterval, Timeout: testTimeout}
	c, err := m.AddCluster("c", newTable(t, e[0], e[1], e[2]), probe, PassiveConfig{}, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetDraining(e[1], true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "probes of e[2]", func() bool { return backendStatus(t, c, e[2]).ProbeSuccesses > 0 })
	if n := probeLoops(); n != 3 {
		t.Fatalf("%d probe goroutines, want 3", n)
	}
	old := c.View()
	nt := newTable(t, e[0], e[1], e[3])
	if err := c.SetTable(nt); err != nil {
		t.Fatal(err)
	}
	v := c.View()
	if v.Table != nt || v.Gen <= old.Gen {
		t.Fatalf("new table not published: %+v", v)
	}
	checkUsable(t, c, e[0], e[3])
	if s := backendStatus(t, c, e[1]); s.State != Draining {
		t.Fatalf("e[1] lost its draining flag: %+v", s)
	}
	if s := backendStatus(t, c, e[0]); s.ProbeSuccesses == 0 {
		t.Fatalf("e[0] lost its counters: %+v", s)
	}
	waitFor(t, "3 probe goroutines", func() bool { return probeLoops() == 3 })
	waitFor(t, "probes of e[3]", func() bool { return backendStatus(t, c, e[3]).ProbeSuccesses > 0 })
	if err := c.SetTable(nil); !errors.Is(err, ErrNoTable) {
		t.Fatalf("SetTable(nil): %v", err)
	}
	if err := m.RemoveCluster("c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "no probe goroutines", func() bool { return probeLoops() == 0 })
	if err := m.RemoveCluster("c"); !errors.Is(err, ErrUnknownCluster) {
		t.Fatalf("second RemoveCluster: %v", err)
	}
}

// probeLoops counts the live prober goroutines.
func probeLoops() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "health.(*Cluster).probeLoop(")
}

// fakeProber records how many probes run at once.
type fakeProber struct {
	delay          time.Duration
	inFlight, most atomic.Int32
	calls          atomic.Int32
}

func (f *fakeProber) probe(ctx context.Context, _ netip.AddrPort, _ []byte) error {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.most.Load()
		if n <= m || f.most.CompareAndSwap(m, n) {
			break
		}
	}
	f.calls.Add(1)
	select {
	case <-time.After(f.delay):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestProbesDoNotOverlap runs a probe three times slower than the interval.
func TestProbesDoNotOverlap(t *testing.T) {
	m := NewMonitor(Options{Logger: discardLogger()})
	probe := ProbeConfig{Kind: KindTCP, Interval: 20 * time.Millisecond, Timeout: time.Second}
	c, err := m.AddCluster("c", newTable(t, addrs(1)...), probe, PassiveConfig{}, true)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeProber{delay: 60 * time.Millisecond}
	c.prober = f // before Start: no goroutine reads it yet
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "5 probes", func() bool { return f.calls.Load() >= 5 })
	m.Close()
	if n := f.most.Load(); n != 1 {
		t.Fatalf("%d probes of one backend ran at once", n)
	}
	checkNoGoroutines(t)
}

// TestStopLeavesNoGoroutines stops a monitor whose probes are blocked in
// reads, by cancelling the context, and another by Close.
func TestStopLeavesNoGoroutines(t *testing.T) {
	silent := startEcho(t, func([]byte) []byte { return nil })
	for _, how := range []string{"cancel", "close"} {
		t.Run(how, func(t *testing.T) {
			m := NewMonitor(Options{Logger: discardLogger()})
			probe := ProbeConfig{Kind: KindUDP, Interval: testInterval, Timeout: time.Minute}
			passive := PassiveConfig{Enabled: true, Interval: testInterval}
			if _, err := m.AddCluster("c", newTable(t, silent), probe, passive, true); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			if err := m.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if err := m.Start(ctx); !errors.Is(err, ErrStarted) {
				t.Fatalf("second Start: %v", err)
			}
			waitFor(t, "a probe goroutine", func() bool { return probeLoops() == 1 })
			time.Sleep(2 * testInterval) // let the probe block in its read
			if how == "cancel" {
				cancel()
				checkNoGoroutines(t)
			} else {
				m.Close()
				checkNoGoroutines(t)
				cancel()
			}
			m.Close() // idempotent
			// A cluster added after Close runs nothing.
			if _, err := m.AddCluster("late", newTable(t, silent), probe, passive, true); err != nil {
				t.Fatal(err)
			}
			checkNoGoroutines(t)
		})
	}
}

func TestAddClusterErrors(t *testing.T) {
	m := NewMonitor(Options{Logger: discardLogger()})
	tb := newTable(t, addrs(2)...)
	if _, err := m.AddCluster("a", tb, ProbeConfig{}, PassiveConfig{}, true); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AddCluster("a", tb, ProbeConfig{}, PassiveConfig{}, true); !errors.Is(err, ErrDuplicateCluster) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := m.AddCluster("b", nil, ProbeConfig{}, PassiveConfig{}, true); !errors.Is(err, ErrNoTable) {
		t.Fatalf("nil table: %v", err)
	}
	if _, err := m.AddCluster("b", tb, ProbeConfig{Kind: KindDNS}, PassiveConfig{}, true); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("dns without name: %v", err)
	}
	if _, err := m.AddCluster("b", tb, ProbeConfig{}, PassiveConfig{Cooldown: -1}, true); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("negative cooldown: %v", err)
	}
	if c, ok := m.Cluster("a"); !ok || c.Name() != "a" {
		t.Fatal("cluster a not found")
	}
	if _, ok := m.Cluster("b"); ok {
		t.Fatal("cluster b exists after failed adds")
	}
}

// TestOnChange checks that OnChange sees every view, in order.
func TestOnChange(t *testing.T) {
	a := addrs(3)
	var gens []uint64
	m := NewMonitor(Options{Logger: discardLogger(), OnChange: func(_ *Cluster, v *View) { gens = append(gens, v.Gen) }})
	c, err := m.AddCluster("c", newTable(t, a...), manual, PassiveConfig{}, true)
	if err != nil {
		t.Fatal(err)
	}
	setHealth(t, c, a[0], false)
	setHealth(t, c, a[0], false) // no change: no view
	_ = c.SetDraining(a[1], true)
	setHealth(t, c, a[1], false) // draining: not usable either way, but no longer serving: a view
	setHealth(t, c, a[1], false) // no change: no view
	if fmt.Sprint(gens) != "[1 2 3 4]" {
		t.Fatalf("views %v, want [1 2 3 4]", gens)
	}
}

func TestMetrics(t *testing.T) {
	a := addrs(2)
	m := NewMonitor(Options{Logger: discardLogger()})
	c, err := m.AddCluster("c", newTable(t, a...), manual, PassiveConfig{}, true)
	if err != nil {
		t.Fatal(err)
	}
	setHealth(t, c, a[0], false)
	_ = c.SetDraining(a[1], true)
	want := `
# HELP fastudp_backend_draining 1 when the control plane drains the backend (no new flows, live flows continue).
# TYPE fastudp_backend_draining gauge
fastudp_backend_draining{backend="127.0.0.1:53",cluster="c"} 0
fastudp_backend_draining{backend="127.0.0.2:53",cluster="c"} 1
# HELP fastudp_backend_up Backend health: 1 up, 0 down (draining backends show their health).
# TYPE fastudp_backend_up gauge
fastudp_backend_up{backend="127.0.0.1:53",cluster="c"} 0
fastudp_backend_up{backend="127.0.0.2:53",cluster="c"} 1
# HELP fastudp_health_fail_open 1 while no backend of the cluster is up and new flows go to every non-draining backend (fail-open).
# TYPE fastudp_health_fail_open gauge
fastudp_health_fail_open{cluster="c"} 1
# HELP fastudp_health_probes_total Active health probes, by result.
# TYPE fastudp_health_probes_total counter
fastudp_health_probes_total{backend="127.0.0.1:53",cluster="c",result="failure"} 3
fastudp_health_probes_total{backend="127.0.0.1:53",cluster="c",result="success"} 0
fastudp_health_probes_total{backend="127.0.0.2:53",cluster="c",result="failure"} 0
fastudp_health_probes_total{backend="127.0.0.2:53",cluster="c",result="success"} 0
`
	if err := testutil.CollectAndCompare(NewCollector(m), strings.NewReader(want),
		"fastudp_backend_up", "fastudp_backend_draining", "fastudp_health_probes_total", "fastudp_health_fail_open"); err != nil {
		t.Fatal(err)
	}

	// Passive failures appear once a passive interval consumed them.
	p, err := m.AddCluster("p", newTable(t, a[0]), ProbeConfig{}, PassiveConfig{Enabled: true, MinFailures: 100}, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AddPassive(a[0], 7, 1); err != nil {
		t.Fatal(err)
	}
	p.passiveWindow(time.Now())
	want = `
# HELP fastudp_health_passive_failures_total Passive failures reported by the data path (timeouts, ECONNREFUSED, flows without a reply).
# TYPE fastudp_health_passive_failures_total counter
fastudp_health_passive_failures_total{backend="127.0.0.1:53",cluster="c"} 0
fastudp_health_passive_failures_total{backend="127.0.0.2:53",cluster="c"} 0
fastudp_health_passive_failures_total{backend="127.0.0.1:53",cluster="p"} 7
`
	if err := testutil.CollectAndCompare(NewCollector(m), strings.NewReader(want), "fastudp_health_passive_failures_total"); err != nil {
		t.Fatal(err)
	}
	if err := p.ReportPassive(netip.MustParseAddrPort("10.9.9.9:1"), 1, 0); !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("report for an unknown backend: %v", err)
	}
}
