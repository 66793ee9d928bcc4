package logging

import (
	"sync"
	"time"
)

// Limiter lets through at most burst log lines per interval and counts the
// ones it held back, so that something a guest process can repeat at will
// (a signal to PID 1, a connection flood, a refused request) cannot flood
// the console (logs are written unbuffered, D16).
type Limiter struct {
	interval time.Duration
	burst    int

	mu         sync.Mutex
	start      time.Time // of the current window
	used       int       // lines let through in it
	suppressed int       // lines held back since the last one let through
}

// NewLimiter returns a limiter letting burst lines (at least one) through
// per interval.
func NewLimiter(interval time.Duration, burst int) *Limiter {
	return &Limiter{interval: interval, burst: max(burst, 1)}
}

// Allow reports whether a line may be logged now and, if so, how many were
// held back before it.
func (l *Limiter) Allow() (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.start.IsZero() || now.Sub(l.start) >= l.interval {
		l.start, l.used = now, 0
	}
	if l.used >= l.burst {
		l.suppressed++
		return false, 0
	}
	l.used++
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}
