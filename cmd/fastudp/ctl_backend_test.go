package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastudp/fastudp/control"
	"github.com/fastudp/fastudp/quiclb"
)

// TestCtlServerIDAndBackup drives a running fastudp (cluster q with
// affinity "quic", backends a and b with server IDs 0a01 and 0b02, and a
// cluster p without quic_lb) through `fastudp ctl`: a backend added with
// --server-id gets the short-header datagrams whose connection ID carries
// its ID (counted as routed by server_id); bad server IDs are refused with
// the reason; a backend made a backup, or added as one, takes no new flow
// while a primary is up, and takes them again once made a primary.
func TestCtlServerIDAndBackup(t *testing.T) {
	be := map[string]netip.AddrPort{}
	for _, n := range []string{"a", "b", "c", "d", "p"} {
		be[n] = namedEcho(t, n)
	}
	front := netip.MustParseAddrPort(freeUDPPort(t))
	other := netip.MustParseAddrPort(freeUDPPort(t))
	metrics := freeUDPPort(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "control.sock")
	file := filepath.Join(dir, "fastudp.toml")
	conf := fmt.Sprintf(`shards = 2
control = %q
metrics = %q
grace_period = "1s"
[[listener]]
name = "q"
address = %q
cluster = "q"
[[listener]]
name = "p"
address = %q
cluster = "p"
[[cluster]]
name = "q"
lb = "maglev"
affinity = "quic"
quic_lb = { config_id = 1, server_id_len = 2, nonce_len = 6 }
  [[cluster.backend]]
  name = "a"
  address = %q
  server_id = "0a01"
  [[cluster.backend]]
  name = "b"
  address = %q
  server_id = "0b02"
[[cluster]]
name = "p"
  [[cluster.backend]]
  address = %q
`, sock, metrics, front, other, be["a"], be["b"], be["p"])
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr := startFromFile(t, file)
	lb := quiclb.Config{ConfigID: 1, ServerIDLen: 2, NonceLen: 6}
	// short is a short-header datagram whose connection ID carries sid under
	// config ID cfgID (a config ID other than 1 routes by the cluster's lb).
	short := func(cfgID uint8, sid []byte, nonce byte) []byte {
		c := lb
		c.ConfigID = cfgID
		var cid [quiclb.MaxCIDLen]byte
		k, err := c.Encode(cid[:], sid, []byte{nonce, 2, 3, 4, 5, 6}, 0)
		if err != nil {
			t.Fatal(err)
		}
		return append(append([]byte{0x40}, cid[:k]...), make([]byte, 30)...)
	}
	waitAnswer(t, front, short(2, []byte{0, 0}, 0), stderr)
	// sample opens n new flows and counts which backend answered each.
	sample := func(n int) map[string]int {
		got := map[string]int{}
		for i := range n {
			got[exchange(t, front, short(2, []byte{0, 0}, byte(i)))]++
		}
		return got
	}
	url := "http://" + metrics + "/metrics"
	run := func(wantCode int, args ...string) string {
		t.Helper()
		code, out, errOut := ctl(sock, args...)
		if code != wantCode {
			t.Fatalf("ctl %q: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", args, code, wantCode, out, errOut)
		}
		return out + errOut
	}

	// A backend added with a server ID, shown in the table and the JSON.
	if out := run(0, "backend", "add", "q", be["c"].String(), "--server-id", "0c03"); !strings.Contains(out, "server ID 0c03") {
		t.Fatalf("add answer: %s", out)
	}
	if out := run(0, "backends", "q"); !hasRow(out, "q", be["c"].String(), "-", "100", "primary", "0c03", "up", "0", "healthy: added") {
		t.Fatalf("backends table:\n%s", out)
	}
	var bs []control.Backend
	if err := json.Unmarshal([]byte(run(0, "--json", "backends", "q")), &bs); err != nil {
		t.Fatal(err)
	}
	sids := map[netip.AddrPort]string{}
	for _, b := range bs {
		sids[b.Address] = b.ServerID
	}
	if sids[be["a"]] != "0a01" || sids[be["b"]] != "0b02" || sids[be["c"]] != "0c03" {
		t.Fatalf("server IDs in JSON: %v", sids)
	}

	// Short-header datagrams carrying 0c03, each from a new socket (a new
	// flow), all reach c, routed by server ID.
	routed := func() float64 {
		v, _ := metricLabeled(t, url, "fastudp_quic_lb_routed_total", `cluster="q"`, `route="server_id"`)
		return v
	}
	before := routed()
	const n = 8
	for i := range n {
		if got := exchange(t, front, short(1, []byte{0x0c, 0x03}, byte(i))); got != "c" {
			t.Fatalf("datagram %d with server ID 0c03 answered by %q, want c", i, got)
		}
	}
	if got := routed() - before; got != n {
		t.Fatalf("fastudp_quic_lb_routed_total{route=\"server_id\"} rose by %v, want %d", got, n)
	}

	// Bad server IDs are refused, and say why.
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"backend", "add", "q", be["d"].String(), "--server-id", "0c"}, 1, `server ID 0c is 1 bytes, cluster "q"'s quic_lb server_id_len is 2`},
		{[]string{"backend", "add", "q", be["d"].String(), "--server-id", "0a01"}, 1, "server ID 0a01 is already backend " + be["a"].String()},
		{[]string{"backend", "add", "p", be["d"].String(), "--server-id", "0d04"}, 1, `cluster "p" has no quic_lb table`},
		{[]string{"backend", "add", "q", be["d"].String(), "--server-id", "xyz"}, 2, "want 1..15 bytes in hexadecimal"},
	} {
		if out := run(tc.code, tc.args...); !strings.Contains(out, tc.msg) {
			t.Fatalf("ctl %q: %s, want %q", tc.args, out, tc.msg)
		}
	}
	if out := run(0, "backends", "q"); strings.Contains(out, be["d"].String()) {
		t.Fatalf("a refused backend was added:\n%s", out)
	}

	// Backups: a made a backup takes no new flow while b and c are up; d
	// added as a backup neither; a made a primary again takes some.
	run(0, "backend", "backup", "q", be["a"].String(), "on")
	run(0, "backend", "add", "q", be["d"].String(), "--backup")
	if out := run(0, "backends", "q"); !strings.Contains(out, "backup") {
		t.Fatalf("backends table without a backup:\n%s", out)
	}
	if got := sample(60); got["a"] != 0 || got["d"] != 0 || got["b"] == 0 || got["c"] == 0 {
		t.Fatalf("new flows with a and d backups: %v", got)
	}
	run(0, "backend", "backup", "q", be["a"].String(), "off")
	if got := sample(60); got["a"] == 0 || got["d"] != 0 {
		t.Fatalf("new flows with a a primary again: %v", got)
	}
	// With every primary drained, the backup takes the new flows.
	for _, n := range []string{"a", "b", "c"} {
		run(0, "backend", "drain", "q", be[n].String())
	}
	if got := sample(10); got["d"] != 10 {
		t.Fatalf("new flows with every primary drained: %v", got)
	}
}

// waitAnswer sends pkt to front until an answer comes.
func waitAnswer(t *testing.T, front netip.AddrPort, pkt []byte, stderr fmt.Stringer) {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(front))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
		_, _ = c.Write(pkt)
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.Read(buf); err == nil {
			return
		}
	}
	t.Fatalf("the proxy at %v does not answer:\n%s", front, stderr)
}

// exchange sends pkt to front from a new socket and returns the name of the
// backend that answered.
func exchange(t *testing.T, front netip.AddrPort, pkt []byte) string {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(front))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	k, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	name, _, _ := strings.Cut(string(buf[:k]), ":")
	return name
}
