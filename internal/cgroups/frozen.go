package cgroups

import (
	"context"
	"path/filepath"
	"sync"
)

// A spawn never forks into a frozen static group (spec control-plane.md
// §2.5): a child created with CLONE_INTO_CGROUP into a frozen cgroup stops
// before it can exec, and Go waits for that exec under its process-wide
// fork lock, so one such spawn would stall every later spawn of envd. The
// process manager asks GroupFrozen under the spawn lock; when it answers
// yes it releases the lock and waits in WaitThawed, holding nothing, woken
// by envd's own thaw (Thawed) or by a change notification on the group's
// interface files — never by a timer.

// frozenWatch wakes the waiters of WaitThawed. One inotify instance serves
// every waiter (a waiting Start must not cost an inotify instance, which
// the guest's watchers need, D19); it is created when the first waiter
// arrives and lives until Close.
type frozenWatch struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	watcher *groupWatcher // nil until a waiter needs it
	failed  bool          // inotify could not be set up; envd's own thaw still wakes
	closed  bool
}

// GroupFrozen reports whether the group a process with (pty, tag) is placed
// in has its own freeze request or reads settled-frozen (a freeze of an
// ancestor counts: --cgroup-root need not be the top of the hierarchy).
// Unreadable files count as not frozen: a kernel without the cgroup v2
// freezer cannot freeze the group either.
func (m *Manager) GroupFrozen(pty bool) bool {
	dir := m.groupDir(pty)
	if dir == "" {
		return false
	}
	own, _ := readFlag(filepath.Join(dir, "cgroup.freeze"))
	if own {
		return true
	}
	settled, _ := readFrozenKey(filepath.Join(dir, "cgroup.events"))
	return settled
}

// WaitThawed returns once the group reads neither requested nor settled
// frozen, or with ctx's error when ctx ends first.
func (m *Manager) WaitThawed(ctx context.Context, pty bool) error {
	for {
		changed := m.changes()
		if !m.GroupFrozen(pty) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Thawed wakes every WaitThawed; the freezer calls it at the end of each
// thaw (control-plane.md §4.1 step 5).
func (m *Manager) Thawed() {
	if m == nil {
		return
	}
	m.frozen.broadcast()
}

func (m *Manager) groupDir(pty bool) string {
	if m == nil || m.userFD < 0 {
		return ""
	}
	if pty {
		return filepath.Join(m.root, PTYGroup)
	}
	return filepath.Join(m.root, UserGroup)
}

// changes returns the channel closed by the next change, starting the
// shared watcher on first use.
func (m *Manager) changes() <-chan struct{} {
	w := &m.frozen
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.changed == nil {
		w.changed = make(chan struct{})
	}
	if w.watcher == nil && !w.failed && !w.closed {
		var paths []string
		for _, pty := range []bool{false, true} {
			dir := m.groupDir(pty)
			paths = append(paths, filepath.Join(dir, "cgroup.events"), filepath.Join(dir, "cgroup.freeze"))
		}
		gw, err := startGroupWatcher(paths, w.broadcast, m.log)
		if err != nil {
			w.failed = true
			m.log.Warn("cannot watch the groups' freeze state; a waiting process start is woken only by envd's own thaw", "error", err.Error())
		} else {
			w.watcher = gw
		}
	}
	return w.changed
}

func (w *frozenWatch) broadcast() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.changed != nil {
		close(w.changed)
	}
	w.changed = make(chan struct{})
}

func (w *frozenWatch) close() {
	w.mu.Lock()
	gw := w.watcher
	w.watcher, w.closed = nil, true
	w.mu.Unlock()
	if gw != nil {
		gw.stop()
	}
}
