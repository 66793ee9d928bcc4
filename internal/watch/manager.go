package watch

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/envd/envd/internal/fsops"
)

// Bounds of the watchers (D11, D19). The kernel allows each user 128
// inotify instances by default (fs.inotify.max_user_instances), and every
// watcher is one; envd runs as root, so its watchers share root's 128 with
// the guest's own root processes. Polling watchers and streams each have
// their own cap, so forgotten polling watchers can never take the room of
// WatchDir streams, and 32 instances stay free for the guest.
const (
	// DefaultMaxPending bounds a polling watcher's buffer in events (spec
	// rpc.md §9.4) and DefaultMaxPendingBytes in memory.
	DefaultMaxPending      = 65536
	DefaultMaxPendingBytes = 16 << 20
	// DefaultMaxPollers and DefaultMaxStreams cap the polling watchers and
	// the WatchDir streams.
	DefaultMaxPollers = 32
	DefaultMaxStreams = 64
	// DefaultEventBudget is the memory that the waiting events of all
	// watchers share (pending events of polling watchers, stream queues).
	DefaultEventBudget = 64 << 20
	// DefaultIdleExpiry: a polling watcher not polled for this long is
	// removed (the next GetWatcherEvents answers not_found). The Python
	// SDK polls whenever its user asks for events; ten minutes of silence
	// means the watcher was forgotten.
	DefaultIdleExpiry = 10 * time.Minute
)

// ErrClosed is returned, and reported to open streams, once the manager is
// closed at shutdown.
var ErrClosed = errors.New("watchers are closed: envd is shutting down")

// ErrTooManyWatchers is in the chain of the error of a watch refused by a
// cap (D19); the message says which.
var ErrTooManyWatchers = errors.New("too many watchers")

// Limits bound a Manager; zero values mean the defaults above.
type Limits struct {
	MaxPending      int
	MaxPendingBytes int64
	MaxPollers      int
	MaxStreams      int
	EventBudget     int64
	IdleExpiry      time.Duration
	// SettleTimeout bounds a request's wait for its watchers
	// (DefaultSettleTimeout).
	SettleTimeout time.Duration
	// Now is the clock (tests).
	Now func() time.Time
}

// Manager owns every watcher: the polling watchers by id and the streaming
// ones while their RPC lasts. Close stops them all. Polling watchers that
// are not polled expire lazily: every call of the manager first removes the
// expired ones, so nothing runs on a timer (lifecycle.md §7.5).
//
// It is also the fsops.Observer of envd's own writes (spec D17): it has
// watchers report an upload's commit as E2B's in-place write, and makes a
// request wait until every watcher of what it changed has the events.
type Manager struct {
	log    *slog.Logger
	opts   Limits
	budget *eventBudget
	hub    *hub

	mu       sync.Mutex
	closed   bool
	pollers  map[string]*Poller
	streams  map[*Stream]struct{}
	starting int // pollers and streams being set up, counted against the caps
}

// NewManager returns a manager with the given bounds.
func NewManager(log *slog.Logger, opts Limits) *Manager {
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultMaxPending
	}
	if opts.MaxPendingBytes <= 0 {
		opts.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if opts.MaxPollers <= 0 {
		opts.MaxPollers = DefaultMaxPollers
	}
	if opts.MaxStreams <= 0 {
		opts.MaxStreams = DefaultMaxStreams
	}
	if opts.EventBudget <= 0 {
		opts.EventBudget = DefaultEventBudget
	}
	if opts.IdleExpiry <= 0 {
		opts.IdleExpiry = DefaultIdleExpiry
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Manager{log: log, opts: opts, budget: &eventBudget{total: opts.EventBudget}, hub: newHub(log, opts.SettleTimeout),
		pollers: map[string]*Poller{}, streams: map[*Stream]struct{}{}}
}

var _ fsops.Observer = (*Manager)(nil)

// Watching implements fsops.Observer: whether any watcher is live.
func (m *Manager) Watching() bool { return m.hub.Watching() }

// Watched implements fsops.Observer: whether a watcher watches id.
func (m *Manager) Watched(id fsops.DirID) bool { return m.hub.Watched(id) }

// Commit implements fsops.Observer: the staging file name in dir is
// envd's own, about to be renamed onto a final name that existed or not.
func (m *Manager) Commit(dir fsops.DirID, name string, existed bool) (release func()) {
	return m.hub.Commit(dir, name, existed)
}

// Settle implements fsops.Observer: it returns once every watcher of the
// changed directories has handed the events made there so far to its
// stream queue or polling buffer, once ctx is done, or after the settle
// timeout (logged).
func (m *Manager) Settle(ctx context.Context, changed []fsops.ChangedDir) {
	m.hub.Settle(ctx, changed)
}

// Close stops every watcher; later requests fail with ErrClosed.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	pollers, streams := m.pollers, m.streams
	m.pollers, m.streams = map[string]*Poller{}, map[*Stream]struct{}{}
	m.mu.Unlock()
	for _, p := range pollers {
		p.w.stop()
		p.release()
	}
	for s := range streams {
		s.w.stop()
		s.fail(ErrClosed)
	}
}

// Len reports the live polling and streaming watchers (for tests and leak
// checks).
func (m *Manager) Len() (pollers, streams int) {
	m.expire()
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.pollers), len(m.streams)
}

