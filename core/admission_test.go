package core

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

func newLimiter(t testing.TB, c AdmissionConfig) *admission {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	a := &admission{}
	a.configure(c, 42)
	return a
}

func addrOf(s string) *addr {
	a := toAddr(netip.MustParseAddrPort(s))
	return &a
}

// TestAdmissionExactCounts: with a fake clock, a source gets exactly Burst
// flows at once, then exactly one per Interval; a refused attempt costs
// nothing; another source has its own bucket.
func TestAdmissionExactCounts(t *testing.T) {
	a := newLimiter(t, AdmissionConfig{Interval: 100 * time.Millisecond, Burst: 5})
	src, other := addrOf("192.0.2.1:1000"), addrOf("192.0.2.2:1000")
	count := func(now Time, c *addr, tries int) int {
		n := 0
		for range tries {
			if a.allow(now, c) {
				n++
			}
		}
		return n
	}
	if n := count(0, src, 100); n != 5 {
		t.Fatalf("burst at t=0: %d admitted, want 5", n)
	}
	if n := count(0, other, 100); n != 5 {
		t.Fatalf("another source at t=0: %d admitted, want 5", n)
	}
	// 99 ms later nothing has refilled; at 100 ms one token has.
	if n := count(Time(99*time.Millisecond), src, 10); n != 0 {
		t.Fatalf("at 99ms: %d admitted, want 0", n)
	}
	if n := count(Time(100*time.Millisecond), src, 10); n != 1 {
		t.Fatalf("at 100ms: %d admitted, want 1", n)
	}
	// Steady attempts every 10 ms for 10 s: exactly 10 per second.
	total := 0
	for ms := 110; ms <= 10_100; ms += 10 {
		total += count(Time(time.Duration(ms)*time.Millisecond), src, 3)
	}
	if total != 100 {
		t.Fatalf("10 s of attempts: %d admitted, want 100", total)
	}
	// After a long quiet spell the bucket is full again, never fuller.
	if n := count(Time(time.Hour), src, 100); n != 5 {
		t.Fatalf("after an hour: %d admitted, want 5", n)
	}
}

// TestAdmissionPrefixes: sources are cut to the configured prefixes, and an
// IPv4-mapped IPv6 client is its IPv4 source.
func TestAdmissionPrefixes(t *testing.T) {
	a := newLimiter(t, AdmissionConfig{Interval: time.Second, Burst: 1, PrefixV4: 24, PrefixV6: 64})
	if !a.allow(0, addrOf("192.0.2.1:1")) {
		t.Fatal("first flow refused")
	}
	for _, s := range []string{"192.0.2.200:9", "[::ffff:192.0.2.7]:3"} {
		if a.allow(0, addrOf(s)) {
			t.Errorf("%s: same /24, admitted", s)
		}
	}
	if !a.allow(0, addrOf("192.0.3.1:1")) {
		t.Error("192.0.3.1: another /24, refused")
	}
	if !a.allow(0, addrOf("[2001:db8:0:1::1]:1")) {
		t.Fatal("IPv6 first flow refused")
	}
	if a.allow(0, addrOf("[2001:db8:0:1:ffff::9]:1")) {
		t.Error("same /64 admitted")
	}
	if !a.allow(0, addrOf("[2001:db8:0:2::1]:1")) {
		t.Error("another /64 refused")
	}
	// Default prefixes: every address is its own source.
	b := newLimiter(t, AdmissionConfig{Interval: time.Second, Burst: 1})
	for _, s := range []string{"192.0.2.1:1", "192.0.2.2:1", "[2001:db8::1]:1", "[2001:db8::2]:1"} {
		if !b.allow(0, addrOf(s)) {
			t.Errorf("%s refused under /32 and /128", s)
		}
	}
	if b.allow(0, addrOf("192.0.2.1:2")) {
		t.Error("192.0.2.1 (another port) admitted twice")
	}
}

