// Package keepalive times the keepalive events of server streams (spec
// rpc.md §4.6): a stream sends one when nothing was sent for the interval its
// client asked for. All timers hang off one Gate so that they can be
// suspended while the VM is prepared for a snapshot: nothing may fire on a
// timer then (spec lifecycle.md §7.5).
package keepalive

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// HeaderName is the request header carrying the interval in seconds.
const HeaderName = "Keepalive-Ping-Interval"

// DefaultInterval applies when the header is absent, unparseable or <= 0.
const DefaultInterval = 90 * time.Second

// Interval returns the keepalive interval a request asks for.
func Interval(h http.Header) time.Duration {
	v, err := strconv.ParseInt(strings.TrimSpace(h.Get(HeaderName)), 10, 64)
	if err != nil || v <= 0 {
		return DefaultInterval
	}
	if v > int64(24*time.Hour/time.Second) {
		v = int64(24 * time.Hour / time.Second)
	}
	return time.Duration(v) * time.Second
}

// Gate owns every live keepalive timer.
type Gate struct {
	mu        sync.Mutex
	suspended bool
	timers    map[*Timer]struct{}
}

// NewGate returns a gate with no timers, not suspended.
func NewGate() *Gate { return &Gate{timers: map[*Timer]struct{}{}} }

// Suspend stops every timer; timers created or reset while suspended stay
// stopped until Resume.
func (g *Gate) Suspend() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.suspended = true
	for t := range g.timers {
		t.t.Stop()
	}
}

// Resume restarts every timer with its full interval. It does nothing when
// the gate is not suspended (/init resumes every snapshot part as a safety
// net; running timers must keep their phase).
func (g *Gate) Resume() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.suspended {
		return
	}
	g.suspended = false
	for t := range g.timers {
		t.t.Reset(t.d)
	}
}

// Timer fires on C when its interval passed since creation or the last Reset.
type Timer struct {
	g *Gate
	d time.Duration
	t *time.Timer
	// C receives when a keepalive is due.
	C <-chan time.Time
}

// NewTimer starts a timer of interval d (stopped if the gate is suspended).
// The caller must Stop it when the stream ends.
func (g *Gate) NewTimer(d time.Duration) *Timer {
	t := &Timer{g: g, d: d, t: time.NewTimer(d)}
	t.C = t.t.C
	g.mu.Lock()
	g.timers[t] = struct{}{}
	if g.suspended {
		t.t.Stop()
	}
	g.mu.Unlock()
	return t
}

// Reset restarts the interval, after something was sent on the stream.
func (t *Timer) Reset() {
	t.g.mu.Lock()
	defer t.g.mu.Unlock()
	if t.g.suspended {
		t.t.Stop()
		return
	}
	t.t.Reset(t.d)
}

// Stop releases the timer.
func (t *Timer) Stop() {
	t.g.mu.Lock()
	delete(t.g.timers, t)
	t.g.mu.Unlock()
	t.t.Stop()
}

// Len reports how many timers are live (for tests and leak checks).
func (g *Gate) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.timers)
}
