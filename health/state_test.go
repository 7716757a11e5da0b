package health

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func Test_backend_probeResult(t *testing.T) {
	p := ProbeConfig{Rise: 2, Fall: 3}
	fail := errors.New("boom")
	tests := []struct {
		name    string
		healthy bool
		results []error
		want    []bool // health after each result
		reason  string // of the last change
	}{
		{"up stays up on successes", true, []error{nil, nil}, []bool{true, true}, ""},
		{"down after fall failures", true, []error{fail, fail, fail}, []bool{true, true, false}, "3 probes failed: boom"},
		{"a success resets the failures", true, []error{fail, fail, nil, fail, fail, fail}, []bool{true, true, true, true, true, false}, "3 probes failed: boom"},
		{"up after rise successes", false, []error{nil, nil}, []bool{false, true}, "2 probes succeeded"},
		{"a failure resets the successes", false, []error{nil, fail, nil, nil}, []bool{false, false, false, true}, "2 probes succeeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &backend{healthy: tt.healthy}
			reason := ""
			for i, err := range tt.results {
				if tr := b.probeResultLocked(&p, err, time.Unix(int64(i), 0)); tr.changed {
					reason = tr.reason
				}
				if b.healthy != tt.want[i] {
					t.Fatalf("after result %d (%v): healthy=%v, want %v", i, err, b.healthy, tt.want[i])
				}
			}
			if reason != tt.reason {
				t.Fatalf("reason %q, want %q", reason, tt.reason)
			}
		})
	}
}

// window is one passive interval's reported increments.
type window struct{ fail, ok uint64 }

func Test_backend_passiveWindow(t *testing.T) {
	p := ProbeConfig{Rise: 2, Fall: 3}
	pc := PassiveConfig{Enabled: true, Interval: time.Second, MinFailures: 2, Cooldown: 5 * time.Second}
	tests := []struct {
		name    string
		probing bool
		windows []window
		want    []bool
	}{
		{"down after fall failed windows", false,
			[]window{{2, 0}, {3, 0}, {9, 0}}, []bool{true, true, false}},
		{"a success resets", false,
			[]window{{2, 0}, {2, 0}, {5, 1}, {2, 0}, {2, 0}}, []bool{true, true, true, true, true}},
		{"failures below the threshold neither count nor reset", false,
			[]window{{2, 0}, {1, 0}, {2, 0}, {0, 0}, {2, 0}}, []bool{true, true, true, true, false}},
		{"failures with successes are not a failed window", false,
			[]window{{100, 1}, {100, 1}, {100, 1}}, []bool{true, true, true}},
		// Down at window 2 (t=2s); the cooldown of 5s ends at window 7;
		// on probation, one failed window takes it down again.
		{"cooldown brings a passive-only backend back on probation", false,
			[]window{{2, 0}, {2, 0}, {2, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}, {2, 0}},
			[]bool{true, true, false, false, false, false, false, true, false}},
		{"no cooldown with active probes", true,
			[]window{{2, 0}, {2, 0}, {2, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}},
			[]bool{true, true, false, false, false, false, false, false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &backend{healthy: true}
			for i, w := range tt.windows {
				b.reportedFail += w.fail
				b.reportedOK += w.ok
				b.passiveWindowLocked(&p, &pc, tt.probing, time.Unix(int64(i), 0))
				if b.healthy != tt.want[i] {
					t.Fatalf("after window %d %+v: healthy=%v, want %v", i, w, b.healthy, tt.want[i])
				}
			}
		})
	}
}

// Test_backend_passiveWindow_counterReset checks that a cumulative counter
// that goes backwards counts as restarted from zero.
func Test_backend_passiveWindow_counterReset(t *testing.T) {
	p := ProbeConfig{Rise: 2, Fall: 2}
	pc := PassiveConfig{Enabled: true, MinFailures: 5, Cooldown: time.Hour}
	b := &backend{healthy: true, reportedFail: 100}
	b.passiveWindowLocked(&p, &pc, false, time.Unix(0, 0)) // 100 failures: one failed window
	b.reportedFail = 6                                     // restarted, then 6 failures
	tr := b.passiveWindowLocked(&p, &pc, false, time.Unix(1, 0))
	if b.healthy || !strings.Contains(tr.reason, "2 passive intervals") || !strings.Contains(tr.reason, "6 failures") {
		t.Fatalf("healthy=%v reason=%q, want down after 2 passive intervals, last 6 failures", b.healthy, tr.reason)
	}
	if b.passiveFailures != 106 {
		t.Fatalf("passive failures %d, want 106", b.passiveFailures)
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Up: "up", Down: "down", Draining: "draining"} {
		if got, _ := s.MarshalText(); string(got) != want || s.String() != want {
			t.Fatalf("%d: %q, want %q", s, got, want)
		}
	}
}
