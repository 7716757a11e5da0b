package core

import (
	"bytes"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// restoreSim replaces the sim's manager by one restored from its state at
// the sim's clock, as a new process would after an upgrade, and checks that
// the state written by the restored manager is byte for byte the original's.
func restoreSim(t failer, s *sim) {
	t.Helper()
	state := s.m.AppendState(nil, s.now)
	pool := newTestPool(s.cfg.PoolLimit)
	m, err := RestoreManager(Config{Seed: s.cfg.Seed, MaxFlows: s.cfg.MaxFlows, PendingLimit: s.cfg.PendingLimit,
		ExpiryBudget: s.cfg.ExpiryBudget, Pool: pool}, state, s.now)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if err := m.CheckInvariants(); err != nil {
		t.Fatalf("restored manager: %v", err)
	}
	if again := m.AppendState(nil, s.now); !bytes.Equal(again, state) {
		t.Fatalf("restored state differs from the original (%d and %d bytes)", len(again), len(state))
	}
	// The old manager's buffers stay with it (its process exits).
	s.m, s.pool = m, pool
}

// TestStateRoundTrip runs random op sequences twice: straight through, and
// with the manager snapshotted and restored (as a new process would) at a
// random point. Every output after the restore must equal the straight
// run's, field by field, and the sim's model checks still hold.
func TestStateRoundTrip(t *testing.T) {
	restores, flowsCarried := 0, 0
	rapid.Check(t, func(t *rapid.T) {
		cfg := drawSimConfig(t)
		n := rapid.SampledFrom([]int{20, 100, 300}).Draw(t, "n")
		ops := rapid.SliceOfN(rapid.Custom(drawSimOp), n, n).Draw(t, "ops")
		cuts := rapid.SliceOfN(rapid.IntRange(0, n), 1, 3).Draw(t, "cuts")
		var logs [2][]string
		for run := range logs {
			s := newSim(t, cfg, true)
			for i, op := range ops {
				// A new process takes over between batches.
				if run == 1 && slices.Contains(cuts, i) && len(s.batch) == 0 {
					restores++
					flowsCarried += s.m.FlowCount()
					restoreSim(t, s)
				}
				s.apply(op)
			}
			if run == 1 && slices.Contains(cuts, n) && len(s.batch) == 0 {
				restoreSim(t, s)
			}
			s.finish()
			logs[run] = s.log
		}
		if !slices.Equal(logs[0], logs[1]) {
			for i := range min(len(logs[0]), len(logs[1])) {
				if logs[0][i] != logs[1][i] {
					t.Fatalf("restored run differs at output %d:\n%s\n%s", i, logs[0][i], logs[1][i])
				}
			}
			t.Fatalf("runs differ in length: %d, %d", len(logs[0]), len(logs[1]))
		}
	})
	// The property is empty unless restores happened with flows live.
	if restores == 0 || flowsCarried == 0 {
		t.Fatalf("%d restores carried %d flows", restores, flowsCarried)
	}
	t.Logf("%d restores carried %d flows", restores, flowsCarried)
}

// TestStateClockShift restores a manager on a clock 1000 s ahead: the flow
// keeps its id, key, backend and counts, its deadline moves by exactly the
// shift, and it expires at the shifted time, not before.
func TestStateClockShift(t *testing.T) {
	pool := newTestPool(0)
	m := newTestManager(t, Config{Seed: 7, Pool: pool})
	m.Handle(0, []Input{ConfigInput(ConfigEvent{Kind: ConfigSetCluster, Listener: 0,
		Cluster: ClusterConfig{Cluster: 1, FrontTimeout: 10 * time.Second, BackTimeout: 20 * time.Second}})}, nil)
	out := m.Handle(1000, []Input{ClientDatagram(0, cliA, lcl, []byte("hello"))}, nil)
	id := out[0].Flow
	out = m.Handle(2000, []Input{Resolved(id, be1)}, nil)
	m.Handle(3000, []Input{BackendDatagram(id, []byte("reply"))}, nil)
	before, _ := m.Flow(id)

	const shift = Time(1000 * time.Second)
	now := Time(5000)
	state := m.AppendState(nil, now)
	r, err := RestoreManager(Config{Seed: 7, Pool: newTestPool(0)}, state, now+shift)
	if err != nil {
		t.Fatal(err)
	}
	after, ok := r.Flow(id)
	if !ok {
		t.Fatalf("flow %v lost", id)
	}
	if after.Deadline != before.Deadline+shift || after.Stats.Created != before.Stats.Created+shift {
		t.Errorf("deadline %d created %d, want %d and %d", after.Deadline, after.Stats.Created, before.Deadline+shift, before.Stats.Created+shift)
	}
	after.Deadline, after.Stats.Created = before.Deadline, before.Stats.Created
	if after != before {
		t.Errorf("flow after restore %+v, before %+v", after, before)
	}
	if r.NextDeadline() != m.NextDeadline()+shift {
		t.Errorf("armed %d, want %d", r.NextDeadline(), m.NextDeadline()+shift)
	}
	// The same client reaches the same flow on the new clock.
	out = r.Handle(now+shift, []Input{ClientDatagram(0, cliA, lcl, []byte("again"))}, nil)
	if o := findOutput(out, OutSendToBackend); o == nil || o.Flow != id || o.Backend.ID != be1.ID {
		t.Fatalf("client datagram after restore: %v", fmtOutputs(out))
	}
	// Just before its (shifted) deadline it lives; at it, it expires.
	dl, _ := r.Flow(id)
	r.Handle(dl.Deadline-1, []Input{TimerFired()}, nil)
	if _, ok := r.Flow(id); !ok {
		t.Fatal("expired early")
	}
	out = r.Handle(dl.Deadline, []Input{TimerFired()}, nil)
	if o := findOutput(out, OutCloseFlow); o == nil || o.Flow != id || o.CloseReason != CloseIdle {
		t.Fatalf("at the deadline: %v", fmtOutputs(out))
	}
}

func findOutput(out []Output, k OutputKind) *Output {
	for i := range out {
		if out[i].Kind == k {
			return &out[i]
		}
	}
	return nil
}

// TestStateHeldDatagrams carries a waiting flow's held datagrams (one a GRO
// run) across a restore: they are forwarded, in order, once it resolves.
func TestStateHeldDatagrams(t *testing.T) {
	m := newTestManager(t, Config{Seed: 1, Pool: newTestPool(0)})
	m.Handle(0, []Input{ConfigInput(ConfigEvent{Kind: ConfigSetCluster, Cluster: ClusterConfig{Cluster: 1}})}, nil)
	run := groClient(0, cliA, lcl, []byte("aaaabbbbcc"), 4)
	out := m.Handle(1, []Input{ClientDatagram(0, cliA, lcl, []byte("first")), run}, nil)
	id := out[0].Flow
	pool := newTestPool(0)
	r, err := RestoreManager(Config{Seed: 1, Pool: pool}, m.AppendState(nil, 1), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(pool.outstanding) != 2 {
		t.Fatalf("%d buffers held, want 2", len(pool.outstanding))
	}
	out = r.Handle(2, []Input{Resolved(id, be1)}, nil)
	var got []string
	for _, o := range out {
		if o.Kind == OutSendToBackend {
			got = append(got, string(o.Payload))
			if string(o.Payload) == "aaaabbbbcc" && o.SegmentSize != 4 {
				t.Errorf("run sent with segment size %d", o.SegmentSize)
			}
		}
	}
	if !slices.Equal(got, []string{"first", "aaaabbbbcc"}) {
		t.Fatalf("forwarded %q", got)
	}
	r.Handle(3, nil, nil)
	if len(pool.outstanding) != 0 {
		t.Fatalf("%d buffers not returned", len(pool.outstanding))
	}
}

// TestStateRefused checks the errors a new process gets for a state it must
// not use: another seed, another format version, no magic, trailing bytes,
// truncation at every length.
func TestStateRefused(t *testing.T) {
	m := newTestManager(t, Config{Seed: 3, Pool: newTestPool(0)})
	m.Handle(0, []Input{ConfigInput(ConfigEvent{Kind: ConfigSetCluster, Cluster: ClusterConfig{Cluster: 1}})}, nil)
	out := m.Handle(1, []Input{ClientDatagram(0, cliA, lcl, []byte("x"))}, nil)
	m.Handle(2, []Input{Resolved(out[0].Flow, be1)}, nil)
	state := m.AppendState(nil, 5)
	cfg := Config{Seed: 3, Pool: newTestPool(0)}
	if _, err := RestoreManager(cfg, state, 5); err != nil {
		t.Fatalf("good state refused: %v", err)
	}
	bad := map[string][]byte{
		"seed":     nil,
		"version":  append([]byte(StateMagic), append([]byte{StateVersion + 1}, state[len(StateMagic)+1:]...)...),
		"magic":    append([]byte("FUDPcorX"), state[len(StateMagic):]...),
		"trailing": append(slices.Clone(state), 0),
	}
	for name, b := range bad {
		c := cfg
		if name == "seed" {
			b, c.Seed = state, 4
		}
		if _, err := RestoreManager(c, b, 5); !errors.Is(err, ErrBadState) {
			t.Errorf("%s: err %v, want ErrBadState", name, err)
		}
	}
	for n := range len(state) {
		if _, err := RestoreManager(cfg, state[:n], 5); !errors.Is(err, ErrBadState) {
			t.Fatalf("truncated to %d of %d bytes: err %v", n, len(state), err)
		}
	}
}

// TestStateRemapBackends renames backends and clears the down set.
func TestStateRemapBackends(t *testing.T) {
	m := newTestManager(t, Config{Seed: 1, Pool: newTestPool(0)})
	m.Handle(0, []Input{ConfigInput(ConfigEvent{Kind: ConfigSetCluster, Cluster: ClusterConfig{Cluster: 1}}),
		ConfigInput(ConfigEvent{Kind: ConfigBackendDown, Backend: 9})}, nil)
	out := m.Handle(1, []Input{ClientDatagram(0, cliA, lcl, []byte("x"))}, nil)
	id := out[0].Flow
	m.Handle(2, []Input{Resolved(id, be1)}, nil)
	m.RemapBackends(func(b BackendID) BackendID { return b + 100 })
	if f, _ := m.Flow(id); f.Backend != be1.ID+100 {
		t.Errorf("backend %d, want %d", f.Backend, be1.ID+100)
	}
	if m.BackendsDown() != 0 {
		t.Error("down set kept")
	}
	if err := m.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// FuzzRestoreManager feeds arbitrary bytes (seeded with real states) to
// RestoreManager: it must never panic, and whatever it accepts must pass
// CheckInvariants, write back a state that restores to itself exactly, and
// survive a timer run.
func FuzzRestoreManager(f *testing.F) {
	s := newSim(f, simConfig{Seed: 1, MaxFlows: 8, PendingLimit: 2, ExpiryBudget: 2}, false)
	x := uint64(1)
	next := func() int { x = splitmix64(x + 0x9e3779b97f4a7c15); return int(x >> 33) }
	for i := range 400 {
		op := simOp{Kind: simOpTable[next()%len(simOpTable)], A: next() % 64, B: next() % 1000, C: next() % 64,
			Size: next() % 200, Variant: next() % 81, Value: next() % 64, End: next()%3 > 0}
		if op.Kind == simSetCluster {
			op.Cluster = clusterFrom(next)
		}
		s.apply(op)
		if i%50 == 0 && len(s.batch) == 0 {
			f.Add(s.m.AppendState(nil, s.now))
		}
	}
	f.Add([]byte(StateMagic))
	f.Fuzz(func(t *testing.T, state []byte) {
		pool := newTestPool(0)
		m, err := RestoreManager(Config{Seed: 1, MaxFlows: 8, PendingLimit: 2, ExpiryBudget: 2, Pool: pool}, state, 1e9)
		if err != nil {
			if !errors.Is(err, ErrBadState) {
				t.Fatalf("error %v does not wrap ErrBadState", err)
			}
			if len(pool.outstanding) != 0 {
				t.Fatalf("failed restore kept %d buffers", len(pool.outstanding))
			}
			return
		}
		if err := m.CheckInvariants(); err != nil {
			t.Fatalf("accepted state breaks invariants: %v", err)
		}
		// What it writes back (canonical: normalized configs, minimal
		// numbers) restores to a manager that writes exactly that again.
		canon := m.AppendState(nil, 1e9)
		m2, err := RestoreManager(Config{Seed: 1, MaxFlows: 8, PendingLimit: 2, ExpiryBudget: 2, Pool: newTestPool(0)}, canon, 1e9)
		if err != nil {
			t.Fatalf("its own state refused: %v", err)
		}
		if again := m2.AppendState(nil, 1e9); !bytes.Equal(again, canon) {
			t.Fatal("a written state does not restore to the same state")
		}
		m.Handle(1e15, []Input{TimerFired(), ClientDatagram(0, netip.MustParseAddrPort("192.0.2.1:1"), lcl, []byte("x"))}, nil)
		if err := m.CheckInvariants(); err != nil {
			t.Fatalf("after a timer: %v", err)
		}
	})
}

func newTestManager(tb testing.TB, cfg Config) *Manager {
	tb.Helper()
	m, err := NewManager(cfg)
	if err != nil {
		tb.Fatalf("NewManager: %v", err)
	}
	return m
}
