package watch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envd/envd/internal/fsops"
)

// Bounds of the hub (D19).
const (
	// DefaultSettleTimeout bounds how long a request waits for its
	// watchers (spec D17): a watcher that neither confirms nor stops within
	// it (its goroutine starved, a marker that cannot reach it) no longer
	// holds the response, which goes out with a warning in the log.
	DefaultSettleTimeout = 2 * time.Second
	// maxCommits bounds the commits announced at the same time (each is
	// one upload's or compose's, held until its request settled). Beyond
	// it a commit is not announced: its watchers then report the rename as
	// a CREATE, as for any rename.
	maxCommits = 16384
	// maxMoves bounds the renames of announced commits whose IN_MOVED_TO a
	// watcher still expects (the two halves of a rename in one directory
	// follow each other; a stray half must not accumulate).
	maxMoves = 64
)

// hub links the watchers to envd's own changes to the filesystem (spec
// D17). It indexes the directories that live watchers watch by device and
// inode; it holds the staging names of the commits in progress, so that
// watchers report a commit as E2B's in-place write; and it runs the
// barriers that hold a request's response until every matching watcher has
// its events.
//
// A barrier works with the per-instance FIFO order of inotify: after the
// operation, envd creates and unlinks a marker (a hidden ".envd-tmp-" name)
// in a directory each matching watcher watches; once a watcher's goroutine
// has handed over the events it read before the marker, every event the
// operation produced for it is in its queue or buffer.
type hub struct {
	log     *slog.Logger
	timeout time.Duration

	live atomic.Int32 // watchers registered (Watching without the lock)

	mu sync.Mutex
	// index: the watchers of each watched directory, one entry per watch
	// (a recursive watch of a big tree adds one small entry per directory).
	index    map[fsops.DirID][]*watcher
	commits  map[commitKey]bool // announced commit → its final name existed
	markers  map[string]*barrier
	barriers map[*barrier]struct{}
}

type commitKey struct {
	dir  fsops.DirID
	name string
}

func newHub(log *slog.Logger, timeout time.Duration) *hub {
	if timeout <= 0 {
		timeout = DefaultSettleTimeout
	}
	return &hub{log: log, timeout: timeout, index: map[fsops.DirID][]*watcher{},
		commits: map[commitKey]bool{}, markers: map[string]*barrier{}, barriers: map[*barrier]struct{}{}}
}

// register counts a watcher from before its first watch is added.
func (h *hub) register() { h.live.Add(1) }

// unregister forgets a watcher whose goroutine ended (or which never
// started): its directories leave the index and no barrier waits for it.
func (h *hub) unregister(w *watcher, ids []fsops.DirID) {
	h.mu.Lock()
	for _, id := range ids {
		h.unindexLocked(w, id)
	}
	bs := h.barriersLocked()
	h.mu.Unlock()
	for _, b := range bs {
		b.release(w)
	}
	h.live.Add(-1)
}

// indexDir records that w watches id.
func (h *hub) indexDir(w *watcher, id fsops.DirID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.index[id] = append(h.index[id], w)
}

// unindexDir records that w no longer watches id.
func (h *hub) unindexDir(w *watcher, id fsops.DirID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.unindexLocked(w, id)
}

func (h *hub) unindexLocked(w *watcher, id fsops.DirID) {
	ws := h.index[id]
	for i, x := range ws {
		if x == w {
			ws[i] = ws[len(ws)-1]
			ws[len(ws)-1] = nil
			ws = ws[:len(ws)-1]
			break
		}
	}
	if len(ws) == 0 {
		delete(h.index, id)
	} else {
		h.index[id] = ws
	}
}

func (h *hub) barriersLocked() []*barrier {
	if len(h.barriers) == 0 {
		return nil
	}
	out := make([]*barrier, 0, len(h.barriers))
	for b := range h.barriers {
		out = append(out, b)
	}
	return out
}

// Watching implements fsops.Observer.
func (h *hub) Watching() bool { return h.live.Load() > 0 }

// Watched implements fsops.Observer.
func (h *hub) Watched(id fsops.DirID) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.index[id]) > 0
}

// Commit implements fsops.Observer.
func (h *hub) Commit(dir fsops.DirID, name string, existed bool) func() {
	k := commitKey{dir: dir, name: name}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.commits) >= maxCommits {
		return func() {}
	}
	h.commits[k] = existed
	var once sync.Once
	return func() {
		once.Do(func() {
			h.mu.Lock()
			delete(h.commits, k)
			h.mu.Unlock()
		})
	}
}

// commit reports whether name in dir is an announced commit and whether
// its final name existed.
func (h *hub) commit(dir fsops.DirID, name string) (existed, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	existed, ok = h.commits[commitKey{dir: dir, name: name}]
	return existed, ok
}

// marker returns the barrier a marker name belongs to (nil: not a marker
// in use).
func (h *hub) marker(name string) *barrier {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.markers[name]
}

