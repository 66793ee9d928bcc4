package server

import (
	"container/list"
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/envd/envd/internal/logging"
)

// Class is the kind of peer a connection comes from, for the connection
// caps (ConnLimits).
type Class int

const (
	// Host is every peer outside the guest (in Firecracker mode), and every
	// peer with --isnotfc, where envd cannot tell the host apart.
	Host Class = iota
	// Guest is a peer inside the guest (loopback or one of its own
	// addresses), Firecracker mode only.
	Guest
	numClasses
)

func (c Class) String() string {
	if c == Guest {
		return "guest"
	}
	return "host"
}

// ConnLimits caps the connections envd keeps open at once, per class of
// peer (D19: descriptors are bounded, with room kept for the host). A new
// connection over its class's cap closes that class's oldest connection
// that carries no request (idle between keep-alive requests, or accepted
// and not yet sending one); when every connection of the class is busy, the
// new one is closed at once. One class never evicts another's connections,
// so guest processes cannot push the host out.
type ConnLimits struct {
	// Classify names the class of an accepted connection; nil puts every
	// connection in Host.
	Classify func(net.Conn) Class
	// Caps are the caps by class; 0 is no cap.
	Caps [2]int
}

// Connection caps envd installs (D19). An idle HTTP/1.1 connection costs
// envd a goroutine and its buffers, some 20–40 KiB, so the caps bound that
// memory too (about 100–200 MiB at most).
const (
	// HostConns caps connections from outside the guest in Firecracker mode
	// (the host, and SDK clients through the edge proxy, one connection per
	// open stream), and all connections with --isnotfc.
	HostConns = 4096
	// GuestConns caps connections from inside the guest in Firecracker
	// mode; in-guest clients are few, and they must not take the host's
	// room.
	GuestConns = 1024
)

// Fit scales the caps down so that connections use at most half of a
// descriptor limit of fileLimit (0: unknown, no change); the other half is
// for processes' pipes and terminals, files, watchers and forwarded
// connections. With the limit envd sets as root (1<<20) nothing changes;
// where it cannot raise its hard limit (4096 when the kernel starts init,
// in a container without CAP_SYS_RESOURCE) the caps shrink with it. No cap
// falls below 16.
func (l ConnLimits) Fit(fileLimit uint64) ConnLimits {
	total := 0
	for _, c := range l.Caps {
		total += c
	}
	room := int(min(fileLimit/2, 1<<30))
	if fileLimit == 0 || total <= room {
		return l
	}
	for i, c := range l.Caps {
		if c > 0 {
			l.Caps[i] = max(c*room/total, 16)
		}
	}
	return l
}

// connInfo is what the tracker knows of one connection.
type connInfo struct {
	state http.ConnState
	class Class
	// idle is the connection's element in its class's eviction list while
	// it carries no request (StateNew, StateIdle), nil otherwise.
	idle *list.Element
	// evicted is set once the tracker closed the connection to make room;
	// it no longer counts against the cap.
	evicted bool
}

// ConnTracker follows every connection's state so that a snapshot can be
// prepared and recovered (spec lifecycle.md §7.3) and the connection caps
// enforced (ConnLimits): at prepare, keep-alives are disabled, idle
// connections closed and the remaining ones remembered; at restore, the
// remembered connections (whose peers no longer exist after the snapshot)
// are closed and keep-alives re-enabled.
type ConnTracker struct {
	srv *http.Server
	log *slog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]*connInfo
	pre    map[net.Conn]struct{}
	limits ConnLimits
	live   [numClasses]int        // tracked connections not evicted, by class
	idle   [numClasses]*list.List // evictable connections, least recently active first
	warn   *logging.Limiter
	// evicted and refused count what the caps did, for the log and tests.
	evicted, refused [numClasses]uint64
}

func newConnTracker(srv *http.Server, log *slog.Logger) *ConnTracker {
	t := &ConnTracker{srv: srv, log: log, conns: map[net.Conn]*connInfo{}, pre: map[net.Conn]struct{}{},
		warn: logging.NewLimiter(10*time.Second, 5)}
	for i := range t.idle {
		t.idle[i] = list.New()
	}
	return t
}