// TestAdmissionFloodStaysBounded: a flood of ever-new sources neither grows
// the table nor allocates, and a source that keeps sending stays limited
// while the flood goes on (its entry is the freshest of its set, so the
// stalest go first).
func TestAdmissionFloodStaysBounded(t *testing.T) {
	a := newLimiter(t, AdmissionConfig{Interval: time.Second, Burst: 2, TableSize: 1024})
	heavy := addrOf("198.51.100.7:53")
	var x addr
	x.port = 1
	now := Time(0)
	admittedHeavy := 0
	i := uint32(0)
	allocs := testing.AllocsPerRun(20000, func() {
		i++
		now += Time(time.Microsecond)
		x.set(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1))
		if !a.allow(now, &x) {
			t.Fatal("a fresh source was refused")
		}
		if a.allow(now, heavy) {
			admittedHeavy++
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per check, want 0", allocs)
	}
	if len(a.entries) != 1024 {
		t.Errorf("table has %d entries, want 1024", len(a.entries))
	}
	// 20001 runs over ~20 ms: the burst of 2, nothing refilled.
	if admittedHeavy != 2 {
		t.Errorf("heavy source admitted %d times during the flood, want 2", admittedHeavy)
	}
}

// TestAdmissionEvictionCounted: a set of four ways full of refilling sources
// evicts the one with the earliest theoretical arrival time and counts it;
// evicting a full bucket is not counted.
func TestAdmissionEvictionCounted(t *testing.T) {
	a := newLimiter(t, AdmissionConfig{Interval: time.Second, Burst: 1, TableSize: MinAdmissionTableSize})
	// Find five sources of one set.
	var same []*addr
	want := -1
	for i := 0; len(same) < 6; i++ {
		c := addrOf(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 1).String())
		hi, lo := a.source(c)
		set := int(mum(hi^a.k0, lo^a.k1) & a.setMask)
		if want < 0 {
			want = set
		}
		if set == want {
			same = append(same, c)
		}
	}
	for i, c := range same[:4] {
		if !a.allow(Time(i), c) {
			t.Fatalf("source %d refused", i)
		}
	}
	if !a.allow(4, same[4]) || a.evictions != 1 {
		t.Fatalf("fifth source: evictions %d, want 1", a.evictions)
	}
	// The first source was evicted: it is admitted again (its debt is lost).
	if !a.allow(5, same[0]) {
		t.Fatal("evicted source refused")
	}
	// Much later every bucket of the set is full: replacing one costs
	// nothing.
	before := a.evictions // 2: re-admitting the first source evicted another
	if !a.allow(Time(time.Hour), same[5]) || a.evictions != before {
		t.Fatalf("evicting a full bucket: evictions %d, want %d", a.evictions, before)
	}
}

// TestAdmissionInManager: the manager refuses a source's new flows beyond its
// burst with DropRateLimited, before max_flows, after draining; existing
// flows are never limited; ConfigSetAdmission changes and turns off the limit.
func TestAdmissionInManager(t *testing.T) {
	h := newHarness(t, Config{Seed: 1, Admission: AdmissionConfig{Interval: time.Second, Burst: 2}}, ClusterConfig{Cluster: 1})
	ports := uint16(1000)
	next := func() Input {
		ports++
		return ClientDatagram(0, netip.AddrPortFrom(cliA.Addr(), ports), lcl, []byte("q"))
	}
	first := h.establish(0, netip.AddrPortFrom(cliA.Addr(), 999), lcl, "q")
	h.open(0, netip.AddrPortFrom(cliA.Addr(), 998), lcl, "q")
	out := h.handle(next(), next())
	wantKinds(t, out, OutDrop, OutDrop)
	if out[0].DropReason != DropRateLimited || out[0].Datagrams != 1 || out[0].Bytes != 1 || out[0].Flow != 0 {
		t.Fatalf("drop %s", fmtOutputs(out))
	}
	// The established flow of the same source still forwards.
	out = h.handle(ClientDatagram(0, netip.AddrPortFrom(cliA.Addr(), 999), lcl, []byte("more")))
	if s := pick(out, OutSendToBackend); len(s) != 1 || s[0].Flow != first {
		t.Fatalf("existing flow: %s", fmtOutputs(out))
	}
	// Another source is not limited.
	h.open(0, cliB, lcl, "q")
	// Draining is checked first: a drained manager says draining.
	h.handle(configEvent(ConfigDrain, 0))
	if out := h.handle(next()); out[0].DropReason != DropDraining {
		t.Fatalf("while draining: %s", fmtOutputs(out))
	}
	h.handle(configEvent(ConfigUndrain, 0))
	// One second later one token is back.
	h.at(time.Second)
	h.open(0, netip.AddrPortFrom(cliA.Addr(), 2000), lcl, "q")
	if out := h.handle(next()); out[0].DropReason != DropRateLimited {
		t.Fatalf("second flow after 1s: %s", fmtOutputs(out))
	}
	// A rate-limited source is refused before max_flows: with the cap
	// reached, it still counts as rate limited.
	h.handle(configEvent(ConfigSetMaxFlows, h.m.FlowCount()))
	if out := h.handle(next()); out[0].DropReason != DropRateLimited {
		t.Fatalf("at max_flows: %s", fmtOutputs(out))
	}
	h.handle(configEvent(ConfigSetMaxFlows, 100))
	// A bigger burst through a config event applies at once (the bucket's
	// debt carries over, so one more flow fits under burst 3).
	h.handle(ConfigInput(ConfigEvent{Kind: ConfigSetAdmission, Admission: AdmissionConfig{Interval: time.Second, Burst: 3}}))
	h.open(0, netip.AddrPortFrom(cliA.Addr(), 3000), lcl, "q")
	if out := h.handle(next()); out[0].DropReason != DropRateLimited {
		t.Fatalf("burst 3: %s", fmtOutputs(out))
	}
	// Off.
	h.handle(ConfigInput(ConfigEvent{Kind: ConfigSetAdmission}))
	for range 10 {
		h.open(0, netip.AddrPortFrom(cliA.Addr(), ports+100), lcl, "q")
		ports++
	}
	st := h.m.Stats()
	if st.Drops[DropRateLimited] != 5 {
		t.Fatalf("rate_limited drops %d, want 5", st.Drops[DropRateLimited])
	}
}

