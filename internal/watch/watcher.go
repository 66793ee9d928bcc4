package watch

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/fsops"
)

// errQueueOverflow is the kernel dropping events because its queue
// (fs.inotify.max_queued_events) filled up: the watcher cannot know what it
// missed, so it fails.
var errQueueOverflow = errors.New("inotify event queue overflowed; events were lost")

// sink receives a watcher's output. Both methods are called only from the
// watcher's goroutine and must not block.
type sink interface {
	// deliver hands over the events translated from one read.
	deliver([]Event)
	// fail reports a terminal error; nothing is delivered afterwards.
	fail(error)
}

// watcher is one inotify instance watching a directory (and, recursively,
// the directories below it). It owns one goroutine, which reads and
// translates events until stop.
type watcher struct {
	root string
	opts Options
	log  *slog.Logger
	in   *inotify
	sink sink
	hub  *hub

	// Touched only by the constructor and then by the goroutine.
	rootWD int32
	dirs   map[int32]string  // watch descriptor → directory relative to root ("" = root)
	ids    map[int32]watched // every watch descriptor until its IN_IGNORED
	moves  map[uint32]bool   // cookie of an announced commit's IN_MOVED_FROM → its final name existed
	// unindexed are directories no longer watched whose removal from the
	// hub's index waits until the events read with it are handed over: a
	// request must not find the watcher gone from the index while it still
	// holds events of that directory.
	unindexed []fsops.DirID

	stopOnce sync.Once
	done     chan struct{}
}

// watched is the directory behind a watch descriptor, by device and inode:
// indexed while the watcher watches it (in the hub, for barriers), kept
// until the kernel confirms the watch's end (IN_IGNORED).
type watched struct {
	id      fsops.DirID
	indexed bool
}

// signals are what a batch of events tells the hub once the batch has been
// handed to the sink: the markers it contained and the watches that ended.
type signals struct {
	markers []*barrier
	ignored []fsops.DirID
}

// startWatcher watches root (which Validate accepted) and starts the
// goroutine that feeds s. The watcher is known to h from before its first
// watch exists until its goroutine ends.
func startWatcher(root string, opts Options, s sink, h *hub, log *slog.Logger) (*watcher, error) {
	in, err := newInotify()
	if err != nil {
		return nil, fsops.Errorf(fsops.KindInternal, err, "error adding path %s to watcher: %v", root, err)
	}
	w := &watcher{root: root, opts: opts, log: log, in: in, sink: s, hub: h, dirs: map[int32]string{},
		ids: map[int32]watched{}, moves: map[uint32]bool{}, done: make(chan struct{})}
	h.register()
	fail := func(err error) (*watcher, error) {
		_ = in.close()
		h.unregister(w, append(w.indexed(), w.unindexed...))
		return nil, fsops.Errorf(fsops.KindInternal, err, "error adding path %s to watcher: %v", root, err)
	}
	wd, err := w.watch(root, true)
	if err != nil {
		return fail(err)
	}
	w.rootWD = wd
	w.dirs[wd] = ""
	if opts.Recursive {
		if err := w.addTree("", nil); err != nil {
			return fail(err)
		}
	}
	go w.run()
	return w, nil
}

// watch adds a watch on dir and indexes the directory it reached.
func (w *watcher) watch(dir string, follow bool) (int32, error) {
	wd, err := w.in.add(dir, follow)
	if err != nil {
		return 0, err
	}
	var st unix.Stat_t
	serr := unix.Lstat(dir, &st)
	if follow {
		serr = unix.Stat(dir, &st)
	}
	if serr != nil {
		// Gone already: its IN_IGNORED follows. Nothing to index.
		return wd, nil
	}
	id := fsops.DirID{Dev: st.Dev, Ino: st.Ino}
	if old, ok := w.ids[wd]; ok && old.indexed {
		if old.id == id {
			return wd, nil
		}
		w.hub.unindexDir(w, old.id)
	}
	w.ids[wd] = watched{id: id, indexed: true}
	w.hub.indexDir(w, id)
	return wd, nil
}

// indexed lists the directories the watcher has in the hub's index.
func (w *watcher) indexed() []fsops.DirID {
	var out []fsops.DirID
	for _, st := range w.ids {
		if st.indexed {
			out = append(out, st.id)
		}
	}
	return out
}

