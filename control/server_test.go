package control_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fastudp/fastudp/control"
	"github.com/fastudp/fastudp/control/controltest"
)

var (
	addr1 = netip.MustParseAddrPort("10.0.0.1:53")
	addr2 = netip.MustParseAddrPort("10.0.0.2:53")
	addr3 = netip.MustParseAddrPort("[2001:db8::3]:53")
)

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// newFake returns a controller with cluster dns (two backends, one down)
// and an empty cluster quic.
func newFake() *controltest.Controller {
	c := controltest.New("dns", "quic")
	n := int64(3)
	c.Put(control.Backend{Cluster: "dns", Name: "a", Address: addr1, Weight: 100, State: control.StateUp, ActiveFlows: &n,
		Health: &control.Health{Healthy: true, Usable: true, ProbeSuccesses: 7}})
	c.Put(control.Backend{Cluster: "dns", Name: "b", Address: addr2, Weight: 50, State: control.StateDown,
		Health: &control.Health{Reason: "3 probes failed: timeout", LastError: "timeout", ProbeFailures: 3}})
	return c
}

// startServer serves s until the test ends and checks Serve returns nil
// after Close.
func startServer(t *testing.T, s *control.Server) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve after Close: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
}

// serveUnix serves c on a socket in a temporary directory.
func serveUnix(t *testing.T, c control.Controller) (path string, cl *control.Client) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "ctl.sock")
	s, err := control.Listen(path, c, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	startServer(t, s)
	cl = control.NewClient(path)
	t.Cleanup(cl.Close)
	return path, cl
}

// unixHTTP is a plain HTTP client of the socket at path, for requests the
// typed client cannot make.
func unixHTTP(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
}

// doRaw sends a request and returns the status and the decoded JSON body.
func doRaw(t *testing.T, hc *http.Client, method, url, body string, hdr http.Header) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, url, ct)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s %s: body is not a JSON object: %v: %q", method, url, err, b)
	}
	return resp.StatusCode, m
}

func TestListen_socketMode(t *testing.T) {
	path, _ := serveUnix(t, newFake())
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want a socket with 0600", fi.Mode())
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Getuid() {
		t.Errorf("owner %d, want %d", st.Uid, os.Getuid())
	}
	// The temporary directory the socket was bound in is gone.
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want the socket only: %v", len(ents), ents)
	}
}

func TestListen_removesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // the file stays, as after a crash
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket missing: %v", err)
	}
	s, err := control.Listen(path, newFake(), quietLog())
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	startServer(t, s)
	if _, err := control.NewClient(path).Status(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestListen_refusesLiveSocket(t *testing.T) {
	path, cl := serveUnix(t, newFake())
	_, err := control.Listen(path, newFake(), quietLog())
	if err == nil || !strings.Contains(err.Error(), "another process is serving") {
		t.Fatalf("Listen over a live socket: %v", err)
	}
	// The live server is untouched.
	if _, err := cl.Status(context.Background()); err != nil {
		t.Fatalf("live server after a refused Listen: %v", err)
	}
}

func TestListen_refusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := control.Listen(path, newFake(), quietLog()); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
		t.Fatalf("file changed: %q, %v", b, err)
	}
}