// handedOver is called once w handed over a batch of events: the
// directories it stopped watching in the batch leave the index, and the
// barriers learn which of its watches ended (IN_IGNORED) — a marker placed
// there after the watch ended will never reach w, and a removed directory
// has nothing more to report. Both happen under one lock, so that a barrier
// either still finds w in the index (and is released here) or plans
// without it.
func (h *hub) handedOver(w *watcher, unindexed, ignored []fsops.DirID) {
	h.mu.Lock()
	for _, id := range unindexed {
		h.unindexLocked(w, id)
	}
	bs := h.barriersLocked()
	h.mu.Unlock()
	for _, b := range bs {
		for _, id := range ignored {
			b.ignored(w, id)
		}
	}
}

// Settle implements fsops.Observer.
func (h *hub) Settle(ctx context.Context, changed []fsops.ChangedDir) {
	if !h.Watching() || ctx.Err() != nil {
		return
	}
	b, places := h.plan(changed)
	if b == nil {
		return
	}
	defer h.finish(b, places)
	for _, p := range places {
		if err := placeMarker(p.dir, p.name); err != nil {
			// The marker cannot reach these watchers (a read-only or
			// pseudo filesystem, a directory envd cannot write to or that
			// was replaced): they cannot be waited for.
			h.log.Debug("cannot place watch marker; not waiting for its watchers", "path", p.dir.Path, "error", err.Error())
			for _, w := range p.watchers {
				b.release(w)
			}
		}
	}
	t := time.NewTimer(h.timeout)
	defer t.Stop()
	select {
	case <-b.done:
	case <-ctx.Done():
	case <-t.C:
		h.log.Warn("watchers did not take a request's events in time; answering anyway",
			"watchers", b.left(), "timeout", h.timeout.String())
	}
}

// place is one marker to create: in dir, for watchers.
type place struct {
	dir      fsops.ChangedDir
	name     string
	watchers []*watcher
}

// plan finds the watchers of the changed directories and chooses, for each,
// one directory it watches for a marker: the first changed directory that
// still exists. A watcher that watches only directories the operation
// removed is waited for until it has handed over the end of those watches.
// It registers the barrier and its marker names before any marker exists.
func (h *hub) plan(changed []fsops.ChangedDir) (*barrier, []place) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var waiting map[*watcher]*awaited
	for _, c := range changed {
		for _, w := range h.index[c.ID] {
			if waiting == nil {
				waiting = map[*watcher]*awaited{}
			}
			a := waiting[w]
			if a == nil {
				a = &awaited{}
				waiting[w] = a
			}
			if c.Gone {
				if a.gone == nil {
					a.gone = map[fsops.DirID]struct{}{}
				}
				a.gone[c.ID] = struct{}{}
			}
		}
	}
	if len(waiting) == 0 {
		return nil, nil
	}
	b := &barrier{waiting: waiting, done: make(chan struct{})}
	var places []place
	for _, c := range changed {
		if c.Gone {
			continue
		}
		var covers []*watcher
		for _, w := range h.index[c.ID] {
			if a := waiting[w]; !a.marked {
				a.marked, a.marker = true, c.ID
				covers = append(covers, w)
			}
		}
		if len(covers) > 0 {
			name := newMarkerName()
			h.markers[name] = b
			places = append(places, place{dir: c, name: name, watchers: covers})
		}
	}
	h.barriers[b] = struct{}{}
	return b, places
}

// finish unregisters a barrier and its markers.
func (h *hub) finish(b *barrier, places []place) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.barriers, b)
	for _, p := range places {
		delete(h.markers, p.name)
	}
}

// newMarkerName is a staging-style name (spec http.md §12.5 step 5), so
// that watchers hide it like every envd staging file.
func newMarkerName() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return TempPrefix + hex.EncodeToString(b[:])
}

// barrier is one request waiting for the watchers of what it changed.
type barrier struct {
	mu      sync.Mutex
	waiting map[*watcher]*awaited
	done    chan struct{} // closed when waiting is empty
}

// awaited is what a barrier waits for from one watcher.
type awaited struct {
	// marked: a marker for it was placed in the directory marker.
	marked bool
	marker fsops.DirID
	// gone are removed directories it watched (used when not marked).
	gone map[fsops.DirID]struct{}
}

// release stops waiting for w.
func (b *barrier) release(w *watcher) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.releaseLocked(w)
}

func (b *barrier) releaseLocked(w *watcher) {
	if _, ok := b.waiting[w]; !ok {
		return
	}
	delete(b.waiting, w)
	if len(b.waiting) == 0 {
		close(b.done)
	}
}

// ignored applies the end of w's watch of id (see hub.ignored).
func (b *barrier) ignored(w *watcher, id fsops.DirID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	a := b.waiting[w]
	if a == nil {
		return
	}
	if a.marked {
		if a.marker == id {
			b.releaseLocked(w)
		}
		return
	}
	delete(a.gone, id)
	if len(a.gone) == 0 {
		b.releaseLocked(w)
	}
}

// left is how many watchers have not confirmed yet.
func (b *barrier) left() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.waiting)
}
