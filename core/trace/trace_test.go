package trace

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fastudp/fastudp/core"
)

var update = flag.Bool("update", false, "rewrite testdata/traces/*.golden from the current core")

const traceDir = "../../testdata/traces"

func traceFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(traceDir, "*.trace"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no traces in %s", traceDir)
	}
	return files
}

func runFile(t *testing.T, path string) []byte {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Parse(src)
	if err != nil {
		t.Fatalf("%s:%v", path, err)
	}
	got, err := Run(tr)
	if err != nil {
		t.Fatalf("%s: %v\ntranscript so far:\n%s", path, err, got)
	}
	return got
}

// TestTraces replays every trace in testdata/traces and compares its
// transcript with the .golden file beside it.
func TestTraces(t *testing.T) {
	for _, path := range traceFiles(t) {
		name := strings.TrimSuffix(filepath.Base(path), ".trace")
		t.Run(name, func(t *testing.T) {
			got := runFile(t, path)
			golden := strings.TrimSuffix(path, ".trace") + ".golden"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./core/trace -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from %s (go test ./core/trace -update rewrites it):\n%s",
					path, golden, lineDiff(string(want), string(got)))
			}
		})
	}
}

// TestGoldensHaveTraces fails on a golden file left behind by a removed trace.
func TestGoldensHaveTraces(t *testing.T) {
	goldens, err := filepath.Glob(filepath.Join(traceDir, "*.golden"))
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range goldens {
		if _, err := os.Stat(strings.TrimSuffix(g, ".golden") + ".trace"); err != nil {
			t.Errorf("%s has no trace", g)
		}
	}
}

// TestDeterminism runs every trace twice, each on a fresh manager, and wants
// byte-identical transcripts.
func TestDeterminism(t *testing.T) {
	for _, path := range traceFiles(t) {
		a, b := runFile(t, path), runFile(t, path)
		if !bytes.Equal(a, b) {
			t.Errorf("%s: two runs differ:\n%s", path, lineDiff(string(a), string(b)))
		}
	}
}

// lineDiff shows the first differing lines of want and got with some context.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	i := 0
	for i < len(w) && i < len(g) && w[i] == g[i] {
		i++
	}
	var b strings.Builder
	for j := max(0, i-3); j < i; j++ {
		b.WriteString("  " + w[j] + "\n")
	}
	for j := i; j < len(w) && j < i+8; j++ {
		b.WriteString("- " + w[j] + "\n")
	}
	for j := i; j < len(g) && j < i+8; j++ {
		b.WriteString("+ " + g[j] + "\n")
	}
	return b.String()
}

// TestChecks feeds the runner's output checks contradictory outputs and wants
// each one caught: they guard the goldens against a core that misbehaves in a
// way CheckInvariants cannot see.
func TestChecks(t *testing.T) {
	c1 := netip.MustParseAddrPort("10.0.0.1:5000")
	c2 := netip.MustParseAddrPort("10.0.0.2:5000")
	l := netip.MustParseAddrPort("192.0.2.1:53")
	id := core.FlowID(1<<32 | 0)
	created := core.Output{Kind: core.OutMetric, Metric: core.MetricFlowCreated, Flow: id}
	sel := core.Output{Kind: core.OutSelectBackend, Flow: id, Client: c1, Local: l}
	open := core.Output{Kind: core.OutOpenUpstream, Flow: id}
	closeOut := core.Output{Kind: core.OutCloseFlow, Flow: id}
	tests := []struct {
		name string
		outs []core.Output
		want string
	}{
		{"ok", []core.Output{created, sel, open, {Kind: core.OutSendToClient, Flow: id, Client: c1, Local: l}, closeOut}, ""},
		{"never created", []core.Output{{Kind: core.OutSendToBackend, Flow: id}}, "never created"},
		{"created twice", []core.Output{created, created}, "created twice"},
		{"send before open", []core.Output{created, sel, {Kind: core.OutSendToBackend, Flow: id}}, "send before open"},
		{"wrong client", []core.Output{created, sel, open, {Kind: core.OutSendToClient, Flow: id, Client: c2, Local: l}}, "reply from"},
		{"after close", []core.Output{created, sel, closeOut, {Kind: core.OutSendToClient, Flow: id, Client: c1, Local: l}}, "after it closed"},
		{"closed twice", []core.Output{created, closeOut, closeOut}, "after it closed"},
		{"reused id", []core.Output{created, closeOut, created}, "created twice"},
		{"stale input is fine", []core.Output{created, closeOut, {Kind: core.OutMetric, Metric: core.MetricStaleInput, Flow: id}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runner{flows: map[core.FlowID]flowRec{}, closed: map[core.FlowID]bool{}}
			var err error
			for i := range tt.outs {
				if err = r.check(&tt.outs[i]); err != nil {
					break
				}
			}
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestCheckPool(t *testing.T) {
	p := newCheckPool(2)
	a, b := p.Get(10), p.Get(300)
	if a == nil || b == nil || p.Get(1) != nil {
		t.Fatal("limit of 2 not applied")
	}
	a = append(a, "hello"...)
	p.Put(a)
	if p.lent() != 1 || a[0] != 0xDD {
		t.Fatalf("lent %d, returned buffer %q not overwritten", p.lent(), a)
	}
	p.Put(a)
	if p.err == nil {
		t.Fatal("double Put not noticed")
	}
}