func TestClose_removesSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := control.Listen(path, newFake(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestClose_keepsReplacedSocket checks Close removes only the file Listen
// created, not one another process put at the same path since.
func TestClose_keepsReplacedSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := control.Listen(path, newFake(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("replaced file removed: %v", err)
	}
}

func TestClient_routes(t *testing.T) {
	fake := newFake()
	fake.SetFlows([]control.Flow{
		{Client: netip.MustParseAddrPort("192.0.2.1:5000"), Listener: "dns", Cluster: "dns", Backend: addr1, Age: time.Second, DatagramsIn: 2, BytesIn: 80},
		{Client: netip.MustParseAddrPort("192.0.2.2:5000"), Listener: "dns", Cluster: "dns", Backend: addr1, Shard: 1},
		{Client: netip.MustParseAddrPort("192.0.2.3:5000"), Listener: "dns", Cluster: "dns"},
	})
	_, cl := serveUnix(t, fake)
	ctx := context.Background()

	st, err := cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != 1234 || st.Shards != 2 || len(st.Clusters) != 2 || st.Clusters[0] != (control.ClusterSummary{Name: "dns", Up: 1, Down: 1, Flows: 3}) {
		t.Errorf("status %+v", st)
	}

	bs, err := cl.Backends(ctx, "")
	if err != nil || len(bs) != 2 {
		t.Fatalf("backends: %v %+v", err, bs)
	}
	if b := bs[0]; b.Address != addr1 || b.Name != "a" || b.State != control.StateUp || b.ActiveFlows == nil || *b.ActiveFlows != 3 || b.Health == nil || b.Health.ProbeSuccesses != 7 {
		t.Errorf("backend 0: %+v", b)
	}
	if b := bs[1]; b.State != control.StateDown || b.ActiveFlows != nil || b.Health.Reason == "" {
		t.Errorf("backend 1: %+v", b)
	}

	if bs, err := cl.Backends(ctx, "quic"); err != nil || len(bs) != 0 || bs == nil {
		t.Errorf("backends of an empty cluster: %v %#v (want an empty, non-nil list)", err, bs)
	}

	ch, err := cl.AddBackend(ctx, "quic", addr3, 0)
	if err != nil || ch != (control.BackendChange{Action: control.ActionAdded, Cluster: "quic", Address: addr3, Weight: 100}) {
		t.Errorf("add with the default weight: %v %+v", err, ch)
	}
	if ch, err := cl.AddBackend(ctx, "quic", addr1, 7); err != nil || ch.Weight != 7 {
		t.Errorf("add with weight 7: %v %+v", err, ch)
	}
	if ch, err := cl.SetWeight(ctx, "quic", addr3, 10000); err != nil || ch.Action != control.ActionWeighted || ch.Weight != 10000 {
		t.Errorf("weight: %v %+v", err, ch)
	}
	if ch, err := cl.DrainBackend(ctx, "quic", addr3, true); err != nil || ch.Action != control.ActionDrained {
		t.Errorf("drain: %v %+v", err, ch)
	}
	bs, err = cl.Backends(ctx, "quic")
	if err != nil || len(bs) != 2 || bs[1].Address != addr3 || bs[1].State != control.StateDraining || bs[1].Weight != 10000 {
		t.Fatalf("after changes: %v %+v", err, bs)
	}
	if ch, err := cl.DrainBackend(ctx, "quic", addr3, false); err != nil || ch.Action != control.ActionUndrained {
		t.Errorf("undrain: %v %+v", err, ch)
	}
	if ch, err := cl.SetBackup(ctx, "quic", addr3, true); err != nil || ch.Action != control.ActionBackup || !ch.Backup {
		t.Errorf("backup on: %v %+v", err, ch)
	}
	if bs, err := cl.Backends(ctx, "quic"); err != nil || len(bs) != 2 || !bs[1].Backup || bs[0].Backup {
		t.Errorf("after backup on: %v %+v", err, bs)
	}
	if ch, err := cl.SetBackup(ctx, "quic", addr3, false); err != nil || ch.Action != control.ActionPrimary || ch.Backup {
		t.Errorf("backup off: %v %+v", err, ch)
	}
	if bs, err := cl.Backends(ctx, "quic"); err != nil || len(bs) != 2 || bs[1].Backup {
		t.Errorf("after backup off: %v %+v", err, bs)
	}
	if ch, err := cl.RemoveBackend(ctx, "quic", addr3); err != nil || ch.Action != control.ActionRemoved {
		t.Errorf("remove: %v %+v", err, ch)
	}
	ch, err = cl.AddBackendWith(ctx, "quic", addr3, control.AddOptions{ServerID: "\x0c\x03", Backup: true})
	if err != nil || ch != (control.BackendChange{Action: control.ActionAdded, Cluster: "quic", Address: addr3, Weight: 100, Backup: true, ServerID: "0c03"}) {
		t.Errorf("add with a server ID as a backup: %v %+v", err, ch)
	}
	if bs, err := cl.Backends(ctx, "quic"); err != nil || len(bs) != 2 || bs[1].ServerID != "0c03" || !bs[1].Backup {
		t.Errorf("after add with a server ID: %v %+v", err, bs)
	}
	if _, err := cl.RemoveBackend(ctx, "quic", addr3); err != nil {
		t.Errorf("remove: %v", err)
	}
	if bs, err := cl.Backends(ctx, "quic"); err != nil || len(bs) != 1 || bs[0].Address != addr1 {
		t.Errorf("after remove: %v %+v", err, bs)
	}

	fs, err := cl.Flows(ctx, 0)
	if err != nil || len(fs) != 3 || fs[0].Age != time.Second || fs[0].BytesIn != 80 || fs[1].Shard != 1 || fs[2].Backend.IsValid() {
		t.Errorf("flows: %v %+v", err, fs)
	}
	if fs, err := cl.Flows(ctx, 2); err != nil || len(fs) != 2 {
		t.Errorf("flows limit 2: %v %+v", err, fs)
	}

	want := control.ReloadResult{ConfigPath: "/etc/fastudp.toml", BackendsAdded: []control.BackendRef{{Cluster: "dns", Address: addr3}}, RestartRequired: []string{"listener.dns.address"}}
	fake.SetReload(want, nil)
	res, err := cl.Reload(ctx)
	if err != nil || res.ConfigPath != want.ConfigPath || len(res.BackendsAdded) != 1 || res.BackendsAdded[0] != want.BackendsAdded[0] ||
		len(res.RestartRequired) != 1 || res.ClustersAdded == nil || res.Unchanged() {
		t.Errorf("reload: %v %+v", err, res)
	}
}

func TestClient_errors(t *testing.T) {
	fake := newFake()
	_, cl := serveUnix(t, fake)
	ctx := context.Background()
	tests := []struct {
		name   string
		call   func() error
		status int
		is     error
		msg    string
	}{
		{"unknown cluster", func() error { _, err := cl.Backends(ctx, "nope"); return err }, 404, control.ErrNotFound, `cluster "nope"`},
		{"unknown backend", func() error { _, err := cl.RemoveBackend(ctx, "dns", addr3); return err }, 404, control.ErrNotFound, "backend [2001:db8::3]:53"},
		{"duplicate", func() error { _, err := cl.AddBackend(ctx, "dns", addr1, 0); return err }, 409, control.ErrConflict, "already in cluster"},
		{"weight too big", func() error { _, err := cl.SetWeight(ctx, "dns", addr1, 10001); return err }, 400, control.ErrInvalid, "out of range 1..10000"},
		{"limit too big", func() error { _, err := cl.Flows(ctx, 100001); return err }, 400, control.ErrInvalid, "limit"},
		{"zero address", func() error { _, err := cl.DrainBackend(ctx, "dns", netip.AddrPort{}, true); return err }, 400, control.ErrInvalid, "address is required"},
		{"backup of unknown backend", func() error { _, err := cl.SetBackup(ctx, "dns", addr3, true); return err }, 404, control.ErrNotFound, "backend [2001:db8::3]:53"},
		{"server ID too long", func() error {
			_, err := cl.AddBackendWith(ctx, "dns", addr3, control.AddOptions{ServerID: strings.Repeat("x", 16)})
			return err
		}, 400, control.ErrInvalid, "16 bytes, at most 15"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var ae *control.APIError
			if !errors.As(err, &ae) || ae.StatusCode != tt.status || !errors.Is(err, tt.is) || !strings.Contains(ae.Message, tt.msg) {
				t.Fatalf("got %v (%#v), want status %d, %v, message containing %q", err, ae, tt.status, tt.is, tt.msg)
			}
		})
	}

	t.Run("reload of an invalid file", func(t *testing.T) {
		fake.SetReload(control.ReloadResult{}, errors.Join(control.ErrInvalid, errors.New(`line 3: unknown key "lsten"`)))
		_, err := cl.Reload(ctx)
		if !errors.Is(err, control.ErrInvalid) || !strings.Contains(err.Error(), `unknown key "lsten"`) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("internal error", func(t *testing.T) {
		fake.SetFail(errors.New("shard 3 did not answer"))
		defer fake.SetFail(nil)
		_, err := cl.Flows(ctx, 10)
		var ae *control.APIError
		if !errors.As(err, &ae) || ae.StatusCode != 500 || !strings.Contains(ae.Message, "shard 3 did not answer") {
			t.Fatalf("got %v", err)
		}
		if errors.Is(err, control.ErrInvalid) || errors.Is(err, control.ErrNotFound) || errors.Is(err, control.ErrConflict) {
			t.Fatalf("a 500 matches a sentinel: %v", err)
		}
	})
	t.Run("no server", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "none.sock")
		_, err := control.NewClient(path).Status(ctx)
		var ae *control.APIError
		if err == nil || errors.As(err, &ae) || !strings.Contains(err.Error(), "cannot reach fastudp at "+path) {
			t.Fatalf("got %v", err)
		}
	})
}

// TestServer_errorStatuses sends malformed requests and checks each gets
// its status and a JSON {"error": ...} body.
func TestServer_errorStatuses(t *testing.T) {
	fake := newFake()
	path, _ := serveUnix(t, fake)
	hc := unixHTTP(path)
	const u = "http://fastudp"
	big := `{"cluster": "dns", "address": "10.0.0.9:53", "weight": 1, "pad": "` + strings.Repeat("x", control.MaxBodySize) + `"}`
	tests := []struct {
		name, method, path, body string
		status                   int
		msg                      string
	}{
		{"unknown route", "GET", "/v1/nope", "", 404, "no such route"},
		{"unknown version", "GET", "/v2/status", "", 404, "no such route"},
		{"wrong method", "PUT", "/v1/backends", "", 405, "not allowed"},
		{"wrong method on status", "POST", "/v1/status", "", 405, "allowed: GET"},
		{"unknown cluster", "GET", "/v1/backends?cluster=nope", "", 404, "nope"},
		{"unknown query parameter", "GET", "/v1/backends?clustr=dns", "", 400, "unknown query parameter"},
		{"repeated query parameter", "GET", "/v1/backends?cluster=dns&cluster=quic", "", 400, "2 times"},
		{"status with a query", "GET", "/v1/status?x=1", "", 400, "unknown query parameter"},
		{"body on a GET", "GET", "/v1/status", "{}", 400, "no request body"},
		{"empty body", "POST", "/v1/backends", "", 400, "empty request body"},
		{"unknown field", "POST", "/v1/backends", `{"cluster": "dns", "address": "10.0.0.9:53", "wieght": 5}`, 400, `unknown field "wieght"`},
		{"trailing data", "POST", "/v1/backends", `{"cluster": "dns", "address": "10.0.0.9:53"} {}`, 400, "data after"},
		{"not an object", "POST", "/v1/backends", `[1]`, 400, "request body"},
		{"bad address", "POST", "/v1/backends", `{"cluster": "dns", "address": "dns.example:53"}`, 400, "address"},
		{"address without port", "POST", "/v1/backends", `{"cluster": "dns", "address": "10.0.0.9"}`, 400, "address"},
		{"port 0", "POST", "/v1/backends", `{"cluster": "dns", "address": "10.0.0.9:0"}`, 400, "port 0"},
		{"missing cluster", "POST", "/v1/backends", `{"address": "10.0.0.9:53"}`, 400, "cluster is required"},
		{"long cluster", "POST", "/v1/backends", `{"cluster": "` + strings.Repeat("c", 65) + `", "address": "10.0.0.9:53"}`, 400, "longer than 64"},
		{"weight 0", "POST", "/v1/backends", `{"cluster": "dns", "address": "10.0.0.9:53", "weight": 0}`, 400, "out of range"},
		{"weight as string", "POST", "/v1/backends", `{"cluster": "dns", "address": "10.0.0.9:53", "weight": "5"}`, 400, "request body"},
		{"add to unknown cluster", "POST", "/v1/backends", `{"cluster": "nope", "address": "10.0.0.9:53"}`, 404, `cluster "nope"`},
		{"add existing", "POST", "/v1/backends", `{"cluster": "dns", "address": "10.0.0.1:53"}`, 409, "already"},
		{"oversized body", "POST", "/v1/backends", big, 413, "larger than 65536"},
		{"remove without address", "DELETE", "/v1/backends?cluster=dns", "", 400, "address is required"},
		{"remove unknown", "DELETE", "/v1/backends?cluster=dns&address=10.0.0.9:53", "", 404, "10.0.0.9:53"},
		{"remove with body", "DELETE", "/v1/backends?cluster=dns&address=10.0.0.1:53", "{}", 400, "no request body"},
		{"drain without drain", "POST", "/v1/backends/drain", `{"cluster": "dns", "address": "10.0.0.1:53"}`, 400, "drain is required"},
		{"drain unknown", "POST", "/v1/backends/drain", `{"cluster": "dns", "address": "10.0.0.9:53", "drain": true}`, 404, "10.0.0.9:53"},
		{"drain with weight", "POST", "/v1/backends/drain", `{"cluster": "dns", "address": "10.0.0.1:53", "drain": true, "weight": 3}`, 400, "unknown field"},
		{"weight missing", "POST", "/v1/backends/weight", `{"cluster": "dns", "address": "10.0.0.1:53"}`, 400, "weight is required"},
		{"weight 10001", "POST", "/v1/backends/weight", `{"cluster": "dns", "address": "10.0.0.1:53", "weight": 10001}`, 400, "out of range"},
		{"weight unknown cluster", "POST", "/v1/backends/weight", `{"cluster": "x", "address": "10.0.0.1:53", "weight": 1}`, 404, `cluster "x"`},
		{"backup missing", "POST", "/v1/backends/backup", `{"cluster": "dns", "address": "10.0.0.1:53"}`, 400, "backup is required"},
		{"backup not a bool", "POST", "/v1/backends/backup", `{"cluster": "dns", "address": "10.0.0.1:53", "backup": "on"}`, 400, "request body"},
		{"backup unknown", "POST", "/v1/backends/backup", `{"cluster": "dns", "address": "10.0.0.9:53", "backup": true}`, 404, "10.0.0.9:53"},
		{"add with a bad server ID", "POST", "/v1/backends", `{"cluster": "dns", "address": "10.0.0.9:53", "server_id": "0x"}`, 400, "want hexadecimal"},
		{"limit 0", "GET", "/v1/flows?limit=0", "", 400, "limit"},
		{"limit 100001", "GET", "/v1/flows?limit=100001", "", 400, "1..100000"},
		{"limit not a number", "GET", "/v1/flows?limit=ten", "", 400, "limit"},
		{"bad query", "GET", "/v1/flows?limit=%zz", "", 400, "query"},
		{"reload with arguments", "POST", "/v1/reload", `{"force": true}`, 400, "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, m := doRaw(t, hc, tt.method, u+tt.path, tt.body, nil)
			msg, _ := m["error"].(string)
			if status != tt.status || !strings.Contains(msg, tt.msg) || len(m) != 1 {
				t.Fatalf("got %d %v, want %d with an error containing %q", status, m, tt.status, tt.msg)
			}
		})
	}
	t.Run("controller failure", func(t *testing.T) {
		fake.SetFail(errors.New("boom"))
		defer fake.SetFail(nil)
		for _, r := range []struct{ method, path, body string }{
			{"GET", "/v1/backends", ""},
			{"POST", "/v1/backends", `{"cluster": "dns", "address": "10.0.0.9:53"}`},
			{"DELETE", "/v1/backends?cluster=dns&address=10.0.0.1:53", ""},
			{"POST", "/v1/backends/drain", `{"cluster": "dns", "address": "10.0.0.1:53", "drain": false}`},
			{"POST", "/v1/backends/weight", `{"cluster": "dns", "address": "10.0.0.1:53", "weight": 1}`},
			{"POST", "/v1/backends/backup", `{"cluster": "dns", "address": "10.0.0.1:53", "backup": true}`},
			{"GET", "/v1/flows", ""},
			{"POST", "/v1/reload", ""},
		} {
			status, m := doRaw(t, hc, r.method, u+r.path, r.body, nil)
			if msg, _ := m["error"].(string); status != 500 || !strings.Contains(msg, "boom") {
				t.Errorf("%s %s: got %d %v, want 500 with the controller's message", r.method, r.path, status, m)
			}
		}
	})
	t.Run("success bodies", func(t *testing.T) {
		for _, r := range []struct{ method, path, body, key string }{
			{"GET", "/v1/status", "", "pid"},
			{"GET", "/v1/backends?cluster=dns", "", "backends"},
			{"GET", "/v1/flows?limit=100000", "", "flows"},
			{"POST", "/v1/reload", "{}", "restart_required"},
			{"POST", "/v1/reload", "", "backends_added"},
		} {
			status, m := doRaw(t, hc, r.method, u+r.path, r.body, nil)
			if _, ok := m[r.key]; status != 200 || !ok {
				t.Errorf("%s %s: got %d %v, want 200 with %q", r.method, r.path, status, m, r.key)
			}
		}
	})
}

