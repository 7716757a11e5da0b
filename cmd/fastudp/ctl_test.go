package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fastudp/fastudp/control"
	"github.com/fastudp/fastudp/control/controltest"
)

// ctlServer serves a fake controller (cluster dns with two backends, an
// empty cluster quic, one flow) on a socket for runCtl to talk to.
func ctlServer(t *testing.T) (*controltest.Controller, string) {
	t.Helper()
	c := controltest.New("dns", "quic")
	n := int64(4)
	c.Put(control.Backend{Cluster: "dns", Name: "knot1", Address: netip.MustParseAddrPort("10.0.0.1:53"), Weight: 100, State: control.StateUp,
		ActiveFlows: &n, Health: &control.Health{Healthy: true, Usable: true}})
	c.Put(control.Backend{Cluster: "dns", Address: netip.MustParseAddrPort("10.0.0.2:53"), Weight: 50, State: control.StateDown,
		Health: &control.Health{Reason: "3 probes failed: timeout"}})
	c.SetFlows([]control.Flow{{Client: netip.MustParseAddrPort("192.0.2.7:40000"), Local: netip.MustParseAddrPort("127.0.0.1:53"),
		Listener: "dns", Cluster: "dns", Backend: netip.MustParseAddrPort("10.0.0.1:53"), Age: 1500 * time.Millisecond,
		DatagramsIn: 3, DatagramsOut: 2, BytesIn: 120, BytesOut: 300}})
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := control.Listen(path, c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return c, path
}

// ctl runs `fastudp ctl --control path args...` through runMain.
func ctl(path string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = runMain(append([]string{"ctl", "--control", path}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// hasRow reports whether out has a line with these cells in order,
// separated by spaces.
func hasRow(out string, cells ...string) bool {
	for i, c := range cells {
		cells[i] = regexp.QuoteMeta(c)
	}
	return regexp.MustCompile(`(?m)^` + strings.Join(cells, ` +`) + ` *$`).MatchString(out)
}

func TestCtl_tables(t *testing.T) {
	c, path := ctlServer(t)
	c.SetReload(control.ReloadResult{ConfigPath: "/etc/fastudp.toml", ClustersAdded: []string{"ntp"},
		BackendsRemoved: []control.BackendRef{{Cluster: "dns", Address: netip.MustParseAddrPort("10.0.0.2:53")}},
		RestartRequired: []string{"listener.dns.address", "shards"}}, nil)
	tests := []struct {
		name string
		args []string
		rows [][]string
	}{
		{"status", []string{"status"}, [][]string{{"pid", "1234"}, {"shards", "2"}, {"CLUSTER", "UP", "DOWN", "DRAINING", "FLOWS", "PLACEMENT"}, {"dns", "1", "1", "0", "4", "-"}, {"quic", "0", "0", "0", "0", "-"}}},
		{"backends", []string{"backends"}, [][]string{
			{"CLUSTER", "ADDRESS", "NAME", "WEIGHT", "TIER", "SERVER", "ID", "STATE", "FLOWS", "HEALTH"},
			{"dns", "10.0.0.1:53", "knot1", "100", "primary", "-", "up", "4", "healthy"},
			{"dns", "10.0.0.2:53", "-", "50", "primary", "-", "down", "-", "unhealthy: 3 probes failed: timeout"}}},
		{"backends of a cluster", []string{"backends", "quic"}, [][]string{{"CLUSTER", "ADDRESS", "NAME", "WEIGHT", "TIER", "SERVER", "ID", "STATE", "FLOWS", "HEALTH"}}},
		{"flows", []string{"flows", "--limit", "10"}, [][]string{
			{"CLIENT", "LOCAL", "LISTENER", "CLUSTER", "BACKEND", "SHARD", "AGE", "DGRAMS", "IN", "DGRAMS", "OUT", "BYTES", "IN", "BYTES", "OUT"},
			{"192.0.2.7:40000", "127.0.0.1:53", "dns", "dns", "10.0.0.1:53", "0", "1.5s", "3", "2", "120", "300"}}},
		{"add", []string{"backend", "add", "quic", "10.0.0.9:443", "--weight", "7"}, [][]string{{"added 10.0.0.9:443 to cluster quic (weight 7)"}}},
		{"add default weight", []string{"backend", "add", "quic", "[2001:db8::9]:443"}, [][]string{{"added [2001:db8::9]:443 to cluster quic (weight 100)"}}},
		{"weight", []string{"backend", "weight", "quic", "10.0.0.9:443", "9"}, [][]string{{"weight of 10.0.0.9:443 in cluster quic is now 9"}}},
		{"drain", []string{"backend", "drain", "quic", "10.0.0.9:443"}, [][]string{{"draining 10.0.0.9:443 in cluster quic: no new flows, live flows go on"}}},
		{"after drain", []string{"backends", "quic"}, [][]string{{"quic", "10.0.0.9:443", "-", "9", "primary", "-", "draining", "-", "-"}}},
		{"undrain", []string{"backend", "undrain", "quic", "10.0.0.9:443"}, [][]string{{"10.0.0.9:443 in cluster quic takes new flows again"}}},
		{"backup on", []string{"backend", "backup", "quic", "10.0.0.9:443", "on"}, [][]string{{"10.0.0.9:443 in cluster quic is a backup: new flows only while no primary is usable"}}},
		{"after backup on", []string{"backends", "quic"}, [][]string{{"quic", "10.0.0.9:443", "-", "9", "backup", "-", "up", "-", "-"}}},
		{"backup off", []string{"backend", "backup", "quic", "10.0.0.9:443", "off"}, [][]string{{"10.0.0.9:443 in cluster quic is a primary"}}},
		{"remove", []string{"backend", "remove", "quic", "10.0.0.9:443"}, [][]string{{"removed 10.0.0.9:443 from cluster quic"}}},
		{"add with server ID as backup", []string{"backend", "add", "quic", "10.0.0.8:443", "--server-id", "0x0A01", "--backup"},
			[][]string{{"added 10.0.0.8:443 to cluster quic (weight 100, backup, server ID 0a01)"}}},
		{"after add with server ID", []string{"backends", "quic"}, [][]string{{"quic", "10.0.0.8:443", "-", "100", "backup", "0a01", "up", "-", "-"}}},
		{"reload", []string{"reload"}, [][]string{{"reloaded /etc/fastudp.toml"}, {"clusters added:", "ntp"}, {"backends removed:", "dns 10.0.0.2:53"},
			{"NOT applied, need a restart:", "listener.dns.address, shards"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := ctl(path, tt.args...)
			if code != 0 || errOut != "" {
				t.Fatalf("exit %d, stderr %q", code, errOut)
			}
			for _, r := range tt.rows {
				if !hasRow(out, r...) {
					t.Errorf("no row %q in\n%s", r, out)
				}
			}
		})
	}
}

func TestCtl_json(t *testing.T) {
	_, path := ctlServer(t)
	code, out, _ := ctl(path, "backends", "dns", "--json")
	var bs []control.Backend
	if err := json.Unmarshal([]byte(out), &bs); code != 0 || err != nil || len(bs) != 2 || bs[0].Name != "knot1" || *bs[0].ActiveFlows != 4 {
		t.Fatalf("exit %d, %v: %s", code, err, out)
	}
	code, out, _ = ctl(path, "--json", "status")
	var st control.Status
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.PID != 1234 || len(st.Clusters) != 2 {
		t.Fatalf("exit %d, %v: %s", code, err, out)
	}
	code, out, _ = ctl(path, "backend", "add", "quic", "10.0.0.9:443", "--json")
	var ch control.BackendChange
	if err := json.Unmarshal([]byte(out), &ch); code != 0 || err != nil || ch.Action != control.ActionAdded || ch.Weight != 100 {
		t.Fatalf("exit %d, %v: %s", code, err, out)
	}
	code, out, _ = ctl(path, "flows", "--json")
	var fs []control.Flow
	if err := json.Unmarshal([]byte(out), &fs); code != 0 || err != nil || len(fs) != 1 || fs[0].Age != 1500*time.Millisecond {
		t.Fatalf("exit %d, %v: %s", code, err, out)
	}
}

func TestCtl_exitCodes(t *testing.T) {
	c, path := ctlServer(t)
	missing := filepath.Join(t.TempDir(), "none.sock")
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // a substring of stdout
		stderr string // a substring of stderr
	}{
		{"ok", []string{"--control", path, "status"}, 0, "pid", ""},
		{"flags after the command", []string{"backends", "--control", path, "dns"}, 0, "knot1", ""},
		{"help", []string{"--help"}, 0, "backend add CLUSTER ADDR [--weight W]", ""},
		{"help command", []string{"help"}, 0, "backend undrain CLUSTER ADDR", ""},
		{"help after a command", []string{"backend", "add", "-h"}, 0, "Commands:", ""},
		{"no command", nil, 2, "", "Usage: fastudp ctl"},
		{"unknown command", []string{"--control", path, "restart"}, 2, "", `unknown command "restart"`},
		{"unknown backend subcommand", []string{"--control", path, "backend", "kill", "dns", "10.0.0.1:53"}, 2, "", `unknown subcommand "kill"`},
		{"backend alone", []string{"--control", path, "backend"}, 2, "", "want add, remove"},
		{"unknown flag", []string{"--control", path, "status", "--weight", "3"}, 2, "", "flag provided but not defined: -weight"},
		{"extra argument", []string{"--control", path, "status", "now"}, 2, "", "usage: fastudp ctl status"},
		{"missing address", []string{"--control", path, "backend", "remove", "dns"}, 2, "", "backend remove CLUSTER ADDR"},
		{"bad address", []string{"--control", path, "backend", "drain", "dns", "knot1"}, 2, "", "ADDR must be IP:PORT"},
		{"bad weight", []string{"--control", path, "backend", "weight", "dns", "10.0.0.1:53", "0"}, 2, "", "1..10000"},
		{"bad --weight", []string{"--control", path, "backend", "add", "dns", "10.0.0.7:53", "--weight", "10001"}, 2, "", "1..10000"},
		{"bad --limit", []string{"--control", path, "flows", "--limit", "0"}, 2, "", ""},
		{"bad --server-id", []string{"--control", path, "backend", "add", "quic", "10.0.0.7:443", "--server-id", "0g"}, 2, "", `--server-id "0g": want 1..15 bytes in hexadecimal`},
		{"long --server-id", []string{"--control", path, "backend", "add", "quic", "10.0.0.7:443", "--server-id=00112233445566778899aabbccddeeff"}, 2, "", "want 1..15 bytes"},
		{"empty --server-id", []string{"--control", path, "backend", "add", "quic", "10.0.0.7:443", "--server-id="}, 2, "", "--server-id: empty"},
		{"bad backup switch", []string{"--control", path, "backend", "backup", "dns", "10.0.0.1:53", "yes"}, 2, "", "want on (a backup) or off"},
		{"backup missing switch", []string{"--control", path, "backend", "backup", "dns", "10.0.0.1:53"}, 2, "", "backend backup CLUSTER ADDR on|off"},
		{"backup of unknown backend", []string{"--control", path, "backend", "backup", "dns", "10.0.0.7:53", "on"}, 1, "", "10.0.0.7:53"},
		{"unknown cluster", []string{"--control", path, "backends", "nope"}, 1, "", `cluster "nope": not found`},
		{"existing backend", []string{"--control", path, "backend", "add", "dns", "10.0.0.1:53"}, 1, "", "already in cluster"},
		{"unknown backend", []string{"--control", path, "backend", "weight", "dns", "10.0.0.7:53", "5"}, 1, "", "10.0.0.7:53"},
		{"no server", []string{"--control", missing, "status"}, 1, "", "cannot reach fastudp at " + missing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := runCtl(tt.args, &out, &errb)
			if code != tt.code || !strings.Contains(out.String(), tt.stdout) || !strings.Contains(errb.String(), tt.stderr) {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, &out, &errb)
			}
			if code != 0 && out.Len() != 0 {
				t.Errorf("stdout on failure: %q", &out)
			}
		})
	}
	t.Run("invalid config on reload", func(t *testing.T) {
		c.SetReload(control.ReloadResult{}, errors.Join(control.ErrInvalid, errors.New("fastudp.toml: line 4: cluster \"dns\": weight 0")))
		code, out, errOut := ctl(path, "reload")
		if code != 1 || out != "" || !strings.Contains(errOut, `line 4: cluster "dns": weight 0`) {
			t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
		}
	})
}
