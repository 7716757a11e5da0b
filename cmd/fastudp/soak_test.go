package main

import (
	"bytes"
	"regexp"
	"strconv"
	"testing"
)

// TestBenchSoakSmoke runs `fastudp bench soak` for a few seconds and checks
// that the table reports descriptors, goroutines and RSS at every sample
// point, that the control-API changes were accepted, and that the
// descriptors went back to the idle figure once the flows timed out.
func TestBenchSoakSmoke(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := runMain([]string{"bench", "soak", "--duration", "3s", "--warmup", "2s", "--sample", "1s",
		"--reconfigure", "300ms", "--bin", fastudpBin}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	out := stdout.String()
	row := func(name string) (fds, goroutines int, rss float64) {
		t.Helper()
		m := regexp.MustCompile(`\| ` + regexp.QuoteMeta(name) + `[^|]* \| (\d+) \| (\d+) \| ([0-9.]+) \| [0-9.]+ \| \d+ \|`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no %q row:\n%s", name, out)
		}
		fds, _ = strconv.Atoi(m[1])
		goroutines, _ = strconv.Atoi(m[2])
		rss, _ = strconv.ParseFloat(m[3], 64)
		if fds == 0 || goroutines == 0 || rss == 0 {
			t.Errorf("row %q: fds %d, goroutines %d, RSS %v", name, fds, goroutines, rss)
		}
		return fds, goroutines, rss
	}
	idle, _, _ := row("idle, before load")
	start, _, _ := row("start")
	row("end")
	row("max under load")
	after, _, _ := row("idle, after load")
	if start <= idle {
		t.Errorf("%d descriptors under load, %d idle: the load opened no flows", start, idle)
	}
	// DNS-mode shared sockets (one per shard) stay open once used.
	if after > idle+4 {
		t.Errorf("%d descriptors after the load, %d before", after, idle)
	}
	m := regexp.MustCompile(`control-API changes: (\d+) \((\d+) refused\)`).FindStringSubmatch(out)
	if m == nil || m[1] == "0" || m[2] != "0" {
		t.Errorf("control-API changes: %v\n%s", m, out)
	}
	t.Logf("\n%s", out)
}
