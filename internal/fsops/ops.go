package fsops

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/identity"
)

// MakeDir creates path and every missing parent, each owned by uid:gid, and
// describes it (spec rpc.md §7.2). The walk is physical and by descriptor
// (identity.EnsureDir): a directory is only created through symlinks whose
// owners could create it themselves (protected symlinks), else
// KindPermissionDenied. The directories it created entries in are recorded
// in ch (nil: not recorded), which the caller settles.
func MakeDir(names Names, path string, uid, gid uint32, ch *Changes) (*Entry, error) {
	st, err := os.Stat(path)
	switch {
	case err == nil && st.IsDir():
		return nil, Errorf(KindAlreadyExists, nil, "directory already exists: %s", path)
	case err == nil:
		return nil, Errorf(KindInvalidArgument, nil, "path already exists but it is not a directory: %s", path)
	case !notExist(err):
		return nil, Errorf(KindInternal, err, "error getting file info: %v", err)
	}
	d, err := identity.EnsureDir(path, uid, gid)
	if err != nil {
		return nil, Errorf(walkKind(err), err, "%v", err)
	}
	recordMade(ch, d)
	d.Close()
	return Stat(names, path)
}

// Move renames source to destination, creating the destination's parents
// owned by uid:gid. There is no copy fallback: a rename across filesystems
// fails (spec rpc.md §7.3). Both parents are walked physically and the
// rename is done between their descriptors, so a symlink swapped into either
// path cannot redirect it; links on the way must belong to root or to users
// who could create (or remove) the entry themselves. The directories it
// produced events in are recorded in ch (nil: not recorded): both parents,
// those it created, a moved directory itself (its watchers see RENAME .)
// and an empty directory it replaced.
func Move(names Names, source, destination string, uid, gid uint32, ch *Changes) (*Entry, error) {
	dstDir, dstName := splitRename(destination)
	dd, err := identity.EnsureDir(dstDir, uid, gid)
	if err == nil {
		if err = dd.CheckCreate(); err != nil {
			dd.Close()
		}
	}
	if err != nil {
		return nil, Errorf(walkKind(err), err, "%v", err)
	}
	defer dd.Close()
	recordMade(ch, dd)
	srcDir, srcName := splitRename(source)
	sd, err := identity.OpenDir(srcDir)
	if err != nil {
		lerr := &os.LinkError{Op: "rename", Old: source, New: destination, Err: err}
		if notExist(err) {
			return nil, Errorf(KindNotFound, lerr, "source file not found: %v", lerr)
		}
		return nil, Errorf(KindInternal, lerr, "error renaming: %v", lerr)
	}
	defer sd.Close()
	if err := sd.CheckCreate(); err != nil {
		return nil, Errorf(KindPermissionDenied, err, "%v", err)
	}
	var replaced *DirID
	if ch.Watching() {
		var st unix.Stat_t
		if unix.Fstatat(dd.Fd(), strings.TrimRight(dstName, "/"), &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			replaced = &DirID{Dev: st.Dev, Ino: st.Ino}
		}
	}
	if err := unix.Renameat(sd.Fd(), srcName, dd.Fd(), dstName); err != nil {
		lerr := &os.LinkError{Op: "rename", Old: source, New: destination, Err: err}
		var st unix.Stat_t
		if serr := unix.Fstatat(sd.Fd(), strings.TrimRight(srcName, "/"), &st, unix.AT_SYMLINK_NOFOLLOW); serr == unix.ENOENT {
			return nil, Errorf(KindNotFound, lerr, "source file not found: %v", lerr)
		}
		return nil, Errorf(KindInternal, lerr, "error renaming: %v", lerr)
	}
	if ch.Watching() {
		ch.Dir(sd.Fd(), sd.Path())
		ch.Dir(dd.Fd(), dd.Path())
		var st unix.Stat_t
		name := strings.TrimRight(dstName, "/")
		if unix.Fstatat(dd.Fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			moved := DirID{Dev: st.Dev, Ino: st.Ino}
			ch.DirByID(dd.Child(name), moved)
			if replaced != nil && *replaced != moved {
				ch.Gone(*replaced)
			}
		}
	}
	return Stat(names, destination)
}

