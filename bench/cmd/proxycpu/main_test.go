package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDirectSmoke runs the whole driver against the direct target only (no
// proxy to build, no peer needed) and checks the report and the JSON.
func TestDirectSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("runs load for about a second")
	}
	dir := t.TempDir()
	jsonOut := filepath.Join(dir, "m.json")
	var out, errb bytes.Buffer
	err := run([]string{"-targets", "direct", "-duration", "200ms", "-warmup", "100ms", "-runs", "2",
		"-rate", "2000", "-conns", "4", "-inflight", "2", "-sizes", "64,200", "-json", jsonOut,
		"-out", filepath.Join(dir, "r.md")}, &out, &errb)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, errb.String())
	}
	for _, want := range []string{
		"### Established flows, 64-byte payload", "### New flow per request (responses=1), 200-byte payload",
		"| direct |", "Command: `go run ./bench/cmd/proxycpu",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	b, err := os.ReadFile(jsonOut)
	if err != nil {
		t.Fatal(err)
	}
	var ms []Measurement
	if err := json.Unmarshal(b, &ms); err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2*2*2 {
		t.Fatalf("%d measurements, want 8", len(ms))
	}
	for _, m := range ms {
		if m.Err != "" || m.Returned == 0 || m.Loss != 0 || m.Forwarded != m.Sent {
			t.Errorf("%+v", m)
		}
	}
}

func TestSummarize(t *testing.T) {
	if s := summarize([]float64{3, 1, 2}); s != (stat{2, 1, 3}) {
		t.Errorf("odd: %+v", s)
	}
	if s := summarize([]float64{4, 1, 2, 3}); s != (stat{2.5, 1, 4}) {
		t.Errorf("even: %+v", s)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-sizes", "10"}, {"-scenarios", "bulk"}, {"-targets", "socat"}, {"-targets", "fastudp-0"}, {"-runs", "0"},
	} {
		var out, errb bytes.Buffer
		if err := run(args, &out, &errb); err == nil {
			t.Errorf("run %v succeeded", args)
		}
	}
}
