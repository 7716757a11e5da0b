package trace

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary text to the parser, which must never panic; a
// trace that parses must run without a panic and without a contract
// violation (every trace in testdata/traces seeds the corpus).
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(traceDir, "*.trace"))
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("manager max_flows=1 pending=1 pool=1\ncluster responses=1 requests=2 front=1s back=500ms proxy=first\n" +
		"client src=10.0.0.1:1 dst=[::1]:2 len=30 seg=7\nresolve flow=0#1 addr=10.1.0.1:53\nbackend flow=0#1 len=9 seg=4\n+2s timer\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		tr, err := Parse(src)
		if err != nil {
			return
		}
		if len(tr.Steps) > 2000 || segments(tr) > 4096 {
			return // keep each run short: a GRO run of 1-byte segments is thousands of flows
		}
		if out, err := Run(tr); err != nil {
			t.Fatalf("%v\ntrace:\n%s\ntranscript:\n%s", err, src, out)
		}
	})
}

// segments counts the datagrams a trace's payloads carry.
func segments(tr *Trace) int {
	n := 0
	for _, s := range tr.Steps {
		for _, in := range s.Inputs {
			p, seg := len(in.In.Payload), in.In.SegmentSize
			if seg > 0 && seg < p {
				n += (p + seg - 1) / seg
			} else {
				n++
			}
		}
	}
	return n
}
