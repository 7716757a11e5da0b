package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastudp/fastudp/control"
)

// TestPlacementAgrees runs four processes and compares the placement
// fingerprints `ctl status` reports: the same seed, lb, affinity and
// backends agree whatever the backends' order and names in the file; another
// seed or affinity does not; a backend added with `ctl backend add` changes
// the placement, and adding it to the second process too makes them agree
// again.
func TestPlacementAgrees(t *testing.T) {
	backends := []netip.AddrPort{namedEcho(t, "a"), namedEcho(t, "b"), namedEcho(t, "c")}
	dir := t.TempDir()
	start := func(name string, seed uint64, affinity string, order []int) *control.Client {
		t.Helper()
		front := netip.MustParseAddrPort(freeUDPPort(t))
		sock := filepath.Join(dir, name+".sock")
		var b strings.Builder
		fmt.Fprintf(&b, "shards = 1\nseed = %d\ncontrol = %q\ngrace_period = \"0s\"\n", seed, sock)
		fmt.Fprintf(&b, "[[listener]]\nname = \"l\"\naddress = %q\ncluster = \"c\"\n", front.String())
		fmt.Fprintf(&b, "[[cluster]]\nname = \"c\"\nlb = \"maglev\"\naffinity = %q\n", affinity)
		for _, i := range order {
			fmt.Fprintf(&b, "  [[cluster.backend]]\n  name = \"%s-%d\"\n  address = %q\n", name, i, backends[i].String())
		}
		file := filepath.Join(dir, name+".toml")
		if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		_, stderr := startFromFile(t, file)
		waitEcho(t, front, stderr)
		ctl := control.NewClient(sock)
		t.Cleanup(ctl.Close)
		return ctl
	}
	placement := func(ctl *control.Client) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		st, err := ctl.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Clusters) != 1 || len(st.Clusters[0].Placement) != 16 {
			t.Fatalf("status clusters %+v: want one with a 16-digit placement", st.Clusters)
		}
		return st.Clusters[0].Placement
	}
	one := start("one", 42, "ip", []int{0, 1, 2})
	two := start("two", 42, "ip", []int{2, 0, 1})
	seed := start("seed", 43, "ip", []int{0, 1, 2})
	port := start("port", 42, "ip-port", []int{0, 1, 2})
	p1 := placement(one)
	if p2 := placement(two); p2 != p1 {
		t.Errorf("same seed and backends in another order: placement %s, want %s", p2, p1)
	}
	if p := placement(seed); p == p1 {
		t.Errorf("another seed: placement %s, like the first", p)
	}
	if p := placement(port); p == p1 {
		t.Errorf("another affinity: placement %s, like the first", p)
	}

	extra := namedEcho(t, "d")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := one.AddBackend(ctx, "c", extra, 100); err != nil {
		t.Fatal(err)
	}
	added := placement(one)
	if added == p1 || placement(two) != p1 {
		t.Fatalf("after adding a backend to the first: placements %s and %s (was %s)", added, placement(two), p1)
	}
	if _, err := two.AddBackend(ctx, "c", extra, 100); err != nil {
		t.Fatal(err)
	}
	if p := placement(two); p != added {
		t.Errorf("both with the added backend: placements %s and %s differ", added, p)
	}
	t.Logf("placements: %s, with a fourth backend %s", p1, added)
}