// unindex marks the directory of wd as no longer watched, keeping its
// identity until IN_IGNORED; it leaves the hub's index once the current
// batch is handed over.
func (w *watcher) unindex(wd int32) {
	if st, ok := w.ids[wd]; ok && st.indexed {
		w.unindexed = append(w.unindexed, st.id)
		st.indexed = false
		w.ids[wd] = st
	}
}

// stop closes the inotify instance and waits for the goroutine. It must not
// be called from the sink.
func (w *watcher) stop() {
	w.stopOnce.Do(func() { _ = w.in.close() })
	<-w.done
}

func (w *watcher) run() {
	defer close(w.done)
	// After the recover below: a watcher that failed is never waited for.
	defer func() { w.hub.unregister(w, append(w.indexed(), w.unindexed...)) }()
	defer func() {
		if p := recover(); p != nil {
			w.log.Error("panic in watcher", "path", w.root, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			w.sink.fail(errors.New("internal error"))
		}
	}()
	// Large enough for many events; one event needs at most 16+NAME_MAX+1.
	buf := make([]byte, 64<<10)
	for {
		n, err := w.in.read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			w.failAndRelease(fmt.Errorf("error reading inotify events: %w", err))
			return
		}
		raws, perr := parseEvents(buf[:n])
		evs, sig, terr := w.translate(raws)
		if len(evs) > 0 {
			w.sink.deliver(evs)
		}
		// Only now, with the events handed over, may the requests that
		// wait for them answer, and may the watcher leave the index of
		// the directories it stopped watching.
		for _, b := range sig.markers {
			b.release(w)
		}
		if len(sig.ignored) > 0 || len(w.unindexed) > 0 {
			w.hub.handedOver(w, w.unindexed, sig.ignored)
			w.unindexed = w.unindexed[:0]
		}
		if terr == nil {
			terr = perr
		}
		if terr != nil {
			w.failAndRelease(terr)
			return
		}
	}
}

// failAndRelease reports a terminal error and closes the inotify instance
// at once, so its kernel resources do not wait for the watcher's removal.
func (w *watcher) failAndRelease(err error) {
	w.log.Warn("watcher failed", "path", w.root, "error", err.Error())
	w.sink.fail(err)
	w.stopOnce.Do(func() { _ = w.in.close() })
}

