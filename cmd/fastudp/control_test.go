package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fastudp/fastudp/control"
)

// TestControlUnderLoad drives a running proxy through its control socket
// under steady load over three backends: remove one, drain another, add the
// first back, change a weight, reload an edited file. Live flows on
// untouched backends lose nothing and keep their backend; new flows follow
// each change.
func TestControlUnderLoad(t *testing.T) {
	backends := map[string]netip.AddrPort{"a": namedEcho(t, "a"), "b": namedEcho(t, "b"), "c": namedEcho(t, "c")}
	front := netip.MustParseAddrPort(freeUDPPort(t))
	dir := t.TempDir()
	sock := filepath.Join(dir, "control.sock")
	file := filepath.Join(dir, "fastudp.toml")
	conf := func(order ...string) string {
		return fmt.Sprintf("control = %q\n", sock) + reloadConfig(front, backends, nil, order)
	}
	if err := os.WriteFile(file, []byte(conf("a", "b", "c")), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd, stderr := startFromFile(t, file)
	waitEcho(t, front, stderr)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatalf("control socket: %v", err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Fatalf("control socket mode %o, want 600", mode)
	}
	ctl := control.NewClient(sock)
	defer ctl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := ctl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != cmd.Process.Pid || st.Shards != 2 || len(st.Clusters) != 1 || st.Clusters[0].Up != 3 {
		t.Fatalf("status %+v", st)
	}

	flows, stop := startSteadyFlows(t, front, 30, 20*time.Millisecond)
	time.Sleep(time.Second)
	sample := func(n int) map[string]int {
		t.Helper()
		return sampleNewFlows(t, front, n)
	}
	must := func(_ control.BackendChange, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Remove c: no new flow reaches it.
	must(ctl.RemoveBackend(ctx, "c", backends["c"]))
	if got := sample(60); got["c"] != 0 || got["a"] == 0 || got["b"] == 0 {
		t.Fatalf("new flows after removing c: %v", got)
	}
	// Drain b: new flows only on a; b's live flows go on.
	must(ctl.DrainBackend(ctx, "c", backends["b"], true))
	bs, err := ctl.Backends(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 2 || bs[1].State != control.StateDraining && bs[0].State != control.StateDraining {
		t.Fatalf("backends after drain: %+v", bs)
	}
	if got := sample(40); got["a"] != 40 {
		t.Fatalf("new flows while b drains: %v", got)
	}
	must(ctl.DrainBackend(ctx, "c", backends["b"], false))
	// c back, a heavier.
	must(ctl.AddBackend(ctx, "c", backends["c"], 100))
	must(ctl.SetWeight(ctx, "c", backends["a"], 300))
	if got := sample(90); got["c"] == 0 || got["a"] <= got["b"] {
		t.Fatalf("new flows after re-adding c and weighting a 300: %v", got)
	}
	// Errors: unknown cluster, unknown backend, duplicate.
	if _, err := ctl.RemoveBackend(ctx, "nope", backends["a"]); err == nil {
		t.Fatal("removing from an unknown cluster succeeded")
	}
	if _, err := ctl.AddBackend(ctx, "c", backends["a"], 100); err == nil {
		t.Fatal("adding a duplicate succeeded")
	}
	// Flows lists the steady flows with their backends.
	fl, err := ctl.Flows(ctx, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(fl) < 30 {
		t.Fatalf("%d flows listed, want at least 30", len(fl))
	}
	for _, f := range fl {
		if f.Cluster != "c" || f.Listener != "l" || !f.Backend.IsValid() {
			t.Fatalf("flow %+v", f)
		}
	}
	// Reload a file that drops c again.
	if err := os.WriteFile(file, []byte(conf("a", "b")), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := ctl.Reload(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.BackendsRemoved) != 1 || res.BackendsRemoved[0].Address != backends["c"] {
		t.Fatalf("reload result %+v", res)
	}
	if got := sample(40); got["c"] != 0 {
		t.Fatalf("new flows after reloading without c: %v", got)
	}
	// An invalid file: an error, nothing changes.
	if err := os.WriteFile(file, []byte("listener = 3"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Reload(ctx); err == nil {
		t.Fatal("reloading an invalid file succeeded")
	}
	time.Sleep(500 * time.Millisecond)
	stop()
	for i, f := range flows {
		if len(f.backends) != 1 || f.answered != f.sent {
			t.Errorf("flow %d: backends %v, %d sent, %d answered", i, f.backends, f.sent, f.answered)
		}
	}
	if _, err = ctl.RemoveBackend(ctx, "c", netip.MustParseAddrPort("192.0.2.1:53")); !errors.Is(err, control.ErrNotFound) {
		t.Fatalf("removing an unknown backend: %v, want ErrNotFound", err)
	}
}

// TestControlTCPToken: control_tcp serves the API on loopback to requests
// with the token of control_token_file, and refuses the rest.
func TestControlTCPToken(t *testing.T) {
	backends := map[string]netip.AddrPort{"a": namedEcho(t, "a")}
	front := netip.MustParseAddrPort(freeUDPPort(t))
	ctlAddr := freeUDPPort(t) // a port number free for UDP is most likely free for TCP too
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "fastudp.toml")
	conf := fmt.Sprintf("control_tcp = %q\ncontrol_token_file = %q\n", ctlAddr, tokenFile) + reloadConfig(front, backends, nil, []string{"a"})
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr := startFromFile(t, file)
	waitEcho(t, front, stderr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	good := control.NewTCPClient(ctlAddr, "s3cret")
	defer good.Close()
	if bs, err := good.Backends(ctx, ""); err != nil || len(bs) != 1 || bs[0].Address != backends["a"] {
		t.Fatalf("with the token: %v %+v", err, bs)
	}
	bad := control.NewTCPClient(ctlAddr, "guess")
	defer bad.Close()
	if _, err := bad.Status(ctx); err == nil {
		t.Fatal("a wrong token was accepted")
	}
	var apiErr *control.APIError
	if _, err := bad.Status(ctx); !errors.As(err, &apiErr) || apiErr.StatusCode != 401 {
		t.Fatalf("wrong token: %v, want 401", err)
	}
}
