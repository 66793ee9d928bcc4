package server

import (
	"log/slog"
	"net"
	"net/http"
	"testing"
)

// fakeConn records whether it was closed.
type fakeConn struct {
	net.Conn
	name   string
	closed bool
}

func (c *fakeConn) Close() error { c.closed = true; return nil }

func TestConnTracker_CapsEvictOldestIdleOfTheirClass(t *testing.T) {
	tr := newConnTracker(&http.Server{}, slog.New(slog.DiscardHandler))
	classOf := map[net.Conn]Class{}
	tr.setLimits(ConnLimits{Classify: func(c net.Conn) Class { return classOf[c] }, Caps: [2]int{Host: 2, Guest: 3}})
	newConn := func(name string, class Class) *fakeConn {
		c := &fakeConn{name: name}
		classOf[c] = class
		return c
	}
	admit := func(c *fakeConn) bool {
		ok := tr.admit(c)
		if ok {
			tr.onState(c, http.StateNew)
		}
		return ok
	}
	h1, h2 := newConn("h1", Host), newConn("h2", Host)
	g := []*fakeConn{newConn("g0", Guest), newConn("g1", Guest), newConn("g2", Guest)}
	for _, c := range append([]*fakeConn{h1, h2}, g...) {
		if !admit(c) {
			t.Fatalf("%s refused under the cap", c.name)
		}
	}
	// g0 busy; g2 new since its accept; g1 idle after a request it just
	// finished. Least recently active first: g2, then g1; never g0.
	tr.onState(g[0], http.StateActive)
	tr.onState(g[1], http.StateActive)
	tr.onState(g[1], http.StateIdle)
	g3 := newConn("g3", Guest)
	if !admit(g3) || !g[2].closed || g[1].closed || g[0].closed {
		t.Fatalf("first eviction: g0 %v g1 %v g2 %v", g[0].closed, g[1].closed, g[2].closed)
	}
	tr.onState(g[2], http.StateClosed) // the server notices later
	g4 := newConn("g4", Guest)
	if !admit(g4) || !g[1].closed || g[0].closed {
		t.Fatalf("second eviction: g0 %v g1 %v", g[0].closed, g[1].closed)
	}
	// The guest class never touches the host's connections.
	if h1.closed || h2.closed {
		t.Fatal("a guest connection evicted a host connection")
	}
	// Every guest connection busy: a new one is refused.
	tr.onState(g3, http.StateActive)
	tr.onState(g4, http.StateActive)
	if admit(newConn("g5", Guest)) {
		t.Fatal("admitted over the cap with every connection busy")
	}
	// The host class has its own room.
	h3 := newConn("h3", Host)
	if !admit(h3) || !h1.closed || h2.closed {
		t.Fatalf("host eviction: h1 %v h2 %v", h1.closed, h2.closed)
	}
	if tracked, _ := tr.Counts(); tracked != 2+3 {
		t.Fatalf("tracked %d, want 5 (caps)", tracked)
	}
	if tr.evicted[Guest] != 2 || tr.refused[Guest] != 1 || tr.evicted[Host] != 1 {
		t.Fatalf("counters: evicted %v refused %v", tr.evicted, tr.refused)
	}
	// Prepare still closes idle connections and remembers the rest.
	tr.onState(h3, http.StateIdle)
	tr.Prepare()
	if !h3.closed || h2.closed {
		t.Fatal("prepare must close idle connections only")
	}
	if _, pre := tr.Counts(); pre != 4 { // h2 (new), g0, g3, g4 (active)
		t.Fatalf("pre-snapshot set %d, want 4", pre)
	}
	tr.Restore()
	if !g[0].closed || !g3.closed || !g4.closed || !h2.closed {
		t.Fatal("restore left a pre-snapshot connection open")
	}
}

func TestConnLimits_Fit(t *testing.T) {
	l := ConnLimits{Caps: [2]int{Host: HostConns, Guest: GuestConns}}
	if got := l.Fit(1 << 20); got.Caps != l.Caps {
		t.Fatalf("large limit changed the caps: %v", got.Caps)
	}
	if got := l.Fit(0); got.Caps != l.Caps {
		t.Fatalf("unknown limit changed the caps: %v", got.Caps)
	}
	if got := l.Fit(4096); got.Caps[Host]+got.Caps[Guest] > 2048 || got.Caps[Guest] >= got.Caps[Host] || got.Caps[Guest] < 16 {
		t.Fatalf("4096: %v", got.Caps)
	}
	if got := (ConnLimits{Caps: [2]int{Host: HostConns}}).Fit(4096); got.Caps != [2]int{Host: 2048} {
		t.Fatalf("one class at 4096: %v", got.Caps)
	}
	if got := l.Fit(20); got.Caps != [2]int{Host: 16, Guest: 16} {
		t.Fatalf("tiny: %v", got.Caps)
	}
}