// EventBytes reports the memory the waiting events hold (for tests).
func (m *Manager) EventBytes() int64 { return m.budget.inUse() }

// expire removes the polling watchers idle for longer than the expiry.
func (m *Manager) expire() {
	now := m.opts.Now()
	var gone map[string]*Poller
	m.mu.Lock()
	for id, p := range m.pollers {
		if now.Sub(p.idleSince()) >= m.opts.IdleExpiry {
			if gone == nil {
				gone = map[string]*Poller{}
			}
			gone[id] = p
			delete(m.pollers, id)
		}
	}
	m.mu.Unlock()
	for id, p := range gone {
		p.w.stop()
		p.release()
		m.log.Info("watcher expired: not polled", "watcher_id", id, "idle", m.opts.IdleExpiry.String())
	}
}

// ExpiresIn reports how long polling watcher id has left before it expires
// for not being polled (what a live upgrade carries, control-plane.md §8.7).
func (m *Manager) ExpiresIn(id string) (time.Duration, bool) {
	m.expire()
	m.mu.Lock()
	p := m.pollers[id]
	m.mu.Unlock()
	if p == nil {
		return 0, false
	}
	return m.opts.IdleExpiry - m.opts.Now().Sub(p.idleSince()), true
}

// admit counts a watcher being set up against its cap.
func (m *Manager) admit(poller bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if poller && len(m.pollers)+m.starting >= m.opts.MaxPollers {
		return fsops.Errorf(fsops.KindInternal, ErrTooManyWatchers,
			"too many polling watchers (%d); remove unused ones with RemoveWatcher", m.opts.MaxPollers)
	}
	if !poller && len(m.streams)+m.starting >= m.opts.MaxStreams {
		return fsops.Errorf(fsops.KindInternal, ErrTooManyWatchers,
			"too many directory watch streams (%d); close unused ones", m.opts.MaxStreams)
	}
	m.starting++
	return nil
}

// Create validates path and starts a polling watcher on it; the id names it
// in Events and Remove (spec rpc.md §9.4).
func (m *Manager) Create(path string, wopts Options) (string, error) {
	m.expire()
	if err := Validate(path, wopts.AllowNetworkMounts); err != nil {
		return "", err
	}
	if err := m.admit(true); err != nil {
		return "", err
	}
	p := &Poller{max: m.opts.MaxPending, maxBytes: m.opts.MaxPendingBytes, budget: m.budget, polled: m.opts.Now()}
	w, err := startWatcher(path, wopts, p, m.hub, m.log)
	m.mu.Lock()
	m.starting--
	if err != nil {
		m.mu.Unlock()
		return "", err
	}
	p.w = w
	if m.closed {
		m.mu.Unlock()
		w.stop()
		p.release()
		return "", ErrClosed
	}
	id := newID()
	for m.pollers[id] != nil {
		id = newID()
	}
	m.pollers[id] = p
	m.mu.Unlock()
	m.log.Info("watcher created", "watcher_id", id, "path", path, "recursive", wopts.Recursive)
	return id, nil
}

// Events returns and clears the pending events of watcher id, or its
// terminal error, or ErrOverflow once after events were dropped. The
// caller calls release once it is done with the events (their response
// has been sent): until then they count against the shared budget.
func (m *Manager) Events(id string) (evs []Event, release func(), err error) {
	m.expire()
	m.mu.Lock()
	p := m.pollers[id]
	m.mu.Unlock()
	if p == nil {
		return nil, func() {}, notFound(id)
	}
	return p.take(m.opts.Now())
}

// Remove stops watcher id and forgets it.
func (m *Manager) Remove(id string) error {
	m.expire()
	m.mu.Lock()
	p := m.pollers[id]
	delete(m.pollers, id)
	m.mu.Unlock()
	if p == nil {
		return notFound(id)
	}
	p.w.stop()
	p.release()
	m.log.Info("watcher removed", "watcher_id", id)
	return nil
}

func notFound(id string) error {
	return fsops.Errorf(fsops.KindNotFound, nil, "watcher with id %s not found", id)
}

// Stream validates path and starts a streaming watcher whose events queue
// up to queue deep (spec rpc.md §9.3). The caller must Close it.
func (m *Manager) Stream(path string, wopts Options, queue int) (*Stream, error) {
	m.expire()
	if err := Validate(path, wopts.AllowNetworkMounts); err != nil {
		return nil, err
	}
	if err := m.admit(false); err != nil {
		return nil, err
	}
	s := &Stream{m: m, ch: make(chan Event, queue), failed: make(chan struct{})}
	w, err := startWatcher(path, wopts, s, m.hub, m.log)
	m.mu.Lock()
	m.starting--
	if err != nil {
		m.mu.Unlock()
		return nil, err
	}
	s.w = w
	if m.closed {
		m.mu.Unlock()
		s.Close()
		return nil, ErrClosed
	}
	m.streams[s] = struct{}{}
	m.mu.Unlock()
	return s, nil
}

const idAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// newID returns "w" followed by 20 random characters of [a-z0-9].
func newID() string {
	out := make([]byte, 1, 21)
	out[0] = 'w'
	var b [32]byte
	for len(out) < 21 {
		_, _ = rand.Read(b[:])
		for _, c := range b {
			// 252 = 7×36: rejecting the rest keeps the choice uniform.
			if c < 252 && len(out) < 21 {
				out = append(out, idAlphabet[c%36])
			}
		}
	}
	return string(out)
}