func TestAdmissionConfigValidate(t *testing.T) {
	for _, c := range []AdmissionConfig{
		{Interval: -1}, {Burst: -1}, {Burst: MaxAdmissionBurst + 1}, {PrefixV4: 33}, {PrefixV6: 129},
		{TableSize: 10}, {TableSize: MaxAdmissionTableSize + 1},
	} {
		if c.Validate() == nil {
			t.Errorf("%+v: valid", c)
		}
		if _, err := NewManager(Config{Admission: c}); err == nil {
			t.Errorf("NewManager(%+v) accepted", c)
		}
	}
	// Normalization keeps anything a config event carries bounded.
	a := &admission{}
	a.configure(AdmissionConfig{Interval: time.Hour * 24 * 365, Burst: 1 << 30, PrefixV4: 99, PrefixV6: -3, TableSize: 1 << 30}, 0)
	if len(a.entries) != MaxAdmissionTableSize || a.tau != Never || a.cfg.PrefixV4 != 32 || a.cfg.PrefixV6 != 128 {
		t.Fatalf("normalized to %+v, %d entries, tau %d", a.cfg, len(a.entries), a.tau)
	}
	if !a.allow(0, addrOf("192.0.2.1:1")) || !a.allow(0, addrOf("192.0.2.1:1")) {
		t.Fatal("huge burst refused")
	}
	a.configure(AdmissionConfig{Interval: time.Second, TableSize: 100}, 0)
	if len(a.entries) != 128 {
		t.Fatalf("table size 100 gave %d entries, want 128", len(a.entries))
	}
}

// TestAllocsAdmission: the manager's new-flow path with the limit on, both
// admitting and refusing, allocates nothing.
func TestAllocsAdmission(t *testing.T) {
	m, err := NewManager(Config{Seed: 1, MaxFlows: 1 << 20, Admission: AdmissionConfig{Interval: time.Second, Burst: 1, TableSize: 4096}})
	if err != nil {
		t.Fatal(err)
	}
	out := m.Handle(0, []Input{setCluster(0, ClusterConfig{Cluster: 1})}, make([]Output, 0, 16))
	in := []Input{ClientDatagram(0, cliA, lcl, []byte("q"))}
	i := uint32(0)
	now := Time(0)
	assertNoAllocs(t, "refused", func() {
		now++
		in[0].Src = netip.AddrPortFrom(cliA.Addr(), uint16(1000+i%60000))
		i++
		out = m.Handle(now, in, out[:0])
		if i > 1 && (len(out) != 1 || out[0].DropReason != DropRateLimited) {
			t.Fatalf("%s", fmtOutputs(out))
		}
	})
}

