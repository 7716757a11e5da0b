package shard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/bpf"
	"github.com/fastudp/fastudp/core"
)

// requireBPF skips a test that loads the steering program unless the
// process may (root here); under CI=true, which runs as root, it fails.
func requireBPF(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true: steering tests load a BPF program and must run as root")
	}
	t.Skip("needs root (CAP_BPF) to load the steering program")
}

// steeredGroup starts a group of shards behind one echo backend with the
// given steering.
func steeredGroup(t *testing.T, listen string, shards int, so SteeringOptions) *testGroup {
	t.Helper()
	be := newBackend(t, backendOpts{Prefix: "b:"})
	o := oneListener(listen, core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}})
	o.Shards = shards
	o.Steering = so
	return startGroup(t, o)
}

// perShard returns each shard's received datagrams.
func (g *testGroup) perShard() []uint64 {
	out := make([]uint64, len(g.Shards()))
	for i, s := range g.Shards() {
		out[i] = s.Counters().Shard(ShardRxDatagrams)
	}
	return out
}

// shardOf sends one datagram from c and returns the shard that received it.
func (g *testGroup) shardOf(t *testing.T, c *testClient) int {
	t.Helper()
	before := g.perShard()
	c.sendTo(g.addr(), []byte("x"))
	got := -1
	waitUntil(t, waitTimeout, "the datagram to reach a shard", func() bool {
		for i, v := range g.perShard() {
			if v > before[i] {
				got = i
				return true
			}
		}
		return false
	})
	return got
}

// TestSteeringHashIP sends one datagram from each of 200 ports of one
// client IP: with hash steering on the IP they all reach the shard ShardFor
// names; with the kernel's 4-tuple hash (the control) they spread.
func TestSteeringHashIP(t *testing.T) {
	requireBPF(t)
	t.Parallel()
	const shards, ports, seed = 4, 200, 0x5eed
	for _, mode := range []bpf.Mode{bpf.ModeHash, bpf.ModeKernel} {
		t.Run(mode.String(), func(t *testing.T) {
			g := steeredGroup(t, "127.0.0.1:0", shards, SteeringOptions{Mode: mode, Key: bpf.KeyIP, Seed: seed})
			if st := g.Steering(); st.Active != mode.String() || st.Fallback != nil {
				t.Fatalf("steering %+v, want %v in force", st, mode)
			}
			for i := range ports {
				newClient(t, g.addr()).send(fmt.Sprintf("p%d", i))
			}
			g.waitListener(t, "rx datagrams", ListenerRxDatagrams, ports)
			per := g.perShard()
			t.Logf("datagrams per shard: %v", per)
			busy := 0
			for _, v := range per {
				if v > 0 {
					busy++
				}
			}
			switch mode {
			case bpf.ModeHash:
				home := bpf.ShardFor(seed, netip.MustParseAddrPort("127.0.0.1:1"), bpf.KeyIP, shards)
				if per[home] != ports {
					t.Errorf("shard %d (ShardFor) got %d of %d datagrams: %v", home, per[home], ports, per)
				}
				st, err := g.SteeringPrograms()[0].Stats()
				if err != nil {
					t.Fatal(err)
				}
				if st.Selected != ports {
					t.Errorf("program stats %+v, want %d selected", st, ports)
				}
			case bpf.ModeKernel:
				if busy < 2 {
					t.Errorf("kernel hash put %d ports on %d shard(s): %v", ports, busy, per)
				}
				if g.SteeringPrograms() != nil {
					t.Error("kernel mode loaded a program")
				}
			}
		})
	}
}

// TestSteeringFlowKeyRestart runs two group lifetimes on the same port
// with the same seed (a restart): every client socket reaches the same shard
// both times, the one ShardFor names.
func TestSteeringFlowKeyRestart(t *testing.T) {
	requireBPF(t)
	t.Parallel()
	const shards, n, seed = 4, 24, 0xfeed
	so := SteeringOptions{Mode: bpf.ModeHash, Key: bpf.KeyFlow, Seed: seed}
	listen := "127.0.0.1:0"
	var first []int
	var clients []*testClient
	for life := range 2 {
		g := steeredGroup(t, listen, shards, so)
		if life == 0 {
			for range n {
				clients = append(clients, newClient(t, g.addr()))
			}
		}
		got := make([]int, n)
		for i, c := range clients {
			got[i] = g.shardOf(t, c)
			if want := bpf.ShardFor(seed, c.Addr(), bpf.KeyFlow, shards); got[i] != want {
				t.Errorf("life %d: client %v on shard %d, want ShardFor = %d", life, c.Addr(), got[i], want)
			}
			if life == 1 && got[i] != first[i] {
				t.Errorf("client %v moved from shard %d to %d across the restart", c.Addr(), first[i], got[i])
			}
		}
		t.Logf("life %d: shards by client %v", life, got)
		first = got
		listen = g.addr().String()
		g.cancel()
		if err := g.wait(waitTimeout); err != nil {
			t.Fatal(err)
		}
	}
}

