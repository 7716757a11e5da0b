package health

import (
	"fmt"
	"net/netip"
	"time"
)

// State is a backend's state as the control plane shows it.
type State uint8

// Backend states.
const (
	// Up: healthy; receives new flows.
	Up State = iota + 1
	// Down: failed its checks; receives no new flows unless the cluster
	// fails open. Live flows are not touched by this package.
	Down
	// Draining: set by the control plane (lame duck): no new flows, live
	// flows continue. Its health is still checked and shown apart
	// ([BackendStatus.Healthy]); a draining backend is never counted as down.
	Draining
)

// String returns "up", "down" or "draining".
func (s State) String() string {
	switch s {
	case Up:
		return "up"
	case Down:
		return "down"
	case Draining:
		return "draining"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// MarshalText implements encoding.TextMarshaler (for the control API's JSON).
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// backend is the health state of one backend of a cluster. addr never
// changes; its cluster's mu guards every other field.
type backend struct {
	addr netip.AddrPort

	healthy  bool
	draining bool
	since    time.Time // of the last change of healthy
	reason   string    // of the last change of state

	okStreak, failStreak int // consecutive active probe results
	passiveStreak        int // consecutive failed passive windows
	lastErr              string

	// Passive counters: reported holds the cumulative totals given to
	// ReportPassive plus everything given to AddPassive; seen is what the
	// last window evaluation consumed.
	reportedFail, reportedOK uint64
	seenFail, seenOK         uint64

	probeOK, probeFail uint64 // totals, for metrics
	passiveFailures    uint64 // total failures reported, for metrics

	// stop ends the backend's prober goroutine; nil when none runs.
	stop func()
	// removed is set when the backend left the cluster's table, so a
	// prober's late result is ignored.
	removed bool
}

func (b *backend) state() State {
	switch {
	case b.draining:
		return Draining
	case b.healthy:
		return Up
	}
	return Down
}

// transition is a change of health a check caused.
type transition struct {
	changed bool
	reason  string
}

// probeResultLocked applies one active probe result and reports whether
// health changed.
func (b *backend) probeResultLocked(p *ProbeConfig, err error, now time.Time) transition {
	if err == nil {
		b.probeOK++
		b.failStreak = 0
		b.okStreak++
		if n := b.okStreak; !b.healthy && n >= p.Rise {
			b.setHealthyLocked(true, now)
			return transition{true, fmt.Sprintf("%d probes succeeded", n)}
		}
		return transition{}
	}
	b.probeFail++
	b.lastErr = describe(err)
	b.okStreak = 0
	b.failStreak++
	if n := b.failStreak; b.healthy && n >= p.Fall {
		b.setHealthyLocked(false, now)
		return transition{true, fmt.Sprintf("%d probes failed: %s", n, b.lastErr)}
	}
	return transition{}
}

// passiveWindowLocked evaluates one passive window ending at now.
func (b *backend) passiveWindowLocked(p *ProbeConfig, pc *PassiveConfig, probing bool, now time.Time) transition {
	fail, ok := b.reportedFail, b.reportedOK
	df, ds := delta(fail, b.seenFail), delta(ok, b.seenOK)
	b.seenFail, b.seenOK = fail, ok
	b.passiveFailures += df
	if !b.healthy {
		b.passiveStreak = 0
		if !probing && now.Sub(b.since) >= pc.Cooldown {
			b.setHealthyLocked(true, now)
			b.passiveStreak = p.Fall - 1
			return transition{true, fmt.Sprintf("passive cooldown of %v elapsed: up on probation", pc.Cooldown)}
		}
		return transition{}
	}
	switch {
	case ds > 0:
		b.passiveStreak = 0
	case df >= pc.MinFailures:
		b.passiveStreak++
		if b.passiveStreak >= p.Fall {
			n := b.passiveStreak
			b.setHealthyLocked(false, now)
			return transition{true, fmt.Sprintf("%d passive intervals with failures and no success (last: %d failures)", n, df)}
		}
	}
	return transition{}
}

func (b *backend) setHealthyLocked(h bool, now time.Time) {
	b.healthy = h
	b.since = now
	b.okStreak, b.failStreak, b.passiveStreak = 0, 0, 0
}

// delta is cur-prev for cumulative counters, or cur when the counter went
// backwards (the reporter restarted its count).
func delta(cur, prev uint64) uint64 {
	if cur < prev {
		return cur
	}
	return cur - prev
}
