package fsops

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Bounds of a recursive Remove. Each level of the tree holds one descriptor
// while its children are removed, so the depth is capped: a tree nested
// deeper than any real one (made to exhaust envd's descriptors) fails
// instead. Entries created while a directory is being emptied are chased a
// bounded number of times.
const (
	maxRemoveDepth  = 512
	maxRemovePasses = 8
	removeBatch     = 1024
)

// removeAt removes name in dirfd and, for a directory, everything below it,
// never following a symlink (a link is removed, not its target). path is
// the entry's path for messages. A missing entry is success. Removed
// directories that are watched are recorded in ch as gone.
func removeAt(dirfd int, path, name string, depth int, ch *Changes) error {
	unlinkErr := unix.Unlinkat(dirfd, name, 0)
	if unlinkErr == nil || unlinkErr == unix.ENOENT {
		return nil
	}
	if unlinkErr != unix.EISDIR && unlinkErr != unix.EPERM {
		return &os.PathError{Op: "unlinkat", Path: path, Err: unlinkErr}
	}
	var gone *DirID
	if ch.Watching() {
		var st unix.Stat_t
		if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			gone = &DirID{Dev: st.Dev, Ino: st.Ino}
		}
	}
	for pass := 0; ; pass++ {
		err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
		if err == nil || err == unix.ENOENT {
			if err == nil && gone != nil {
				ch.Gone(*gone)
			}
			return nil
		}
		if err == unix.ENOTDIR {
			// Not a directory after all: unlink's own refusal (EPERM) stands.
			return &os.PathError{Op: "unlinkat", Path: path, Err: unlinkErr}
		}
		if err != unix.ENOTEMPTY && err != unix.EEXIST || pass >= maxRemovePasses {
			return &os.PathError{Op: "unlinkat", Path: path, Err: err}
		}
		if depth >= maxRemoveDepth {
			return &os.PathError{Op: "unlinkat", Path: path, Err: errors.New("directory tree nested too deeply to remove")}
		}
		if err := emptyDir(dirfd, path, name, depth, ch); err != nil {
			return err
		}
	}
}

// emptyDir removes every entry of the directory name in dirfd.
func emptyDir(dirfd int, path, name string, depth int, ch *Changes) error {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == unix.ENOENT {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "openat", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	for {
		names, rerr := f.Readdirnames(removeBatch)
		for _, n := range names {
			if err := removeAt(fd, path+"/"+n, n, depth+1, ch); err != nil {
				return err
			}
		}
		if rerr == io.EOF || len(names) == 0 {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}