// onCPU runs f on a goroutine locked to an OS thread pinned to cpu.
func onCPU(t *testing.T, cpu int, f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var old, set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			done <- err
			return
		}
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			done <- fmt.Errorf("pin to cpu %d: %w", cpu, err)
			return
		}
		defer unix.SchedSetaffinity(0, &old)
		done <- f()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// twoCPUs returns the first two CPUs the process may use, or skips.
func twoCPUs(t *testing.T) []int {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for c := 0; c < 1024 && len(cpus) < 2; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) < 2 {
		t.Skipf("needs 2 CPUs, the process may use %v", cpus)
	}
	return cpus
}

// checkCPUSteering sends datagrams from a thread pinned to each CPU and
// checks they reach shard ShardForCPU (over loopback a datagram is received
// on the sending CPU).
func checkCPUSteering(t *testing.T, g *testGroup, cpus []int) {
	t.Helper()
	const per = 20
	c := newClient(t, g.addr())
	for _, cpu := range cpus {
		want := bpf.ShardForCPU(cpu, bpf.Options{Shards: len(g.Shards())})
		before := g.perShard()
		onCPU(t, cpu, func() error {
			for range per {
				if _, err := c.conn.WriteToUDPAddrPort([]byte("c"), g.addr()); err != nil {
					return err
				}
			}
			return nil
		})
		waitUntil(t, waitTimeout, "datagrams from the pinned sender", func() bool {
			var sum uint64
			for i, v := range g.perShard() {
				sum += v - before[i]
			}
			return sum == per
		})
		if got := g.perShard()[want] - before[want]; got != per {
			t.Errorf("sent %d from cpu %d: shard %d got %d (per shard before %v, after %v)", per, cpu, want, got, before, g.perShard())
		}
	}
}

// TestSteeringCPU: datagrams sent from a thread pinned to CPU k reach
// shard k.
func TestSteeringCPU(t *testing.T) {
	requireBPF(t)
	cpus := twoCPUs(t)
	g := steeredGroup(t, "127.0.0.1:0", 2, SteeringOptions{Mode: bpf.ModeCPU})
	if st := g.Steering(); st.Active != SteeringActiveCPU {
		t.Fatalf("steering %+v", st)
	}
	checkCPUSteering(t, g, cpus)
}

// TestSteeringEmptySlot empties the sockarray slot of the shard every
// client hashes to: datagrams are still delivered (the kernel chooses) and
// every client gets its reply.
func TestSteeringEmptySlot(t *testing.T) {
	requireBPF(t)
	t.Parallel()
	const shards, n, seed = 3, 30, 77
	g := steeredGroup(t, "127.0.0.1:0", shards, SteeringOptions{Mode: bpf.ModeHash, Key: bpf.KeyIP, Seed: seed})
	home := bpf.ShardFor(seed, netip.MustParseAddrPort("127.0.0.1:1"), bpf.KeyIP, shards)
	prog := g.SteeringPrograms()[0]
	if err := prog.ClearSocket(home); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		newClient(t, g.addr()).roundTrip("b:", fmt.Sprintf("q%d", i))
	}
	st, err := prog.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.NoSocket != n {
		t.Errorf("program stats %+v, want %d no_socket", st, n)
	}
	t.Logf("home shard %d emptied; per shard %v", home, g.perShard())
}

// TestSteeringOverride moves one client to another shard through the
// override map.
func TestSteeringOverride(t *testing.T) {
	requireBPF(t)
	t.Parallel()
	const shards, seed = 4, 5
	g := steeredGroup(t, "127.0.0.1:0", shards, SteeringOptions{Mode: bpf.ModeHash, Key: bpf.KeyIP, Seed: seed})
	c := newClient(t, g.addr())
	home := g.shardOf(t, c)
	target := (home + 2) % shards
	if err := g.SteeringPrograms()[0].SetOverride(c.Addr(), target); err != nil {
		t.Fatal(err)
	}
	if got := g.shardOf(t, c); got != target {
		t.Errorf("overridden client on shard %d, want %d", got, target)
	}
	if got := g.shardOf(t, newClient(t, g.addr())); got != home {
		t.Errorf("another port of the client on shard %d, want %d", got, home)
	}
}

