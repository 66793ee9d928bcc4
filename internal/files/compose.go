package files

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/identity"
)

// ComposeRequest concatenates Sources (as given by the client) into
// Destination (already resolved) (spec http.md §13).
type ComposeRequest struct {
	Sources     []string
	Destination string
	Owner       Owner
	// Resolve turns a requested source path into a real one.
	Resolve func(path string) (string, error)
	// Watchers are told about the commit and waited for (spec D17); nil:
	// none.
	Watchers fsops.Observer
	Log      *slog.Logger
	// Staging, when set, registers the staging file while it exists.
	Staging Staging
}

// Composed describes the result (spec http.md §13.2 step 12).
type Composed struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

// fileID identifies a file by device and inode: "the same file" of spec
// http.md §13.2, whatever the path spelling (//, /./, symlinks, hard links).
type fileID struct{ dev, ino uint64 }

func idOf(st *unix.Stat_t) fileID { return fileID{dev: st.Dev, ino: st.Ino} }

// composeSource is one validated source.
type composeSource struct {
	given, path string
	id          fileID
}

// Compose checks every source in order, concatenates them into a temporary
// file with kernel-side copies, renames it onto the destination and only
// then deletes the sources. Any failure leaves the destination and the
// sources as they were. Sources are compared with the destination and with
// each other as files (device and inode), so no spelling of the destination
// can make compose delete what it just wrote. Watchers see E2B's events
// for the destination (see commit) and the removal of the sources, all
// before Compose returns.
func Compose(ctx context.Context, req ComposeRequest) (*Composed, error) {
	ch := fsops.NewChanges(req.Watchers)
	defer ch.Settle(ctx)
	var destID *fileID
	var dst unix.Stat_t
	if unix.Stat(req.Destination, &dst) == nil {
		id := idOf(&dst)
		destID = &id
	}
	sources := make([]composeSource, len(req.Sources))
	for i, src := range req.Sources {
		p, err := req.Resolve(src)
		if err != nil {
			return nil, errorf(KindBadRequest, err, "error resolving source path %q: %v", src, err)
		}
		if destID == nil && filepath.Clean(p) == filepath.Clean(req.Destination) {
			return nil, errorf(KindBadRequest, nil, "source path %q cannot be the same as destination", src)
		}
		st, err := statSource(src, p)
		if err != nil {
			return nil, err
		}
		id := idOf(st)
		if destID != nil && id == *destID {
			return nil, errorf(KindBadRequest, nil, "source path %q cannot be the same as destination", src)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil, errorf(KindBadRequest, nil, "source path is not a regular file: %s", src)
		}
		for _, prev := range sources[:i] {
			if prev.id == id {
				return nil, errorf(KindBadRequest, nil, "source path %q is listed twice", src)
			}
		}
		sources[i] = composeSource{given: src, path: p, id: id}
	}
	dirPath, name := identity.SplitTarget(req.Destination)
	dir, err := identity.EnsureDir(dirPath, req.Owner.UID, req.Owner.GID)
	if err == nil {
		if err = dir.CheckCreate(); err != nil {
			dir.Close()
		}
	}
	if err != nil {
		if identity.IsLinkRefused(err) {
			return nil, &Error{Kind: KindForbidden, Msg: err.Error(), Err: err}
		}
		return nil, errorf(KindInternal, err, "error ensuring directories: %v", err)
	}
	defer dir.Close()
	recordMade(ch, dir)
	tmp, tmpName, staged, err := createTemp(dir, req.Staging)
	if err != nil {
		if noSpace(err) {
			return nil, errorf(KindNoSpace, err, "not enough disk space available")
		}
		return nil, errorf(KindInternal, err, "error creating destination file: %v", err)
	}
	defer staged() // after the rename or the removal below
	committed := false
	defer func() {
		if !committed {
			_ = tmp.Close()
			_ = unix.Unlinkat(dir.Fd(), tmpName, 0)
		}
	}()
	if req.Owner.Chown {
		if err := tmp.Chown(int(req.Owner.UID), int(req.Owner.GID)); err != nil {
			return nil, errorf(KindInternal, err, "error changing file ownership: %v", err)
		}
	}
	if err := tmp.Chmod(0o644); err != nil {
		return nil, errorf(KindInternal, err, "error changing file mode: %v", err)
	}
	for _, s := range sources {
		if err := appendSource(tmp, s); err != nil {
			if noSpace(err) {
				return nil, errorf(KindNoSpace, err, "not enough disk space available")
			}
			return nil, errorf(KindInternal, err, "error composing source %s: %v", s.given, err)
		}
	}
	var out unix.Stat_t
	if err := unix.Fstat(int(tmp.Fd()), &out); err != nil {
		return nil, errorf(KindInternal, err, "error finalizing compose: %v", err)
	}
	if cerr := commit(tmp, dir, tmpName, name, 0o644, ch, req.Log); cerr != nil {
		if !cerr.renaming && noSpace(cerr.err) {
			return nil, errorf(KindNoSpace, cerr.err, "not enough disk space available")
		}
		return nil, errorf(KindInternal, cerr.err, "error finalizing compose: %v", cerr.err)
	}
	committed = true
	for _, s := range sources {
		removeSource(s.path, idOf(&out), ch)
	}
	return &Composed{Path: req.Destination, Name: filepath.Base(req.Destination), Type: "file"}, nil
}

