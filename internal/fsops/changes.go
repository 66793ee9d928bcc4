package fsops

import (
	"context"

	"golang.org/x/sys/unix"
)

// DirID identifies a directory by device and inode number: what an inotify
// watch is attached to, whatever path reached it.
type DirID struct{ Dev, Ino uint64 }

// ChangedDir is a directory in which an operation produced watch events.
type ChangedDir struct {
	// Path is its physical path, where the watch layer may place a marker
	// (after checking that it is still the directory ID).
	Path string
	ID   DirID
	// Gone: the operation removed the directory itself, so nothing can be
	// placed in it any more.
	Gone bool
}

// Observer is told about envd's own changes to the filesystem, so that
// watchers report them as E2B's envd does and have them before the
// response is sent (spec D17). watch.Manager implements it; files and fsops
// know it only through this interface.
type Observer interface {
	// Watching reports whether any watcher is live. When none is, nothing
	// needs to be recorded: a watcher set up meanwhile is concurrent with
	// the operation and can be promised nothing.
	Watching() bool
	// Watched reports whether some watcher watches the directory id.
	Watched(id DirID) bool
	// Commit announces that the staging file name in the directory dir is
	// envd's own and is about to be renamed onto a final name that existed
	// (a replacement) or not. Watchers then report that rename as E2B's
	// in-place write would appear: CREATE for a new file, nothing for a
	// replaced one. release withdraws the announcement; it is called once
	// the watchers have the rename's events (after Settle) or when the
	// rename failed.
	Commit(dir DirID, name string, existed bool) (release func())
	// Settle returns once every watcher that watches one of the changed
	// directories has handed the events made there so far to its stream
	// queue or polling buffer — or once ctx is done or the watch layer's
	// own bound on the wait passed.
	Settle(ctx context.Context, changed []ChangedDir)
}

// Bounds of one record (D19). maxChangedDirs bounds the directories one
// request waits for; maxGoneDirs the removed ones it remembers — a Remove
// removes the deepest directories first and the top one last, so when
// there are more, the oldest are dropped: the last ones removed are those
// whose watchers hand over their end last.
const (
	maxChangedDirs = 1024
	maxGoneDirs    = 1024
)

// Changes records what one request changed, for Settle. nil records
// nothing. It is used by one request at a time.
type Changes struct {
	obs      Observer
	dirs     []ChangedDir
	gone     []DirID
	releases []func()
}

// NewChanges returns a record reporting to obs (nil: no watchers).
func NewChanges(obs Observer) *Changes { return &Changes{obs: obs} }

// Watching reports whether recording is worth its system calls.
func (c *Changes) Watching() bool {
	return c != nil && c.obs != nil && c.obs.Watching()
}

// Dir records that events were produced in the directory path, which is
// open as fd (a descriptor, O_PATH is enough).
func (c *Changes) Dir(fd int, path string) {
	if !c.Watching() {
		return
	}
	if id, ok := DirIDOf(fd); ok {
		c.add(ChangedDir{Path: path, ID: id})
	}
}

// DirByID records a changed directory whose identity the caller knows.
func (c *Changes) DirByID(path string, id DirID) {
	if c.Watching() {
		c.add(ChangedDir{Path: path, ID: id})
	}
}

// Gone records that the operation removed the directory id. Only watched
// directories are kept, and at most maxGoneDirs of them (the latest).
func (c *Changes) Gone(id DirID) {
	if !c.Watching() || !c.obs.Watched(id) {
		return
	}
	if len(c.gone) >= maxGoneDirs {
		c.gone = append(c.gone[:0], c.gone[len(c.gone)/2:]...)
	}
	c.gone = append(c.gone, id)
}

func (c *Changes) add(d ChangedDir) {
	for _, have := range c.dirs {
		if have.ID == d.ID {
			return
		}
	}
	if len(c.dirs) < maxChangedDirs {
		c.dirs = append(c.dirs, d)
	}
}

// Commit announces a staging file about to be renamed in the directory
// open as dirFd (see Observer.Commit). It returns the function that
// withdraws the announcement at once, for a failed rename; after a
// successful rename the announcement is withdrawn by Settle.
func (c *Changes) Commit(dirFd int, name string, existed bool) (failed func()) {
	if !c.Watching() {
		return func() {}
	}
	id, ok := DirIDOf(dirFd)
	if !ok {
		return func() {}
	}
	release := c.obs.Commit(id, name, existed)
	c.releases = append(c.releases, release)
	n := len(c.releases) - 1
	return func() {
		release()
		c.releases[n] = func() {}
	}
}

// Pending is how many directories and commits wait for Settle; callers that
// make many changes in one request settle when it grows (bounding what one
// request holds).
func (c *Changes) Pending() int {
	if c == nil {
		return 0
	}
	return len(c.dirs) + len(c.gone) + len(c.releases)
}

// Settle waits until the watchers have the recorded changes' events (see
// Observer.Settle), then withdraws the commits and starts a new record.
func (c *Changes) Settle(ctx context.Context) {
	if c == nil || c.obs == nil {
		return
	}
	if len(c.dirs)+len(c.gone) > 0 {
		all := c.dirs
		for _, id := range c.gone {
			all = append(all, ChangedDir{ID: id, Gone: true})
		}
		c.obs.Settle(ctx, all)
	}
	for _, r := range c.releases {
		r()
	}
	c.dirs, c.gone, c.releases = nil, nil, nil
}

// DirIDOf is the identity of the file open as fd.
func DirIDOf(fd int) (DirID, bool) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return DirID{}, false
	}
	return DirID{Dev: st.Dev, Ino: st.Ino}, true
}
