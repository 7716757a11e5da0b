package tcpfwd

import (
	"net/netip"
	"sync"
	"time"
)

// logLimiter lets a log line through at most once per key per interval, so
// that a dead backend produces one line a minute rather than one per
// connection.
type logLimiter struct {
	every time.Duration

	// mu protects last.
	mu   sync.Mutex
	last map[netip.AddrPort]time.Time
}

// maxLimiterKeys bounds the limiter's map: past it, expired keys are swept.
const maxLimiterKeys = 1024

func newLogLimiter(every time.Duration) *logLimiter {
	return &logLimiter{every: every, last: make(map[netip.AddrPort]time.Time)}
}

// allow reports whether a line for key may be logged at now, and if so
// records it.
func (l *logLimiter) allow(key netip.AddrPort, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[key]; ok && now.Sub(t) < l.every {
		return false
	}
	if len(l.last) >= maxLimiterKeys {
		for k, t := range l.last {
			if now.Sub(t) >= l.every {
				delete(l.last, k)
			}
		}
		if len(l.last) >= maxLimiterKeys {
			clear(l.last) // a flood of distinct keys: forget rather than grow
		}
	}
	l.last[key] = now
	return true
}
