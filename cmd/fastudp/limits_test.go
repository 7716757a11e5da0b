package main

import (
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastudp/fastudp/config"
)

// fakeProc serves /proc files from a map; a missing one is fs.ErrNotExist.
func fakeProc(files map[string]string) func(string) ([]byte, error) {
	return func(p string) ([]byte, error) {
		if v, ok := files[p]; ok {
			return []byte(v), nil
		}
		return nil, fs.ErrNotExist
	}
}

func limitsConfig(t *testing.T, flags ...string) *config.Config {
	t.Helper()
	var f config.Flags
	fset := flag.NewFlagSet("test", flag.ContinueOnError)
	f.Register(fset)
	if err := fset.Parse(flags); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.Config()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestReadHostLimits(t *testing.T) {
	h := readHostLimits(fakeProc(map[string]string{
		"/proc/sys/net/core/rmem_max":            "212992\n",
		"/proc/sys/net/core/wmem_max":            "4194304\n",
		"/proc/sys/net/ipv4/ip_local_port_range": "32768\t60999\n",
		"/proc/self/status":                      "Name:\tfastudp\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\n",
	}), 1024, 4096)
	want := hostLimits{NoFile: 1024, NoFileMax: 4096, RmemMax: 212992, WmemMax: 4194304, PortLow: 32768, PortHigh: 60999, NetAdmin: true}
	if h != want {
		t.Errorf("got %+v\nwant %+v", h, want)
	}
	h = readHostLimits(fakeProc(map[string]string{
		"/proc/sys/net/ipv4/ip_local_port_range": "garbage",
		"/proc/self/status":                      "CapEff:\t0000000000000400\n", // CAP_NET_BIND_SERVICE only
	}), 0, 0)
	if want := (hostLimits{RmemMax: -1, WmemMax: -1}); h != want {
		t.Errorf("unreadable values: got %+v, want %+v (unknown)", h, want)
	}
}

func TestCheckLimits(t *testing.T) {
	fine := hostLimits{NoFile: 1 << 20, NoFileMax: 1 << 20, RmemMax: 8 << 20, WmemMax: 8 << 20, PortLow: 1024, PortHigh: 65535}
	base := []string{"--listen", "127.0.0.1:5353", "--backend", "127.0.0.1:53", "--shards", "2", "--max-flows", "50000"}
	tests := []struct {
		name  string
		flags []string
		edit  func(*config.Config, *hostLimits)
		want  []string // substrings of found and needed, one pair per warning
	}{
		{name: "all fine", flags: base},
		{name: "nofile", flags: base, edit: func(_ *config.Config, h *hostLimits) { h.NoFile, h.NoFileMax = 1024, 1024 },
			// 50000 flows + 2 shards × (epoll, eventfd, 1 listener) + 256
			want: []string{"1024 (hard limit 1024)", "50262"}},
		{name: "rmem_max", flags: base, edit: func(_ *config.Config, h *hostLimits) { h.RmemMax = 212992 },
			want: []string{"212992", "4194304"}},
		{name: "rmem_max with CAP_NET_ADMIN", flags: base, edit: func(_ *config.Config, h *hostLimits) { h.RmemMax, h.NetAdmin = 212992, true }},
		{name: "wmem_max", flags: base, edit: func(c *config.Config, h *hostLimits) { c.SocketSendBuffer = 16 << 20 },
			want: []string{"8388608", "16777216"}},
		{name: "port range", flags: base, edit: func(_ *config.Config, h *hostLimits) { h.PortLow, h.PortHigh = 32768, 60999 },
			want: []string{"28232 ports (32768-60999) for 1 source address(es)", "50000 ports per source address"}},
		{name: "port range, max_flows above one address's ports", flags: base, edit: func(c *config.Config, h *hostLimits) {
			c.MaxFlows = 200000
		}, want: []string{"64512 ports (1024-65535)", "200000 ports per source address"}},
		{name: "port range, two source addresses", flags: base, edit: func(c *config.Config, h *hostLimits) {
			h.PortLow, h.PortHigh = 32768, 60999
			c.UpstreamSources = []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}
		}},
		{name: "dns mode holds no flows", flags: append(base, "--mode", "dns"), edit: func(_ *config.Config, h *hostLimits) {
			h.NoFile, h.PortLow, h.PortHigh = 1024, 40000, 40099
		}},
		{name: "unknown values are not checked", flags: base, edit: func(_ *config.Config, h *hostLimits) {
			*h = hostLimits{RmemMax: -1, WmemMax: -1}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := limitsConfig(t, tt.flags...)
			h := fine
			if tt.edit != nil {
				tt.edit(cfg, &h)
			}
			got := checkLimits(cfg, h)
			if len(got) != len(tt.want)/2 {
				t.Fatalf("%d warnings, want %d: %+v", len(got), len(tt.want)/2, got)
			}
			for i, w := range got {
				t.Logf("%s found=%q needed=%q fix=%q", w.Msg, w.Found, w.Needed, w.Fix)
				if !strings.Contains(w.Found, tt.want[2*i]) || !strings.Contains(w.Needed, tt.want[2*i+1]) || w.Fix == "" || w.Msg == "" {
					t.Errorf("warning %+v: want found %q, needed %q and a fix", w, tt.want[2*i], tt.want[2*i+1])
				}
			}
		})
	}
}

// requireBin skips (or fails under CI=true) when a command is missing.
func requireBin(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("needs %s: %v", name, err)
		}
		t.Skipf("needs %s: %v", name, err)
	}
}

