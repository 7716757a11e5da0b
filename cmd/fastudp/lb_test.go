package main

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fastudp/fastudp/config"
	"github.com/fastudp/fastudp/control"
	"github.com/fastudp/fastudp/core"
	"github.com/fastudp/fastudp/health"
)

// lbBackend is one backend of lbConfig.
type lbBackend struct {
	name   string
	addr   netip.AddrPort
	weight int
	backup bool
}

// lbConfig is a config of one listener at front, a control socket sock and
// one cluster with lb over backends.
func lbConfig(front netip.AddrPort, sock, lb string, backends ...lbBackend) string {
	var b strings.Builder
	fmt.Fprintf(&b, "shards = 2\ngrace_period = \"1s\"\ncontrol = %q\n", sock)
	fmt.Fprintf(&b, "[[listener]]\nname = \"l\"\naddress = %q\ncluster = \"c\"\n", front.String())
	fmt.Fprintf(&b, "[[cluster]]\nname = \"c\"\nlb = %q\naffinity = \"ip-port\"\n", lb)
	for _, be := range backends {
		fmt.Fprintf(&b, "  [[cluster.backend]]\n  name = %q\n  address = %q\n  weight = %d\n  backup = %v\n", be.name, be.addr.String(), be.weight, be.backup)
	}
	return b.String()
}

// startLB writes conf to a file in dir, runs fastudp on it, waits until it
// answers and returns the file and a control client.
func startLB(t *testing.T, dir, sock string, front netip.AddrPort, conf string) (string, *control.Client) {
	t.Helper()
	file := filepath.Join(dir, "fastudp.toml")
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr := startFromFile(t, file)
	waitEcho(t, front, stderr)
	ctl := control.NewClient(sock)
	t.Cleanup(ctl.Close)
	return file, ctl
}