func TestListenTCP_token(t *testing.T) {
	s, err := control.ListenTCP("127.0.0.1:0", "s3cret-token", newFake(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	startServer(t, s)
	addr := s.Addr().String()
	url := "http://" + addr + "/v1/status"
	hc := &http.Client{}
	tests := []struct {
		name   string
		auth   string
		status int
	}{
		{"missing", "", 401},
		{"wrong", "Bearer s3cret-tokem", 401},
		{"prefix", "Bearer s3cret", 401},
		{"longer", "Bearer s3cret-token2", 401},
		{"basic scheme", "Basic s3cret-token", 401},
		{"right", "Bearer s3cret-token", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr http.Header
			if tt.auth != "" {
				hdr = http.Header{"Authorization": {tt.auth}}
			}
			status, m := doRaw(t, hc, "GET", url, "", hdr)
			if status != tt.status {
				t.Fatalf("got %d %v, want %d", status, m, tt.status)
			}
			if status == 401 && m["error"] == nil {
				t.Fatalf("401 without an error message: %v", m)
			}
		})
	}
	// An unknown route is 401 too: nothing is revealed before the token.
	if status, _ := doRaw(t, hc, "GET", "http://"+addr+"/v1/nope", "", nil); status != 401 {
		t.Errorf("unknown route without a token: %d, want 401", status)
	}
	if _, err := control.NewTCPClient(addr, "s3cret-token").Status(context.Background()); err != nil {
		t.Errorf("TCP client with the token: %v", err)
	}
	_, err = control.NewTCPClient(addr, "nope").Backends(context.Background(), "")
	var ae *control.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 401 {
		t.Errorf("TCP client with a wrong token: %v", err)
	}
}

func TestListenTCP_refuses(t *testing.T) {
	tests := []struct{ name, addr, token, msg string }{
		{"any address", "0.0.0.0:0", "t", "not a loopback"},
		{"any IPv6", "[::]:0", "t", "not a loopback"},
		{"public address", "192.0.2.1:9901", "t", "not a loopback"},
		{"host name", "localhost:9901", "t", "loopback IP:PORT"},
		{"no port", "127.0.0.1", "t", "loopback IP:PORT"},
		{"empty token", "127.0.0.1:0", "", "non-empty token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := control.ListenTCP(tt.addr, tt.token, newFake(), quietLog())
			if err == nil {
				s.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %q, want it to contain %q", err, tt.msg)
			}
		})
	}
}

// TestServer_concurrent drives every route from many goroutines, for the
// race detector.
func TestServer_concurrent(t *testing.T) {
	_, cl := serveUnix(t, newFake())
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), 53)
			for range 20 {
				if _, err := cl.AddBackend(ctx, "quic", a, i+1); err != nil {
					t.Error(err)
					return
				}
				_, _ = cl.Status(ctx)
				_, _ = cl.Backends(ctx, "")
				_, _ = cl.Flows(ctx, 5)
				if _, err := cl.DrainBackend(ctx, "quic", a, true); err != nil {
					t.Error(err)
				}
				if _, err := cl.SetWeight(ctx, "quic", a, 2); err != nil {
					t.Error(err)
				}
				if _, err := cl.RemoveBackend(ctx, "quic", a); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
}

func TestShutdown_removesSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := control.Listen(path, newFake(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	if _, err := control.NewClient(path).Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after Shutdown: %v", err)
	}
}

func TestListen_missingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no", "ctl.sock")
	if _, err := control.Listen(path, newFake(), quietLog()); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Listen in a missing directory: %v", err)
	}
}