// recordMade records the directories in which a walk created directories.
func recordMade(ch *Changes, d *identity.Dir) {
	for _, m := range d.Made() {
		ch.DirByID(m.Path, DirID{Dev: m.Dev, Ino: m.Ino})
	}
}

// splitRename splits a rename operand into its parent directory and its
// last component, keeping trailing slashes on the component: the kernel
// then applies rename's own rules to them ("dir/" must be a directory).
func splitRename(p string) (dir, name string) {
	trimmed := strings.TrimRight(p, "/")
	i := strings.LastIndexByte(trimmed, '/')
	if trimmed == "" || i < 0 {
		return "/", p
	}
	return trimmed[:i+1], p[i+1:]
}

// walkKind classifies an EnsureDir failure: a refused symlink is the
// caller's permission problem, anything else internal (spec rpc.md §7.2).
func walkKind(err error) Kind {
	if identity.IsLinkRefused(err) {
		return KindPermissionDenied
	}
	return KindInternal
}

// Remove deletes path recursively, like rm -rf; a missing path is not an
// error (spec rpc.md §7.5, D11). The parent is walked physically and the
// entry removed relative to its descriptor, so a symlinked directory on the
// way is followed only if its owner could remove the entry itself
// (protected symlinks, KindPermissionDenied otherwise): a planted
// "~/etc -> /etc" cannot turn Remove("~/etc/passwd") against /etc. The
// parent and every removed directory that is watched are recorded in ch
// (nil: not recorded), which the caller settles.
func Remove(path string, ch *Changes) error {
	dir, name := splitRename(path)
	name = strings.TrimRight(name, "/")
	switch name {
	case "":
		// "/" itself: no link can be on the way (the caller is trusted).
		if err := os.RemoveAll(path); err != nil {
			return Errorf(KindInternal, err, "error removing file or directory: %v", err)
		}
		return nil
	case ".", "..":
		err := &os.PathError{Op: "RemoveAll", Path: path, Err: syscall.EINVAL}
		return Errorf(KindInternal, err, "error removing file or directory: %v", err)
	}
	d, err := identity.OpenDir(dir)
	if err != nil {
		if notExist(err) || errors.Is(err, identity.ErrNotDirectory) {
			return nil // a path through a missing directory or a file cannot exist
		}
		return Errorf(KindInternal, err, "error removing file or directory: %v", err)
	}
	defer d.Close()
	if err := d.CheckCreate(); err != nil {
		return Errorf(KindPermissionDenied, err, "%v", err)
	}
	// Recorded whatever the outcome: a failed Remove may have removed part
	// of the tree.
	defer ch.Dir(d.Fd(), d.Path())
	if err := removeAt(d.Fd(), d.Child(name), name, 0, ch); err != nil {
		return Errorf(KindInternal, err, "error removing file or directory: %v", err)
	}
	return nil
}

// maxLinks bounds symlink resolution like filepath.EvalSymlinks does.
const maxLinks = 255

// ListDir lists the tree under requested down to depth levels with the
// default limits and no shared budget, and returns the entries (see List).
func ListDir(names Names, requested string, depth uint32) ([]*Entry, error) {
	var out []*Entry
	err := List(context.Background(), names, requested, depth, ListOptions{}, func(e *Entry) { out = append(out, e) })
	if err != nil {
		return nil, err
	}
	return out, nil
}

// List walks the tree under requested down to depth levels (0 means 1),
// depth-first, pre-order, names in byte order, never descending into
// symlinks, and hands each entry to visit as it goes, so that a caller can
// convert and drop it. Entries are described from their real path but
// reported under the requested one (spec rpc.md §7.4). A tree with more
// entries than opts.MaxEntries, or deeper than opts.MaxDepth within the
// requested depth, or no room in the shared budget, fails with an error
// wrapping ErrListTooLarge (D19).
func List(ctx context.Context, names Names, requested string, depth uint32, opts ListOptions, visit func(*Entry)) error {
	if opts.Account != nil {
		defer opts.Account.walked()
	}
	if depth == 0 {
		depth = 1
	}
	real, err := filepath.EvalSymlinks(requested)
	if err != nil {
		switch {
		case notExist(err):
			return Errorf(KindNotFound, err, "path not found: %v", err)
		case isLinkLoop(err):
			return Errorf(KindFailedPrecondition, err, "cyclic symlink or chain >%d links at %q", maxLinks, requested)
		}
		return Errorf(KindInternal, err, "error resolving symlink: %v", err)
	}
	st, err := os.Stat(real)
	if err != nil {
		if notExist(err) {
			return Errorf(KindNotFound, err, "directory not found: %v", err)
		}
		return Errorf(KindInternal, err, "error getting file info: %v", err)
	}
	if !st.IsDir() {
		return Errorf(KindInvalidArgument, nil, "path is not a directory: %s", real)
	}
	l := lister{ctx: ctx, names: names, real: real, requested: requested, depth: int(depth), opts: opts, visit: visit}
	if l.opts.MaxEntries <= 0 {
		l.opts.MaxEntries = DefaultMaxEntries
	}
	if l.opts.MaxDepth <= 0 {
		l.opts.MaxDepth = DefaultMaxDepth
	}
	return l.walk(real, "", 1)
}