// withoutBPFCaps runs f on a thread without CAP_BPF and CAP_SYS_ADMIN. The
// thread is never unlocked, so the runtime ends it when f returns; threads
// the runtime starts meanwhile come from its template thread, not this one.
func withoutBPFCaps(t *testing.T, f func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			done <- err
			return
		}
		for _, c := range []uint{unix.CAP_BPF, unix.CAP_SYS_ADMIN} {
			data[c/32].Effective &^= 1 << (c % 32)
			data[c/32].Permitted &^= 1 << (c % 32)
		}
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			done <- fmt.Errorf("capset: %w", err)
			return
		}
		f()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// adoptGroup starts a group made by NewGroup as startGroup does.
func adoptGroup(t *testing.T, grp *Group) *testGroup {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	grp.Start(ctx)
	g := &testGroup{Group: grp, cancel: cancel}
	t.Cleanup(func() {
		cancel()
		if err := g.wait(waitTimeout); err != nil {
			t.Error(err)
		}
	})
	return g
}

// TestSteeringFallback builds groups on a thread without CAP_BPF: they
// start anyway, on the kernel's hash (hash mode) or SO_INCOMING_CPU (cpu
// mode), report why, and serve.
func TestSteeringFallback(t *testing.T) {
	requireBPF(t)
	// Load once with the capabilities, so cilium/ebpf's cached feature
	// probes do not run on the restricted thread.
	if s, err := bpf.Load(bpf.Options{Mode: bpf.ModeHash, Shards: 1}); err == nil {
		s.Close()
	}
	for _, tc := range []struct {
		mode   bpf.Mode
		active string
	}{
		{bpf.ModeHash, SteeringActiveKernel},
		{bpf.ModeCPU, SteeringActiveIncomingCPU},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			be := newBackend(t, backendOpts{Prefix: "b:"})
			o := oneListener("127.0.0.1:0", core.ClusterConfig{}, fixedPicker{{ID: 0, Addr: be.Addr}})
			o.Shards = 2
			o.Steering = SteeringOptions{Mode: tc.mode, Seed: 1}
			var grp *Group
			var err error
			withoutBPFCaps(t, func() { grp, err = NewGroup(o) })
			if err != nil {
				t.Fatal(err)
			}
			g := adoptGroup(t, grp)
			st := g.Steering()
			if st.Active != tc.active || !errors.Is(st.Fallback, bpf.ErrPermission) || st.FallbackAlso != nil {
				t.Fatalf("steering %+v (fallback %v), want %s after a permission error", st, st.Fallback, tc.active)
			}
			if g.SteeringPrograms() != nil {
				t.Error("programs kept after the fallback")
			}
			for i := range 10 {
				newClient(t, g.addr()).roundTrip("b:", fmt.Sprintf("f%d", i))
			}
			if tc.mode == bpf.ModeCPU {
				// SO_INCOMING_CPU (Linux 6.1+) prefers the socket of the
				// receiving CPU.
				checkCPUSteering(t, g, twoCPUs(t))
			}
		})
	}
}

// TestSteeringCollector checks the steering metrics of a running group.
func TestSteeringCollector(t *testing.T) {
	requireBPF(t)
	t.Parallel()
	const n = 7
	g := steeredGroup(t, "127.0.0.1:0", 2, SteeringOptions{Mode: bpf.ModeHash, Key: bpf.KeyFlow, Seed: 3})
	for i := range n {
		newClient(t, g.addr()).roundTrip("b:", fmt.Sprintf("m%d", i))
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewSteeringCollector(g.Group, []string{"l"}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"fastudp_steering_info", []string{"mode", "hash", "key", "flow", "active", "hash"}, 1},
		{"fastudp_steering_fallbacks_total", []string{"reason", "no_permission"}, 0},
		{"fastudp_steering_datagrams_total", []string{"listener", "l", "result", "selected"}, n},
		{"fastudp_steering_datagrams_total", []string{"listener", "l", "result", "no_socket"}, 0},
	} {
		if got := gatheredValue(t, mfs, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	// After the group stops, a scrape still works (without program stats).
	g.cancel()
	if err := g.wait(waitTimeout); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}

// TestSteeringPin pins each listener's maps under the pin path.
func TestSteeringPin(t *testing.T) {
	requireBPF(t)
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Skipf("cannot mount bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	g := steeredGroup(t, "127.0.0.1:0", 2, SteeringOptions{Mode: bpf.ModeHash, PinPath: filepath.Join(dir, "fastudp")})
	if g.Steering().Active != SteeringActiveHash {
		t.Fatalf("steering %+v", g.Steering())
	}
	if _, err := os.Stat(filepath.Join(dir, "fastudp", "l", "fudp_socks")); err != nil {
		t.Error(err)
	}
	newClient(t, g.addr()).roundTrip("b:", "pinned")
}