// translate turns raw inotify events into envd events (spec rpc.md §9.2)
// and keeps the recursive watch set in step with the tree. envd's own
// staging files and markers are never reported; the rename that commits an
// announced staging file is reported as E2B's in-place write shows it: a
// CREATE of the final name if it is new, nothing if it replaced a file
// (spec D17; the CHMOD and WRITE follow from the writer).
func (w *watcher) translate(raws []rawEvent) ([]Event, signals, error) {
	var out []Event
	var sig signals
	var names fsops.Names // loaded at most once per read, only if entries are wanted
	emit := func(rel string, op Op) {
		ev := Event{Name: rel, Op: op}
		if w.opts.IncludeEntry && (op == OpCreate || op == OpWrite || op == OpChmod) {
			if names == nil {
				names = fsops.LoadNames()
			}
			if e, err := fsops.Stat(names, filepath.Join(w.root, rel)); err == nil {
				ev.Entry = e
			}
		}
		out = append(out, ev)
	}
	for _, ev := range raws {
		if ev.mask&unix.IN_Q_OVERFLOW != 0 {
			return out, sig, errQueueOverflow
		}
		if ev.mask&unix.IN_IGNORED != 0 {
			if id, ok := w.forget(ev.wd); ok {
				sig.ignored = append(sig.ignored, id)
			}
			continue
		}
		if strings.HasPrefix(ev.name, TempPrefix) {
			// A marker counts even on a watch dropped since it was placed:
			// it was queued before the watch's end.
			if ev.mask&unix.IN_CREATE != 0 {
				if b := w.hub.marker(ev.name); b != nil {
					sig.markers = append(sig.markers, b)
				}
			}
			if st, ok := w.ids[ev.wd]; ok && ev.mask&unix.IN_MOVED_FROM != 0 && ev.cookie != 0 {
				if existed, own := w.hub.commit(st.id, ev.name); own {
					if len(w.moves) >= maxMoves {
						clear(w.moves)
					}
					w.moves[ev.cookie] = existed
				}
			}
			continue
		}
		dir, ok := w.dirs[ev.wd]
		if !ok {
			continue // a watch dropped earlier in this batch
		}
		if ev.mask&unix.IN_MOVED_TO != 0 && ev.cookie != 0 && len(w.moves) > 0 {
			if existed, own := w.moves[ev.cookie]; own {
				delete(w.moves, ev.cookie)
				if existed {
					continue // a replaced file: E2B's in-place write creates nothing
				}
			}
		}
		var rel string
		if ev.name == "" {
			// A watched directory's own event. A subdirectory's is also
			// reported by its parent's watch, with a name; keep only the
			// root's, as ".".
			if ev.wd != w.rootWD {
				continue
			}
			rel = "."
		} else {
			rel = path.Join(dir, ev.name)
		}
		subdir := w.opts.Recursive && ev.name != "" && ev.mask&unix.IN_ISDIR != 0
		if subdir && ev.mask&unix.IN_MOVED_FROM != 0 {
			// Its watches now point outside the tree (or at a new name that
			// IN_MOVED_TO re-adds); drop them so nothing is misnamed.
			w.dropTree(rel)
		}
		if ev.mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0 {
			emit(rel, OpCreate)
		}
		if ev.mask&(unix.IN_MOVED_FROM|unix.IN_MOVE_SELF) != 0 {
			emit(rel, OpRename)
		}
		if ev.mask&unix.IN_ATTRIB != 0 {
			emit(rel, OpChmod)
		}
		if ev.mask&unix.IN_MODIFY != 0 {
			emit(rel, OpWrite)
		}
		if ev.mask&(unix.IN_DELETE|unix.IN_DELETE_SELF) != 0 {
			emit(rel, OpRemove)
		}
		if subdir && ev.mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0 {
			// Entries may have been created inside the new directory before
			// its watch existed: the scan reports them (possibly twice).
			if err := w.addTree(rel, func(r string) { emit(r, OpCreate) }); err != nil {
				return out, sig, fmt.Errorf("error adding path %s to watcher: %w", filepath.Join(w.root, rel), err)
			}
		}
	}
	return out, sig, nil
}

// addTree watches the directory rel (relative to root; "" is the root,
// already watched) and every directory below it, not following symlinks.
// Each watch is added before its directory is read, so an entry is either
// seen by the scan or reported by inotify. found, if not nil, receives every
// entry below rel. Directories that vanish meanwhile are skipped.
func (w *watcher) addTree(rel string, found func(rel string)) error {
	start := filepath.Join(w.root, rel)
	if rel == "" {
		// The root may be a symlink to a directory: walk its target.
		if real, err := filepath.EvalSymlinks(w.root); err == nil {
			start = real
		}
	}
	return filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if vanished(err) {
				return nil
			}
			return err
		}
		sub, rerr := filepath.Rel(start, p)
		if rerr != nil {
			return rerr
		}
		r := path.Join(rel, filepath.ToSlash(sub))
		if p != start {
			if strings.HasPrefix(d.Name(), TempPrefix) {
				return nil
			}
			if found != nil {
				found(r)
			}
		}
		if !d.IsDir() || (p == start && rel == "") {
			return nil
		}
		wd, err := w.watch(p, false)
		if err != nil {
			if vanished(err) {
				return fs.SkipDir
			}
			return err
		}
		w.dirs[wd] = r
		return nil
	})
}

// vanished reports errors that mean a directory disappeared or was replaced
// by a non-directory while being watched or walked.
func vanished(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.ELOOP)
}

// forget drops a watch the kernel removed (IN_IGNORED) and returns the
// directory it was on.
func (w *watcher) forget(wd int32) (fsops.DirID, bool) {
	delete(w.dirs, wd)
	w.unindex(wd)
	st, ok := w.ids[wd]
	delete(w.ids, wd)
	return st.id, ok
}

// dropTree removes the watches of rel and everything below it.
func (w *watcher) dropTree(rel string) {
	for wd, r := range w.dirs {
		if wd != w.rootWD && (r == rel || strings.HasPrefix(r, rel+"/")) {
			w.unindex(wd)
			w.in.remove(wd)
			delete(w.dirs, wd)
		}
	}
}
