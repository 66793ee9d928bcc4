package hostinit

import (
	"time"

	"golang.org/x/sys/unix"
)

// Clock tolerances (spec http.md §8.5): the guest clock is set when it is
// more than 50 ms behind or 5 s ahead of the host's timestamp.
const (
	clockBehind = 50 * time.Millisecond
	clockAhead  = 5 * time.Second
)

// clockNeedsSet reports whether now is far enough from ts to be corrected.
func clockNeedsSet(now, ts time.Time) bool {
	return now.Before(ts.Add(-clockBehind)) || now.After(ts.Add(clockAhead))
}

// SetSystemClock sets CLOCK_REALTIME.
func SetSystemClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}