// TestLBRoundRobinAndBackup: with lb = "rr" over primaries a (weight 1) and
// b (weight 2), every 3 new flows give a one and b two, exactly, across both
// shards; the backup z gets none. Draining a sends every new flow to b;
// draining b too, to z; undraining a, to a again. A reload that makes z a
// primary applies live: the flows then spread over a and z.
func TestLBRoundRobinAndBackup(t *testing.T) {
	a, b, z := namedEcho(t, "a"), namedEcho(t, "b"), namedEcho(t, "z")
	front := netip.MustParseAddrPort(freeUDPPort(t))
	dir := t.TempDir()
	sock := filepath.Join(dir, "control.sock")
	conf := func(zBackup bool) string {
		return lbConfig(front, sock, "rr", lbBackend{"a", a, 1, false}, lbBackend{"b", b, 2, false}, lbBackend{"z", z, 5, zBackup})
	}
	file, ctl := startLB(t, dir, sock, front, conf(true))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	expect := func(what string, n int, want map[string]int) {
		t.Helper()
		if got := sampleNewFlows(t, front, n); !maps.Equal(got, want) {
			t.Fatalf("%s: %d new flows went to %v, want %v", what, n, got, want)
		}
	}
	drain := func(addr netip.AddrPort, on bool) {
		t.Helper()
		if _, err := ctl.DrainBackend(ctx, "c", addr, on); err != nil {
			t.Fatal(err)
		}
	}
	// waitEcho's flow took one pick; 30 more flows are 10 whole periods.
	expect("weights 1:2, z backup", 30, map[string]int{"a": 10, "b": 20})
	drain(a, true)
	expect("a draining", 10, map[string]int{"b": 10})
	drain(b, true)
	expect("every primary draining", 10, map[string]int{"z": 10})
	drain(a, false)
	expect("a back", 10, map[string]int{"a": 10})

	if err := os.WriteFile(file, []byte(conf(false)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmdPID := mustStatusPID(t, ctx, ctl)
	if err := syscall.Kill(cmdPID, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// The reload keeps b's drain (health settings did not change); a (1)
	// and z (5) share new flows once it is applied.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := sampleNewFlows(t, front, 6)
		if got["z"] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("z is still a backup after the reload: %v", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	expect("z a primary, b draining", 60, map[string]int{"a": 10, "z": 50})
}

// TestLBP2CLiveFlows: with lb = "p2c", new flows go to the backends with the
// fewest live flows per unit of weight. 20 flows are opened (and kept open)
// while only a takes new flows; once b and c take them again, a has 20 live
// flows and the others none, so every one of the next 20 flows goes to b or c
// (weighted random would send a about a quarter of them).
func TestLBP2CLiveFlows(t *testing.T) {
	a, b, c := namedEcho(t, "a"), namedEcho(t, "b"), namedEcho(t, "c")
	front := netip.MustParseAddrPort(freeUDPPort(t))
	dir := t.TempDir()
	sock := filepath.Join(dir, "control.sock")
	_, ctl := startLB(t, dir, sock, front, lbConfig(front, sock, "p2c",
		lbBackend{"a", a, 100, false}, lbBackend{"b", b, 100, false}, lbBackend{"c", c, 200, false}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, addr := range []netip.AddrPort{b, c} {
		if _, err := ctl.DrainBackend(ctx, "c", addr, true); err != nil {
			t.Fatal(err)
		}
	}
	if got := sampleNewFlows(t, front, 20); got["a"] != 20 {
		t.Fatalf("with b and c draining, new flows went to %v", got)
	}
	for _, addr := range []netip.AddrPort{b, c} {
		if _, err := ctl.DrainBackend(ctx, "c", addr, false); err != nil {
			t.Fatal(err)
		}
	}
	got := sampleNewFlows(t, front, 20)
	if got["a"] != 0 || got["b"]+got["c"] != 20 {
		t.Fatalf("a has 20 live flows, b and c none: 20 new flows went to %v", got)
	}
	// Flows per unit of weight even out: b and c (weight 2) fill up to a's
	// 20 per 100 before a gets more.
	if got["c"] < got["b"] {
		t.Errorf("c (weight 200) got fewer new flows than b (100): %v", got)
	}
}

// mustStatusPID returns the proxy's PID from the control API.
func mustStatusPID(t *testing.T, ctx context.Context, ctl *control.Client) int {
	t.Helper()
	st, err := ctl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st.PID
}

// TestPickerPickAllocatesNothing: the shards' Pick allocates nothing for any
// policy, with a backend draining (a usable set) and a backup; only the first
// pick after a view change builds that view's selector. Picks from several
// goroutines (run with -race) race only on atomics.
func TestPickerPickAllocatesNothing(t *testing.T) {
	for _, lb := range []string{"maglev", "hrw", "rr", "random", "p2c"} {
		t.Run(lb, func(t *testing.T) {
			front := netip.MustParseAddrPort("127.0.0.1:5300")
			var bs []lbBackend
			for i := range 5 {
				bs = append(bs, lbBackend{fmt.Sprint("b", i), netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 53), 100 * (i + 1), i == 4})
			}
			cfg, err := config.Parse([]byte(lbConfig(front, filepath.Join(t.TempDir(), "s"), lb, bs...)), "lb.toml")
			if err != nil {
				t.Fatal(err)
			}
			p, err := newClusterPicker(cfg, health.NewMonitor(health.Options{}))
			if err != nil {
				t.Fatal(err)
			}
			if err := p.setDraining(0, bs[1].addr, true); err != nil {
				t.Fatal(err)
			}
			var k uint64
			allocs := testing.AllocsPerRun(1000, func() {
				k += 0x9e3779b97f4a7c15
				if b, ok := p.Pick(0, k); !ok || b.Addr == bs[1].addr || b.Addr == bs[4].addr {
					t.Fatalf("picked %v, %v", b, ok)
				}
			})
			if allocs != 0 {
				t.Errorf("%v allocations per pick", allocs)
			}
			done := make(chan struct{})
			for g := range 4 {
				go func() {
					defer func() { done <- struct{}{} }()
					for i := range 2000 {
						if _, ok := p.Pick(core.ClusterID(0), uint64(g*2000+i)); !ok {
							t.Error("no backend")
							return
						}
					}
				}()
			}
			_ = p.setDraining(0, bs[2].addr, true) // a view change during the picks
			for range 4 {
				<-done
			}
		})
	}
}

// BenchmarkPickerPick measures the shards' Pick (cluster, view and selector
// loads, then the policy) over 10 backends, all usable.
func BenchmarkPickerPick(b *testing.B) {
	for _, lb := range []string{"maglev", "hrw", "rr", "random", "p2c"} {
		b.Run(lb, func(b *testing.B) {
			var bs []lbBackend
			for i := range 10 {
				bs = append(bs, lbBackend{fmt.Sprint("b", i), netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 53), 100, false})
			}
			cfg, err := config.Parse([]byte(lbConfig(netip.MustParseAddrPort("127.0.0.1:5300"), "s", lb, bs...)), "lb.toml")
			if err != nil {
				b.Fatal(err)
			}
			p, err := newClusterPicker(cfg, health.NewMonitor(health.Options{}))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			var k uint64
			for b.Loop() {
				k += 0x9e3779b97f4a7c15
				if _, ok := p.Pick(0, k); !ok {
					b.Fatal("no backend")
				}
			}
		})
	}
}
