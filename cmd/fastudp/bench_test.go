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

// TestBenchFlood runs the shed-capacity sweep at two small rates against
// fastudp and the same binary named as fastudp@PATH (the before/after
// form), and checks that each rate is a scenario of its own, that both
// targets have a row, and that the flood was shed with no kernel drops.
func TestBenchFlood(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := runMain([]string{"bench", "flood", "--flood-rates", "0,5000", "--flood-max-flows", "64", "--duration", "500ms",
		"--targets", "fastudp,fastudp@" + fastudpBin, "--runs", "1", "--out", "", "--bin", fastudpBin}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	report := stdout.String()
	if strings.Contains(report, "Failed measurements") {
		t.Fatalf("failures:\n%s", report)
	}
	for _, sc := range []string{"flood-0", "flood-5k"} {
		if !strings.Contains(report, "(`"+sc+"`)") {
			t.Errorf("no section for %s:\n%s", sc, report)
		}
	}
	// flood-5k rows: target, req/s, loss, CPU, RTT, flood sent/s, shed/s,
	// not read, kernel drops, ...
	row := regexp.MustCompile(`(?m)^\| (fastudp(?:@\S+)?) \| [0-9]+ \| [0-9.]+ \| [^|]+ \| [^|]+ \| ([0-9]+) \| ([0-9]+) \| -?[0-9]+ \| ([0-9]+) \|`)
	rows := 0
	for _, m := range row.FindAllStringSubmatch(report, -1) {
		if m[2] == "0" {
			continue // flood-0
		}
		rows++
		if m[3] == "0" || m[4] != "0" {
			t.Errorf("%s: flood sent/s %s, shed/s %s, kernel drops %s; want shedding and no kernel drops", m[1], m[2], m[3], m[4])
		}
	}
	if rows != 2 {
		t.Errorf("%d flood-5k rows, want 2 (fastudp and fastudp@PATH):\n%s", rows, report)
	}
	for _, args := range [][]string{
		{"bench", "flood", "--flood-rates", "x"}, {"bench", "flood", "--flood-rates", "-5"},
		{"bench", "flood", "--targets", "fastudp@/nonexistent", "--out", ""},
	} {
		stdout.Reset()
		stderr.Reset()
		if code := runMain(args, &stdout, &stderr); code == 0 {
			t.Errorf("%v: exit 0", args)
		}
	}
}
