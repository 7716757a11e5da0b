package harness

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"
)

func cpus() int { return runtime.NumCPU() }

// progress shows how far a run is: a redrawn bar on a terminal, one line
// per measurement otherwise.
type progress struct {
	w     io.Writer
	tty   bool
	total int
	t0    time.Time
	label string
}

func newProgress(w io.Writer, tty bool, total int) *progress {
	return &progress{w: w, tty: tty, total: total, t0: time.Now()}
}

func (p *progress) elapsed() string {
	return time.Since(p.t0).Round(time.Second).String()
}

func (p *progress) bar(done int) string {
	const width = 30
	n := done * width / max(p.total, 1)
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", width-n) + "]"
}

func (p *progress) start(i int, label string) {
	p.label = label
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s %d/%d %s  %s", p.bar(i), i, p.total, p.elapsed(), label)
	}
}

func (p *progress) done(i int, summary string) {
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s %d/%d %s  %s: %s", p.bar(i+1), i+1, p.total, p.elapsed(), p.label, summary)
		return
	}
	fmt.Fprintf(p.w, "[%3d/%d %6s] %s: %s\n", i+1, p.total, p.elapsed(), p.label, summary)
}

func (p *progress) finish() {
	if p.tty {
		fmt.Fprintln(p.w)
	}
}

// summary is the measurement in one line, for progress output.
func (m *Measurement) summary() string {
	if m.Err != "" {
		return "ERROR " + m.Err
	}
	s := fmt.Sprintf("%.0f req/s, loss %.2f%%, p99 %.0f µs", m.Rate, 100*m.Loss, m.P99)
	if m.CPUPerDatagram > 0 {
		s += fmt.Sprintf(", CPU %.2f µs/datagram", m.CPUPerDatagram)
	}
	if q, ok := m.Extra["cpu_us_per_query"]; ok {
		s += fmt.Sprintf(" (%.2f µs/query)", q)
	}
	if q, ok := m.Extra["dnsperf_us_per_query"]; ok {
		s += fmt.Sprintf(", dnsperf %.2f µs/query", q)
	}
	return s
}
