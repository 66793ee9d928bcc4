package watch

import (
	"crypto/rand"
	"errors"
	"log/slog"
	"sync"

	"github.com/envd/envd/internal/fsops"
)

// DefaultMaxPending bounds a polling watcher's buffer (spec rpc.md §9.4).
const DefaultMaxPending = 65536

// ErrClosed is returned, and reported to open streams, once the manager is
// closed at shutdown.
var ErrClosed = errors.New("watchers are closed: envd is shutting down")

// Manager owns every watcher: the polling watchers by id and the streaming
// ones while their RPC lasts. Close stops them all.
type Manager struct {
	log        *slog.Logger
	maxPending int

	mu      sync.Mutex
	closed  bool
	pollers map[string]*Poller
	streams map[*Stream]struct{}
}

// NewManager returns a manager whose polling watchers buffer at most
// maxPending events (0 means DefaultMaxPending).
func NewManager(log *slog.Logger, maxPending int) *Manager {
	if maxPending <= 0 {
		maxPending = DefaultMaxPending
	}
	return &Manager{log: log, maxPending: maxPending, pollers: map[string]*Poller{}, streams: map[*Stream]struct{}{}}
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
	}
	for s := range streams {
		s.w.stop()
		s.fail(ErrClosed)
	}
}

// Len reports the live polling and streaming watchers (for tests and leak
// checks).
func (m *Manager) Len() (pollers, streams int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.pollers), len(m.streams)
}

// Create validates path and starts a polling watcher on it; the id names it
// in Events and Remove (spec rpc.md §9.4).
func (m *Manager) Create(path string, opts Options) (string, error) {
	if err := Validate(path, opts.AllowNetworkMounts); err != nil {
		return "", err
	}
	p := &Poller{max: m.maxPending}
	w, err := startWatcher(path, opts, p, m.log)
	if err != nil {
		return "", err
	}
	p.w = w
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		w.stop()
		return "", ErrClosed
	}
	id := newID()
	for m.pollers[id] != nil {
		id = newID()
	}
	m.pollers[id] = p
	m.mu.Unlock()
	m.log.Info("watcher created", "watcher_id", id, "path", path, "recursive", opts.Recursive)
	return id, nil
}

// Events returns and clears the pending events of watcher id, or its
// terminal error, or ErrOverflow once after events were dropped.
func (m *Manager) Events(id string) ([]Event, error) {
	m.mu.Lock()
	p := m.pollers[id]
	m.mu.Unlock()
	if p == nil {
		return nil, notFound(id)
	}
	return p.take()
}

// Remove stops watcher id and forgets it.
func (m *Manager) Remove(id string) error {
	m.mu.Lock()
	p := m.pollers[id]
	delete(m.pollers, id)
	m.mu.Unlock()
	if p == nil {
		return notFound(id)
	}
	p.w.stop()
	m.log.Info("watcher removed", "watcher_id", id)
	return nil
}

func notFound(id string) error {
	return fsops.Errorf(fsops.KindNotFound, nil, "watcher with id %s not found", id)
}

// Stream validates path and starts a streaming watcher whose events queue
// up to queue deep (spec rpc.md §9.3). The caller must Close it.
func (m *Manager) Stream(path string, opts Options, queue int) (*Stream, error) {
	if err := Validate(path, opts.AllowNetworkMounts); err != nil {
		return nil, err
	}
	s := &Stream{m: m, ch: make(chan Event, queue), failed: make(chan struct{})}
	w, err := startWatcher(path, opts, s, m.log)
	if err != nil {
		return nil, err
	}
	s.w = w
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		w.stop()
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
