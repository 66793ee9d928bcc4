package fsops

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/envd/envd/internal/identity"
)

// MakeDir creates path and every missing parent, each owned by uid:gid, and
// describes it (spec rpc.md §7.2).
func MakeDir(names Names, path string, uid, gid uint32) (*Entry, error) {
	st, err := os.Stat(path)
	switch {
	case err == nil && st.IsDir():
		return nil, Errorf(KindAlreadyExists, nil, "directory already exists: %s", path)
	case err == nil:
		return nil, Errorf(KindInvalidArgument, nil, "path already exists but it is not a directory: %s", path)
	case !notExist(err):
		return nil, Errorf(KindInternal, err, "error getting file info: %v", err)
	}
	if err := identity.EnsureDirs(path, uid, gid); err != nil {
		return nil, Errorf(KindInternal, err, "%v", err)
	}
	return Stat(names, path)
}

// Move renames source to destination, creating the destination's parents
// owned by uid:gid. There is no copy fallback: a rename across filesystems
// fails (spec rpc.md §7.3).
func Move(names Names, source, destination string, uid, gid uint32) (*Entry, error) {
	if err := identity.EnsureDirs(filepath.Dir(destination), uid, gid); err != nil {
		return nil, Errorf(KindInternal, err, "%v", err)
	}
	if err := os.Rename(source, destination); err != nil {
		if _, lerr := os.Lstat(source); lerr != nil && notExist(lerr) {
			return nil, Errorf(KindNotFound, err, "source file not found: %v", err)
		}
		return nil, Errorf(KindInternal, err, "error renaming: %v", err)
	}
	return Stat(names, destination)
}

// Remove deletes path recursively, like rm -rf; a missing path is not an
// error (spec rpc.md §7.5, D11).
func Remove(path string) error {
	if err := os.RemoveAll(path); err != nil {
		return Errorf(KindInternal, err, "error removing file or directory: %v", err)
	}
	return nil
}

// maxLinks bounds symlink resolution like filepath.EvalSymlinks does.
const maxLinks = 255

// ListDir lists the tree under requested down to depth levels (0 means 1),
// depth-first, pre-order, names in byte order, never descending into
// symlinks. Entries are described from their real path but reported under
// the requested one (spec rpc.md §7.4).
func ListDir(names Names, requested string, depth uint32) ([]*Entry, error) {
	if depth == 0 {
		depth = 1
	}
	real, err := filepath.EvalSymlinks(requested)
	if err != nil {
		switch {
		case notExist(err):
			return nil, Errorf(KindNotFound, err, "path not found: %v", err)
		case isLinkLoop(err):
			return nil, Errorf(KindFailedPrecondition, err, "cyclic symlink or chain >%d links at %q", maxLinks, requested)
		}
		return nil, Errorf(KindInternal, err, "error resolving symlink: %v", err)
	}
	st, err := os.Stat(real)
	if err != nil {
		if notExist(err) {
			return nil, Errorf(KindNotFound, err, "directory not found: %v", err)
		}
		return nil, Errorf(KindInternal, err, "error getting file info: %v", err)
	}
	if !st.IsDir() {
		return nil, Errorf(KindInvalidArgument, nil, "path is not a directory: %s", real)
	}
	l := lister{names: names, real: real, requested: requested, depth: int(depth)}
	if err := l.walk(real, "", 1); err != nil {
		return nil, err
	}
	return l.out, nil
}

type lister struct {
	names     Names
	real      string
	requested string
	depth     int
	out       []*Entry
}

// walk lists dir (rel is its path relative to the root, level the depth of
// its entries). os.ReadDir sorts by name, which is byte order.
func (l *lister) walk(dir, rel string, level int) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if rel != "" && notExist(err) {
			return nil // removed while we walked
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
		e.Path = filepath.Join(l.requested, childRel)
		l.out = append(l.out, e)
		if fi.IsDir() && level < l.depth {
			if err := l.walk(abs, childRel, level+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// isLinkLoop reports a symlink cycle or an over-long chain: the kernel says
// ELOOP; filepath.EvalSymlinks has its own 255-link limit whose error is not
// exported.
func isLinkLoop(err error) bool {
	return errors.Is(err, syscall.ELOOP) || strings.HasSuffix(err.Error(), "too many links")
}