// resolveSource walks to a source: its directory (from which step 11
// removes it) and the file its symlink chain ends at (which is read). Both
// are subject to the protected-symlink rule: links on the way to the
// directory must belong to someone who could remove the entry, links of the
// chain to someone who could read the file. The caller closes both.
func resolveSource(p string) (*identity.Dir, *identity.Final, error) {
	dirPath, name := identity.SplitTarget(p)
	dir, err := identity.OpenDir(dirPath)
	if err != nil {
		return nil, nil, err
	}
	final, err := dir.Resolve(name)
	if err == nil {
		if err = dir.CheckCreate(); err == nil {
			err = final.Check(identity.AccessRead)
		}
		if err != nil {
			final.Close()
		}
	}
	if err != nil {
		dir.Close()
		return nil, nil, err
	}
	return dir, final, nil
}

// statSource validates one source (spec http.md §13.2 step 6): it must
// exist; a refused symlink is 403.
func statSource(given, p string) (*unix.Stat_t, error) {
	dir, final, err := resolveSource(p)
	if err != nil {
		if identity.IsLinkRefused(err) {
			return nil, &Error{Kind: KindForbidden, Msg: err.Error(), Err: err}
		}
		return nil, errorf(KindNotFound, err, "source file not found: %s", given)
	}
	defer dir.Close()
	defer final.Close()
	if final.Stat == nil {
		return nil, errorf(KindNotFound, nil, "source file not found: %s", given)
	}
	return final.Stat, nil
}

// appendSource copies a source to the end of dst. It is opened without
// blocking (a FIFO swapped in since the check cannot stall the request) and
// must still be the regular file that was checked. io.Copy between two
// *os.File uses copy_file_range (then splice/sendfile, then read/write).
func appendSource(dst *os.File, s composeSource) error {
	dir, final, err := resolveSource(s.path)
	if err != nil {
		return err
	}
	defer dir.Close()
	defer final.Close()
	fd, err := unix.Openat(final.Dir.Fd(), final.Name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: final.Path(), Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || idOf(&st) != s.id {
		unix.Close(fd)
		return fmt.Errorf("%s is no longer the regular file that was checked", final.Path())
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return &os.PathError{Op: "fcntl", Path: final.Path(), Err: err}
	}
	f := os.NewFile(uintptr(fd), final.Path())
	defer f.Close()
	_, err = io.Copy(dst, f)
	return err
}

// removeSource deletes a source path after the compose (errors ignored, spec
// http.md §13.2 step 11) unless it now refers to the destination's inode:
// whatever spelling or race led there, compose never deletes its result.
func removeSource(p string, dest fileID, ch *fsops.Changes) {
	dirPath, name := identity.SplitTarget(p)
	if name == "." {
		return
	}
	dir, err := identity.OpenDir(dirPath)
	if err != nil {
		return
	}
	defer dir.Close()
	if dir.CheckCreate() != nil {
		return
	}
	var st unix.Stat_t
	if unix.Fstatat(dir.Fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || idOf(&st) == dest {
		return
	}
	if unix.Fstatat(dir.Fd(), name, &st, 0) == nil && idOf(&st) == dest {
		return
	}
	if unix.Unlinkat(dir.Fd(), name, 0) == nil {
		ch.Dir(dir.Fd(), dir.Path())
	}
}