// TestRunUnderLowNoFileLimit runs the binary under a hard RLIMIT_NOFILE of
// 128 (prlimit): it warns at start with the value found and needed, and
// when new flows run it out of descriptors it sheds them, counts
// fastudp_resource_errors_total{kind="fd_limit"}, logs it, and the flow
// that was already live keeps working.
func TestRunUnderLowNoFileLimit(t *testing.T) {
	requireBin(t, "prlimit")
	backend := namedEcho(t, "echo")
	front := freeUDPPort(t)
	metrics := freeUDPPort(t)
	cmd := exec.Command("prlimit", "--nofile=128:128", fastudpBin, "run", "--listen", front, "--backend", backend.String(),
		"--shards", "1", "--max-flows", "1000", "--metrics", metrics, "--log-level", "warn")
	stderr := startKilledAtEnd(t, cmd)
	live := dialUDP(t, front)
	roundTrip(t, live, "live-before", stderr)
	if s := stderr.String(); !strings.Contains(s, "open-file limit (RLIMIT_NOFILE) below") ||
		!strings.Contains(s, `found="128 (hard limit 128)"`) || !strings.Contains(s, "needed=1259") {
		t.Fatalf("no start-up warning about the open-file limit:\n%s", s)
	}
	var clients []*net.UDPConn
	for range 150 {
		clients = append(clients, dialUDP(t, front))
	}
	for i, c := range clients {
		_, _ = c.Write([]byte("x"))
		if i%25 == 0 {
			roundTrip(t, live, fmt.Sprint("live-", i), stderr)
		}
	}
	url := "http://" + metrics + "/metrics"
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, ok := metricLabeled(t, url, "fastudp_resource_errors_total", `kind="fd_limit"`)
		if ok && v > 0 {
			t.Logf("fd_limit events: %v", v)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fastudp_resource_errors_total{kind=\"fd_limit\"} = %v (present %v)", v, ok)
		}
		time.Sleep(50 * time.Millisecond)
	}
	roundTrip(t, live, "live-after", stderr)
	if n := strings.Count(stderr.String(), "kind=fd_limit"); n != 1 {
		t.Errorf("%d fd_limit log lines, want 1 (rate-limited)", n)
	}
}

func dialUDP(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

// roundTrip sends p until "echo:"+p comes back (the proxy may still be
// starting).
func roundTrip(t *testing.T, c *net.UDPConn, p string, stderr fmt.Stringer) {
	t.Helper()
	buf := make([]byte, 256)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		_, _ = c.Write([]byte(p))
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		for {
			n, err := c.Read(buf)
			if err != nil {
				break
			}
			if string(buf[:n]) == "echo:"+p {
				return
			}
		}
	}
	t.Fatalf("no reply to %q through the proxy; stderr:\n%s", p, stderr)
}

// TestMetricsListenerServesNoControl checks that the metrics listener
// answers /metrics only: the control API's paths (served on the unix
// socket) are 404 there, whatever the method, and pprof is served only
// with FASTUDP_PPROF=1.
func TestMetricsListenerServesNoControl(t *testing.T) {
	backend := namedEcho(t, "echo")
	for _, pprof := range []bool{false, true} {
		t.Run(fmt.Sprint("pprof=", pprof), func(t *testing.T) {
			front := freeUDPPort(t)
			metrics := freeUDPPort(t)
			sock := filepath.Join(t.TempDir(), "control.sock")
			cmd := exec.Command(fastudpBin, "run", "--listen", front, "--backend", backend.String(), "--shards", "1",
				"--metrics", metrics, "--control", sock, "--log-level", "warn")
			cmd.Env = os.Environ()
			if pprof {
				cmd.Env = append(cmd.Env, "FASTUDP_PPROF=1")
			}
			stderr := startKilledAtEnd(t, cmd)
			roundTrip(t, dialUDP(t, front), "up", stderr)
			if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("control socket: %v, mode %v; want 0600", err, st.Mode().Perm())
			}
			client := http.Client{Timeout: 5 * time.Second}
			get := func(method, path string) int {
				t.Helper()
				req, err := http.NewRequest(method, "http://"+metrics+path, strings.NewReader("{}"))
				if err != nil {
					t.Fatal(err)
				}
				resp, err := client.Do(req)
				if err != nil {
					t.Fatalf("%s %s: %v", method, path, err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}
			if code := get("GET", "/metrics"); code != http.StatusOK {
				t.Fatalf("GET /metrics: %d", code)
			}
			for _, r := range [][2]string{
				{"GET", "/v1/status"}, {"GET", "/v1/backends"}, {"POST", "/v1/backends"}, {"DELETE", "/v1/backends"},
				{"POST", "/v1/backends/drain"}, {"POST", "/v1/backends/weight"}, {"POST", "/v1/backends/backup"}, {"GET", "/v1/flows"}, {"POST", "/v1/reload"}, {"GET", "/"},
			} {
				if code := get(r[0], r[1]); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
					t.Errorf("%s %s on the metrics listener: %d, want 404", r[0], r[1], code)
				}
			}
			want := http.StatusNotFound
			if pprof {
				want = http.StatusOK
			}
			if code := get("GET", "/debug/pprof/"); code != want {
				t.Errorf("GET /debug/pprof/ with FASTUDP_PPROF=%v: %d, want %d", pprof, code, want)
			}
			// The control API is where it belongs: on the unix socket.
			hc := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
				Dial: func(string, string) (net.Conn, error) { return net.Dial("unix", sock) },
			}}
			resp, err := hc.Get("http://fastudp/v1/status")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("GET /v1/status on the control socket: %d", resp.StatusCode)
			}
		})
	}
}
