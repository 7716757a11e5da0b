package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestBenchEndToEnd runs `fastudp bench --duration 1s small-pps --targets
// direct,floor,fastudp` (one run) with the built binary as the fastudp and
// floor targets, and checks the report and the charts.
func TestBenchEndToEnd(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := runMain([]string{"bench", "--duration", "1s", "small-pps", "--targets", "direct,floor,fastudp",
		"--runs", "1", "--rate", "5000", "--out", dir, "--bin", fastudpBin}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	report := stdout.String()
	for _, re := range []string{
		`\| small-pps \| [0-9.]+ \| [0-9.]+ \|`,                // CPU of floor and fastudp
		`\| small-pps \| fastudp \| [0-9.]+ \| — \| — \| — \|`, // the ratio to the floor
		`\| direct \| \d+ \| [0-9.]+ \| — \|`,                  // loopback may drop a few under load
		`\| floor \| \d+ \| [0-9.]+ \| [0-9.]+ \(`,
		`\| fastudp \| \d+ \| [0-9.]+ \| [0-9.]+ \(`,
	} {
		if !regexp.MustCompile(re).MatchString(report) {
			t.Errorf("report does not match %s:\n%s", re, report)
		}
	}
	if strings.Contains(report, "Failed measurements") {
		t.Errorf("failures:\n%s", report)
	}
	if n := strings.Count(stderr.String(), "small-pps"); n != 3 {
		t.Errorf("%d progress lines:\n%s", n, &stderr)
	}
	for _, f := range []string{"report.md", "results.json", "cpu.svg", "latency.svg"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "cpu.svg"))
	if strings.Count(string(b), `class="bar"`) != 2 {
		t.Errorf("cpu.svg:\n%s", b)
	}
}

func TestBenchBadArgs(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "nosuch"}, {"bench", "--targets", "haproxy", "small-pps"}, {"bench", "--runs", "0"},
		{"bench", "floor"}, {"bench", "floor", "relay", "--backend", "x"},
	} {
		var stdout, stderr bytes.Buffer
		if code := runMain(args, &stdout, &stderr); code == 0 {
			t.Errorf("%v: exit 0", args)
		}
	}
}
