package files

import (
	"errors"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/identity"
)

// commitError is a failed commit: the close of the staging file or the
// rename, which the specification reports with different messages.
type commitError struct {
	renaming bool
	err      error
}

func (e *commitError) Error() string { return e.err.Error() }
func (e *commitError) Unwrap() error { return e.err }

// commit closes the staging file tmp (tmpName in dir), renames it onto name
// in dir and then gives watchers the events of E2B's in-place write for the
// final file (spec D17, http.md §12.5 step 8):
//
//   - the rename is announced to ch as envd's own commit before it is made,
//     so watchers report it as CREATE for a new file and as nothing for a
//     replaced one (the staging name is never reported);
//   - after it, an fchmod to the file's own mode (IN_ATTRIB: CHMOD) and an
//     ftruncate to its own size (IN_MODIFY: WRITE) are made on the renamed
//     file through a duplicate of the staging descriptor: they reach exactly
//     the inode that was committed, whatever its mode, and change nothing.
//
// The staging descriptor is closed before the rename (a close-time error
// still aborts the commit); its duplicate is not, which keeps the open file
// for the two notifications. They are best effort: a failure is logged at
// debug, the file is committed.
func commit(tmp *os.File, dir *identity.Dir, tmpName, name string, mode os.FileMode, ch *fsops.Changes, log *slog.Logger) *commitError {
	err := commitAndNotify(tmp, dir, tmpName, name, mode, ch)
	var ce *commitError
	if errors.As(err, &ce) {
		return ce
	}
	if err != nil && log != nil {
		log.Debug("cannot make the watch events of a committed file", "path", dir.Child(name), "error", err.Error())
	}
	return nil
}

func commitAndNotify(tmp *os.File, dir *identity.Dir, tmpName, name string, mode os.FileMode, ch *fsops.Changes) error {
	notify, derr := unix.FcntlInt(tmp.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if derr != nil {
		notify = -1
	}
	defer func() {
		if notify >= 0 {
			unix.Close(notify)
		}
	}()
	if err := tmp.Close(); err != nil {
		return &commitError{err: err}
	}
	if err := renameAnnounced(dir, tmpName, name, ch); err != nil {
		return &commitError{renaming: true, err: err}
	}
	ch.Dir(dir.Fd(), dir.Path())
	if derr != nil {
		return &os.PathError{Op: "dup", Path: dir.Child(name), Err: derr}
	}
	var st unix.Stat_t
	if err := unix.Fchmod(notify, uint32(mode.Perm())); err != nil {
		return &os.PathError{Op: "chmod", Path: dir.Child(name), Err: err}
	}
	if err := unix.Fstat(notify, &st); err != nil {
		return &os.PathError{Op: "stat", Path: dir.Child(name), Err: err}
	}
	if err := unix.Ftruncate(notify, st.Size); err != nil {
		return &os.PathError{Op: "truncate", Path: dir.Child(name), Err: err}
	}
	return nil
}

// renameAnnounced renames the staging file onto name, announced to ch with
// whether it replaces a file. The rename itself tells: it is tried first
// with RENAME_NOREPLACE, announced as making a new file; when a file is
// there (EEXIST) — a failed rename makes no event — the announcement is
// made again as a replacement and the plain rename follows. A filesystem
// without RENAME_NOREPLACE gets an lstat just before the rename instead.
func renameAnnounced(dir *identity.Dir, tmpName, name string, ch *fsops.Changes) error {
	withdraw := ch.Commit(dir.Fd(), tmpName, false)
	err := unix.Renameat2(dir.Fd(), tmpName, dir.Fd(), name, unix.RENAME_NOREPLACE)
	if err == nil {
		return nil
	}
	withdraw()
	if err != unix.EEXIST && err != unix.EINVAL && err != unix.ENOSYS {
		return &os.LinkError{Op: "rename", Old: dir.Child(tmpName), New: dir.Child(name), Err: err}
	}
	existed := err == unix.EEXIST
	if !existed {
		var st unix.Stat_t
		existed = unix.Fstatat(dir.Fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
	}
	withdraw = ch.Commit(dir.Fd(), tmpName, existed)
	if err := renameAt(dir, tmpName, dir, name); err != nil {
		withdraw()
		return err
	}
	return nil
}

// recordMade records the directories in which a walk created directories:
// their watchers saw a CREATE.
func recordMade(ch *fsops.Changes, dir *identity.Dir) {
	for _, m := range dir.Made() {
		ch.DirByID(m.Path, fsops.DirID{Dev: m.Dev, Ino: m.Ino})
	}
}