// setLimits installs the caps (before serving).
func (t *ConnTracker) setLimits(l ConnLimits) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.limits = l
}

// admit decides whether a just-accepted connection may be served,
// evicting the oldest request-less connection of its class when the class
// is at its cap. A refused connection must be closed by the caller.
func (t *ConnTracker) admit(c net.Conn) bool {
	t.mu.Lock()
	classify := t.limits.Classify
	t.mu.Unlock()
	class := Host
	if classify != nil {
		class = classify(c) // may read the interface addresses: not under the lock
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if limit := t.limits.Caps[class]; limit > 0 && t.live[class] >= limit {
		front := t.idle[class].Front()
		if front == nil {
			t.refused[class]++
			t.warnLocked("connection refused: every connection of its class is busy", class, limit)
			return false
		}
		victim := front.Value.(net.Conn)
		t.dropLocked(victim, t.conns[victim])
		t.evicted[class]++
		t.warnLocked("closed the least recently used idle connection to admit a new one", class, limit)
		// Closing a socket does not block; the server's goroutine for it
		// ends on its failed read and reports StateClosed.
		_ = victim.Close()
	}
	info := &connInfo{state: http.StateNew, class: class}
	info.idle = t.idle[class].PushBack(c)
	t.conns[c] = info
	t.live[class]++
	return true
}

// dropLocked stops counting c (evicted or closed at prepare) while keeping
// its entry until the server reports it closed.
func (t *ConnTracker) dropLocked(c net.Conn, info *connInfo) {
	if info == nil || info.evicted {
		return
	}
	if info.idle != nil {
		t.idle[info.class].Remove(info.idle)
		info.idle = nil
	}
	info.evicted = true
	t.live[info.class]--
}

func (t *ConnTracker) warnLocked(msg string, class Class, limit int) {
	if ok, suppressed := t.warn.Allow(); ok {
		t.log.Warn(msg, "class", class.String(), "cap", limit,
			"evicted_total", t.evicted[class], "refused_total", t.refused[class], "suppressed", suppressed)
	}
}

func (t *ConnTracker) onState(c net.Conn, st http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	info := t.conns[c]
	switch st {
	case http.StateNew, http.StateActive, http.StateIdle:
		if info == nil {
			// Not accepted through the limiting listener (tests serving on
			// their own listener): track it in the host class.
			info = &connInfo{class: Host}
			t.conns[c] = info
			t.live[Host]++
		}
		info.state = st
		if info.evicted {
			return
		}
		if info.idle != nil {
			t.idle[info.class].Remove(info.idle)
			info.idle = nil
		}
		if st != http.StateActive {
			info.idle = t.idle[info.class].PushBack(c)
		}
	case http.StateHijacked, http.StateClosed:
		if info != nil {
			t.dropLocked(c, info)
			delete(t.conns, c)
		}
		delete(t.pre, c)
	}
}

// Prepare disables keep-alives, closes idle connections and records the
// rest (including the one carrying the prepare request and open streams).
func (t *ConnTracker) Prepare() {
	t.srv.SetKeepAlivesEnabled(false)
	t.mu.Lock()
	defer t.mu.Unlock()
	for c, info := range t.conns {
		if info.evicted {
			continue
		}
		if info.state == http.StateIdle {
			t.dropLocked(c, info)
			_ = c.Close()
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
		t.dropLocked(c, t.conns[c])
		_ = c.Close()
		delete(t.pre, c)
	}
	t.mu.Unlock()
	t.srv.SetKeepAlivesEnabled(true)
}

// Counts reports tracked (open, not yet closed by envd) and pre-snapshot
// connections, for tests and logs.
func (t *ConnTracker) Counts() (tracked, preSnapshot int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, l := range t.live {
		n += l
	}
	return n, len(t.pre)
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
