package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// unitFile is the systemd unit shipped in deploy/.
const unitFile = "../../deploy/fastudp.service"

// unitSettings returns the [Service] settings of the unit (last one wins).
func unitSettings(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = line
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && section == "[Service]" {
			out[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestUnitFile checks what the unit promises: an unprivileged (dynamic)
// user, only CAP_NET_BIND_SERVICE and CAP_BPF, no privilege gain, and an
// open-file limit above what the default configuration needs.
func TestUnitFile(t *testing.T) {
	s := unitSettings(t)
	want := []string{"CAP_BPF", "CAP_NET_BIND_SERVICE"}
	for _, k := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
		got := strings.Fields(s[k])
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s = %q, want exactly %v", k, s[k], want)
		}
	}
	for k, v := range map[string]string{"DynamicUser": "yes", "NoNewPrivileges": "yes"} {
		if s[k] != v {
			t.Errorf("%s = %q, want %q", k, s[k], v)
		}
	}
	if s["User"] == "root" {
		t.Error("the unit runs as root")
	}
	limit, err := strconv.ParseUint(s["LimitNOFILE"], 10, 64)
	if err != nil {
		t.Fatalf("LimitNOFILE = %q: %v", s["LimitNOFILE"], err)
	}
	cfg := limitsConfig(t, "--listen", "127.0.0.1:53", "--backend", "127.0.0.1:5353", "--shards", "64")
	if need := neededFDs(cfg); limit < need {
		t.Errorf("LimitNOFILE=%d below the %d descriptors the default max_flows needs with 64 shards", limit, need)
	}
}

// TestUnitCapabilitiesSuffice runs the binary as user nobody with exactly
// the unit's ambient capabilities (setpriv): it binds a port below 1024,
// loads the eBPF steering program (no fallback), and forwards.
func TestUnitCapabilitiesSuffice(t *testing.T) {
	requireRoot(t)
	requireBin(t, "setpriv")
	s := unitSettings(t)
	var caps []string
	for _, c := range strings.Fields(s["AmbientCapabilities"]) {
		caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	// nobody must be able to execute the binary: copy it out of the
	// test's private temporary directory.
	dir, err := os.MkdirTemp("", "fastudp-unit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "fastudp")
	if out, err := exec.Command("cp", fastudpBin, bin).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	backend := namedEcho(t, "echo")
	front := ""
	for p := 1023; p > 600 && front == ""; p-- {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p})
		if err == nil {
			front = c.LocalAddr().String()
			c.Close()
		}
	}
	if front == "" {
		t.Fatal("no free UDP port below 1024")
	}
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps="+strings.Join(caps, ","), "--ambient-caps="+strings.Join(caps, ","),
		bin, "run", "--listen", front, "--backend", backend.String(), "--shards", "2", "--steering", "hash")
	stderr := startKilledAtEnd(t, cmd)
	roundTrip(t, dialUDP(t, front), "unprivileged", stderr)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(stderr.String(), "active=hash") {
		if time.Now().After(deadline) {
			t.Fatalf("steering did not start with the unit's capabilities %v:\n%s", caps, stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if strings.Contains(stderr.String(), "no permission") {
		t.Errorf("a permission warning with the unit's capabilities:\n%s", stderr)
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err == nil && !strings.Contains(string(st), "Uid:\t65534") {
		t.Errorf("not running as nobody:\n%s", st)
	}
}

// TestSysctlFile checks that the kernel settings shipped in deploy/ pass
// the start-up checks for the default configuration.
func TestSysctlFile(t *testing.T) {
	b, err := os.ReadFile("../../deploy/fastudp-sysctl.conf")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for line := range strings.SplitSeq(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("bad line %q", line)
		}
		files["/proc/sys/"+strings.ReplaceAll(strings.TrimSpace(k), ".", "/")] = strings.TrimSpace(v)
	}
	h := readHostLimits(fakeProc(files), 1<<20, 1<<20)
	if h.RmemMax < 0 || h.WmemMax < 0 || h.PortHigh == 0 {
		t.Fatalf("the file lacks a checked setting: %+v", h)
	}
	// The default max_flows (65536) is above the ports of one address
	// even with the widest range: that takes upstream_sources.
	cfg := limitsConfig(t, "--listen", "127.0.0.1:53", "--backend", "127.0.0.1:5353", "--max-flows", "60000")
	if w := checkLimits(cfg, h); len(w) > 0 {
		t.Errorf("the shipped settings do not pass the start-up checks: %+v", w)
	}
}
