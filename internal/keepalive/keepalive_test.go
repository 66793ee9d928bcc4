package keepalive

import (
	"net/http"
	"testing"
	"time"
)

func TestInterval(t *testing.T) {
	for v, want := range map[string]time.Duration{
		"": DefaultInterval, "50": 50 * time.Second, "0": DefaultInterval, "-3": DefaultInterval,
		"abc": DefaultInterval, " 7 ": 7 * time.Second, "1.5": DefaultInterval,
	} {
		h := http.Header{}
		if v != "" {
			h.Set(HeaderName, v)
		}
		if got := Interval(h); got != want {
			t.Errorf("%q: %v, want %v", v, got, want)
		}
	}
}

func TestTimer_FiresAndSuspends(t *testing.T) {
	g := NewGate()
	tm := g.NewTimer(20 * time.Millisecond)
	defer tm.Stop()
	select {
	case <-tm.C:
	case <-time.After(2 * time.Second):
		t.Fatal("timer did not fire")
	}
	g.Suspend()
	tm.Reset()
	select {
	case <-tm.C:
		t.Fatal("fired while suspended")
	case <-time.After(100 * time.Millisecond):
	}
	g.Resume()
	select {
	case <-tm.C:
	case <-time.After(2 * time.Second):
		t.Fatal("timer did not fire after resume")
	}
	tm.Stop()
	if g.Len() != 0 {
		t.Fatal("stopped timer still registered")
	}
}

func TestResume_WithoutSuspendKeepsPhase(t *testing.T) {
	g := NewGate()
	tm := g.NewTimer(150 * time.Millisecond)
	defer tm.Stop()
	start := time.Now()
	time.Sleep(100 * time.Millisecond)
	g.Resume() // not suspended: must not restart the interval
	select {
	case <-tm.C:
	case <-time.After(2 * time.Second):
		t.Fatal("timer did not fire")
	}
	if d := time.Since(start); d >= 240*time.Millisecond {
		t.Fatalf("Resume restarted a running timer: fired after %v", d)
	}
}