type lister struct {
	ctx       context.Context //nolint:containedctx // one walk's
	names     Names
	real      string
	requested string
	depth     int
	opts      ListOptions
	visit     func(*Entry)

	read int // entries read so far
	room int // budget taken and not yet used by read entries
}

// walk lists dir (rel is its path relative to the root, level the depth of
// its entries).
func (l *lister) walk(dir, rel string, level int) error {
	ents, err := l.readDir(dir)
	if err != nil {
		if rel != "" && vanished(err) {
			return nil // removed (or replaced) while we walked
		}
		var fe *Error
		if errors.As(err, &fe) {
			return err
		}
		return Errorf(KindInternal, err, "error reading directory %s: %v", l.real, err)
	}
	for _, de := range ents {
		abs := filepath.Join(dir, de.Name())
		childRel := filepath.Join(rel, de.Name())
		fi, err := os.Lstat(abs)
		if err != nil {
			if notExist(err) {
				continue
			}
			return Errorf(KindInternal, err, "error reading directory %s: %v", l.real, err)
		}
		e := describe(l.names, abs, fi)
		// Its own strings, so that the entry does not keep abs alive.
		e.Name = de.Name()
		e.Path = filepath.Join(l.requested, childRel)
		l.visit(e)
		if fi.IsDir() && level < l.depth {
			if level >= l.opts.MaxDepth {
				if empty, _ := isEmptyDir(abs); !empty {
					return errTooDeep(l.requested, l.opts.MaxDepth)
				}
				continue
			}
			if err := l.walk(abs, childRel, level+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// readDir reads a directory's entries sorted by name (byte order), in
// batches, counting them against the limits as they come: a directory of
// millions of entries is refused before it is all in memory. It does not
// follow a symlink that replaced the directory meanwhile.
func (l *lister) readDir(dir string) ([]fs.DirEntry, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var all []fs.DirEntry
	for {
		batch, err := f.ReadDir(listChunk)
		if len(batch) > 0 {
			if cerr := l.count(len(batch)); cerr != nil {
				return nil, cerr
			}
			all = append(all, batch...)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	slices.SortFunc(all, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return all, nil
}

// count accounts for n more entries read. A listing whose client has
// gone stops here.
func (l *lister) count(n int) error {
	if err := l.ctx.Err(); err != nil {
		return Errorf(KindInternal, err, "listing interrupted: %v", err)
	}
	l.read += n
	if l.read > l.opts.MaxEntries {
		return errTooManyEntries(l.requested, l.opts.MaxEntries)
	}
	if l.opts.Account == nil {
		return nil
	}
	for l.room < n {
		if err := l.opts.Account.take(l.ctx, listChunk); err != nil {
			return err
		}
		l.room += listChunk
	}
	l.room -= n
	return nil
}

// isEmptyDir reports whether dir has no entries.
func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return len(names) == 0, err
}

// vanished reports errors that mean a directory disappeared or was
// replaced by something else while the tree was walked.
func vanished(err error) bool {
	return notExist(err) || errors.Is(err, syscall.ELOOP)
}

// isLinkLoop reports a symlink cycle or an over-long chain: the kernel says
// ELOOP; filepath.EvalSymlinks has its own 255-link limit whose error is not
// exported.
func isLinkLoop(err error) bool {
	return errors.Is(err, syscall.ELOOP) || strings.HasSuffix(err.Error(), "too many links")
}
