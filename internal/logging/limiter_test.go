package logging

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	l := NewLimiter(200*time.Millisecond, 2)
	for i, want := range []bool{true, true, false, false, false} {
		if ok, _ := l.Allow(); ok != want {
			t.Fatalf("call %d: %v", i, ok)
		}
	}
	time.Sleep(250 * time.Millisecond)
	if ok, suppressed := l.Allow(); !ok || suppressed != 3 {
		t.Fatalf("next window: %v, suppressed %d", ok, suppressed)
	}
	if ok, suppressed := l.Allow(); !ok || suppressed != 0 {
		t.Fatalf("second in window: %v %d", ok, suppressed)
	}
}