// BenchmarkAdmissionCheck measures the per-source check alone: a warm table
// of 16384 sources (default size) and a new source each time (the flood
// case, evicting).
func BenchmarkAdmissionCheck(b *testing.B) {
	for _, bc := range []struct {
		name    string
		sources uint32
	}{{"known-1k", 1024}, {"flood-new", 1 << 30}} {
		b.Run(bc.name, func(b *testing.B) {
			a := newLimiter(b, AdmissionConfig{Interval: time.Millisecond, Burst: 4})
			var c addr
			c.set(cliA)
			now := Time(0)
			i := uint32(0)
			for b.Loop() {
				i++
				now += 100
				binary.BigEndian.PutUint32(c.ip[12:], 0x0a000000|i%bc.sources)
				a.allow(now, &c)
			}
		})
	}
}

// BenchmarkLifecycleAdmission is BenchmarkDNSLifecycle (admit, resolve,
// reply, close; batches of 64) with the per-source limit off and on (a rate
// high enough that every flow is admitted, so both do the same work plus the
// check), side by side: the difference is the check's cost per new flow.
func BenchmarkLifecycleAdmission(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "limit=off"
		if on {
			name = "limit=on"
		}
		b.Run(name, func(b *testing.B) {
			r := newBenchRig(b, 10_000, benchCluster())
			if on {
				ev := ConfigEvent{Kind: ConfigSetAdmission, Admission: AdmissionConfig{Interval: 1, Burst: MaxAdmissionBurst}}
				r.out = r.m.Handle(r.now, []Input{ConfigInput(ev)}, r.out[:0])
			}
			d := newBenchDNS(r)
			for range 2 * benchBatch {
				d.lifecycle(64)
			}
			b.ReportAllocs()
			for b.Loop() {
				d.lifecycle(64)
			}
			if st := r.m.Stats(); st.Drops[DropRateLimited] != 0 || st.Closes[CloseResponses] == 0 {
				b.Fatalf("stats %+v", st)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/flow")
		})
	}
}

// FuzzAdmission drives the limiter with any config (normalized as a config
// event would be) and any sequence of clock steps and client addresses, and
// checks every decision against a reference GCRA over an unbounded map with
// prefixes masked by net/netip, until the bounded table first evicts a
// refilling source (after which the two may differ, by design). The table
// never changes size.
func FuzzAdmission(f *testing.F) {
	f.Add(int64(time.Second), 2, 32, 128, 64, []byte{0, 1, 0, 1, 0, 1, 255, 1, 0, 2})
	f.Add(int64(time.Millisecond), 1, 24, 64, 0, []byte{7, 9, 7, 10, 200, 9, 0, 130, 0, 131})
	f.Add(int64(1), 1<<30, 0, 0, 1<<30, []byte{1, 2, 3, 4})
	f.Add(int64(-5), -1, 99, -3, 10, []byte{})
	f.Fuzz(func(t *testing.T, interval int64, burst, p4, p6, size int, ops []byte) {
		cfg := AdmissionConfig{Interval: time.Duration(interval), Burst: burst, PrefixV4: p4, PrefixV6: p6, TableSize: size % (1 << 16)}
		a := &admission{}
		a.configure(cfg, 7)
		if err := a.check(); err != nil {
			t.Fatal(err)
		}
		n := a.cfg
		if !a.on() {
			return
		}
		tau := Time(n.Burst-1) * Time(n.Interval)
		if n.Interval > 0 && Time(n.Burst-1) > Never/Time(n.Interval) {
			tau = Never
		}
		ref := map[netip.Addr]Time{}
		now := Time(0)
		for i := 0; i+1 < len(ops); i += 2 {
			now += Time(ops[i]) * Time(n.Interval) / 16
			sel := ops[i+1]
			var ap netip.AddrPort
			if sel&0x80 == 0 {
				ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, sel & 0x40, 0, sel & 0x3f}), 1)
			} else {
				ap = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 7: sel & 0x40, 15: sel & 0x3f}), 1)
			}
			c := toAddr(ap)
			got := a.allow(now, &c)
			if a.evictions > 0 {
				return
			}
			bits := n.PrefixV6
			if ap.Addr().Is4() {
				bits = n.PrefixV4
			}
			src := netip.PrefixFrom(ap.Addr(), bits).Masked().Addr()
			tat := max(ref[src], now)
			want := tat-now <= tau
			if want {
				ref[src] = tat.Add(n.Interval)
			}
			if got != want {
				t.Fatalf("step %d at %d: %v (source %v) allowed %v, reference %v", i/2, now, ap, src, got, want)
			}
		}
		if err := a.check(); err != nil {
			t.Fatal(err)
		}
	})
}
