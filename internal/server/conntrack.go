package server

import (
	"context"
	"net"
	"net/http"
	"sync"
)

// ConnTracker follows every connection's state so that a snapshot can be
// prepared and recovered (spec lifecycle.md §7.3): at prepare, keep-alives
// are disabled, idle connections closed and the remaining ones remembered;
// at restore, the remembered connections (whose peers no longer exist after
// the snapshot) are closed and keep-alives re-enabled.
type ConnTracker struct {
	srv *http.Server

	mu    sync.Mutex
	conns map[net.Conn]http.ConnState
	pre   map[net.Conn]struct{}
}

func newConnTracker(srv *http.Server) *ConnTracker {
	return &ConnTracker{srv: srv, conns: map[net.Conn]http.ConnState{}, pre: map[net.Conn]struct{}{}}
}

func (t *ConnTracker) onState(c net.Conn, st http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch st {
	case http.StateNew, http.StateActive, http.StateIdle:
		t.conns[c] = st
	case http.StateHijacked, http.StateClosed:
		delete(t.conns, c)
		delete(t.pre, c)
	}
}

// Prepare disables keep-alives, closes idle connections and records the
// rest (including the one carrying the prepare request and open streams).
func (t *ConnTracker) Prepare() {
	t.srv.SetKeepAlivesEnabled(false)
	t.mu.Lock()
	defer t.mu.Unlock()
	for c, st := range t.conns {
		if st == http.StateIdle {
			_ = c.Close()
			delete(t.conns, c)
			continue
		}
		t.pre[c] = struct{}{}
	}
}

// Restore closes every connection recorded at Prepare that is still open and
// re-enables keep-alives. Connections opened since are untouched. It is
// idempotent.
func (t *ConnTracker) Restore() {
	t.mu.Lock()
	for c := range t.pre {
		_ = c.Close()
		delete(t.pre, c)
		delete(t.conns, c)
	}
	t.mu.Unlock()
	t.srv.SetKeepAlivesEnabled(true)
}

// Counts reports tracked and pre-snapshot connections, for tests and logs.
func (t *ConnTracker) Counts() (tracked, preSnapshot int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns), len(t.pre)
}

type connKey struct{}

func connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// CloseConn closes the connection carrying the request whose context is
// ctx. A stream whose client stopped reading uses it to give up on a peer
// that vanished (spec rpc.md §4.5). It reports whether a connection was
// found.
func CloseConn(ctx context.Context) bool {
	if c, ok := ctx.Value(connKey{}).(net.Conn); ok {
		_ = c.Close()
		return true
	}
	return false
}
