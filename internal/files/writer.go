package files

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/identity"
)

// TempPrefix starts the names of staging files; watchers hide them.
const TempPrefix = ".envd-tmp-"

// copyBufferSize is the chunk size of upload copies: large enough for disk
// throughput, small enough that concurrent uploads stay cheap.
const copyBufferSize = 256 << 10

// Owner is who created files belong to. Chown is false when envd runs
// unprivileged (spec lifecycle.md §2.4): files then belong to envd's user.
type Owner struct {
	UID, GID uint32
	Chown    bool
}

// WriteRequest is one file to write (spec http.md §12.5).
type WriteRequest struct {
	// Target is the resolved path as requested.
	Target string
	Body   io.Reader
	Owner  Owner
	// Metadata replaces the file's user.e2b.* attributes.
	Metadata map[string]string
	// ContentLength is the request's, for the ENOSPC message (<= 0: unknown).
	ContentLength int64
	// Changes records the directories the write produced watch events in,
	// and announces the commit (spec D17); nil records nothing.
	Changes *fsops.Changes
	Log     *slog.Logger
	// Staging, when set, registers the staging file while it exists.
	Staging Staging
}

// Staging is told about every staging file while it exists, so that a
// live upgrade, which cuts the request off, can have the next image remove
// it (handover.Staging; spec control-plane.md §8.7).
type Staging interface {
	// Begin registers path before its file is created; done unregisters it
	// once the file is renamed or removed.
	Begin(path string) (done func())
}

// Write stores the body at the target atomically: a temporary file in the
// final directory gets the data, owner, mode and metadata, then replaces the
// file by rename. On any failure the temporary file is removed and the
// previous content is untouched. Devices, FIFOs and files on pseudo
// filesystems are written in place instead. Watchers see the events of
// E2B's in-place write, never the staging file (see commit); the caller
// settles req.Changes before it answers.
//
// The path is walked physically, by descriptor (identity.EnsureDir, then
// Dir.Resolve for the symlink chain at the target): the temporary file is
// created, renamed and removed relative to the descriptor of the directory
// that really holds the final file, so nothing swapped into the path after
// the checks can redirect the write, and a symlink is followed only as the
// protected-symlink rule allows (spec http.md §12.5 step 2).
func Write(req WriteRequest) error {
	dirPath, name := identity.SplitTarget(req.Target)
	dir, err := identity.EnsureDir(dirPath, req.Owner.UID, req.Owner.GID)
	if err != nil {
		if identity.IsLinkRefused(err) {
			return &Error{Kind: KindForbidden, Msg: err.Error(), Err: err}
		}
		return errorf(KindInternal, err, "error ensuring directories: %v", err)
	}
	defer dir.Close()
	recordMade(req.Changes, dir)
	final, err := dir.Resolve(name)
	if err != nil {
		return errorf(KindInternal, err, "error opening file: %v", err)
	}
	defer final.Close()
	if err := final.Check(identity.AccessWrite); err != nil {
		return &Error{Kind: KindForbidden, Msg: err.Error(), Err: err}
	}
	if final.IsDir() {
		return errorf(KindBadRequest, nil, "path is a directory: %s", final.Path())
	}
	if (final.Stat != nil && final.Stat.Mode&unix.S_IFMT != unix.S_IFREG) || onPseudoFSAt(final) {
		return writeInPlace(final, req)
	}
	mode := os.FileMode(0o644)
	if final.Stat != nil {
		mode = os.FileMode(final.Stat.Mode & 0o777)
	}
	tmp, tmpName, staged, err := createTemp(final.Dir, req.Staging)
	if err != nil {
		if noSpace(err) {
			return errorf(KindNoSpace, err, "not enough inodes available: %v", err)
		}
		return errorf(KindInternal, err, "error opening file: %v", err)
	}
	defer staged() // after the rename or the removal below
	committed := false
	defer func() {
		if !committed {
			_ = tmp.Close()
			_ = unix.Unlinkat(final.Dir.Fd(), tmpName, 0)
		}
	}()
	if req.Owner.Chown {
		if err := tmp.Chown(int(req.Owner.UID), int(req.Owner.GID)); err != nil {
			return errorf(KindInternal, err, "error changing file ownership: %v", err)
		}
	}
	if err := tmp.Chmod(mode); err != nil {
		return errorf(KindInternal, err, "error changing file mode: %v", err)
	}
	if err := copyBody(tmp, req.Body, req.ContentLength); err != nil {
		return err
	}
	if err := applyMetadata(tmp, req.Metadata, req.Log); err != nil {
		return err
	}
	if cerr := commit(tmp, final.Dir, tmpName, final.Name, mode, req.Changes, req.Log); cerr != nil {
		if cerr.renaming {
			return errorf(KindInternal, cerr.err, "error finalizing upload: %v", cerr.err)
		}
		return writeError(cerr.err, req.ContentLength)
	}
	committed = true
	return nil
}

// createTemp creates a new staging file in dir, readable only by root until
// its mode is set, registered with staging (if any) before it exists. It
// returns the file, its name in dir and the function that unregisters it,
// to be called once it is renamed or removed.
func createTemp(dir *identity.Dir, staging Staging) (*os.File, string, func(), error) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	name := TempPrefix + hex.EncodeToString(b[:])
	done := func() {}
	if staging != nil {
		done = staging.Begin(dir.Child(name))
	}
	fd, err := unix.Openat(dir.Fd(), name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		done()
		return nil, "", nil, &os.PathError{Op: "open", Path: dir.Child(name), Err: err}
	}
	return os.NewFile(uintptr(fd), dir.Child(name)), name, done, nil
}

// renameAt renames oldName in oldDir to newName in newDir; a symlink at
// either name is renamed or replaced, never followed.
func renameAt(oldDir *identity.Dir, oldName string, newDir *identity.Dir, newName string) error {
	if err := unix.Renameat(oldDir.Fd(), oldName, newDir.Fd(), newName); err != nil {
		return &os.LinkError{Op: "rename", Old: oldDir.Child(oldName), New: newDir.Child(newName), Err: err}
	}
	return nil
}

// copyBody streams body into f, telling read failures (client gone, stall,
// corrupt gzip) from write failures (disk full).
func copyBody(f *os.File, body io.Reader, contentLength int64) error {
	buf := make([]byte, copyBufferSize)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, werr := f.Write(buf[:n]); werr != nil {
				return writeError(werr, contentLength)
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			var stall *StallError
			if errors.As(rerr, &stall) {
				return &Error{Kind: KindStalled, Msg: stall.Error(), Err: rerr}
			}
			return errorf(KindInternal, rerr, "error writing file: %v", rerr)
		}
	}
}

func writeError(err error, contentLength int64) error {
	if noSpace(err) {
		if contentLength > 0 {
			return errorf(KindNoSpace, err, "attempted to write %d bytes: not enough disk space available", contentLength)
		}
		return errorf(KindNoSpace, err, "not enough disk space available")
	}
	return errorf(KindInternal, err, "error writing file: %v", err)
}

// applyMetadata stores md as user.e2b.* attributes on f. A filesystem
// without user xattrs is logged and tolerated. A set the filesystem refuses
// for its size is the client's problem (400), not a full disk (507): the
// kernel says E2BIG past its 64 KiB value limit, and ext4 says ENOSPC for
// attributes that do not fit its one xattr block even on an empty disk, so
// ENOSPC counts as "disk full" only when the filesystem has no block left.
func applyMetadata(f *os.File, md map[string]string, log *slog.Logger) error {
	if len(md) == 0 {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return errorf(KindInternal, err, "error writing file metadata: %v", err)
	}
	for k, v := range md {
		var serr error
		var full bool
		if err := rc.Control(func(fd uintptr) {
			if serr = setXattr(fd, fsops.MetadataPrefix+k, []byte(v)); errors.Is(serr, unix.ENOSPC) {
				full = noFreeBlocks(fd)
			}
		}); err != nil {
			serr = err
		}
		err := serr
		switch {
		case err == nil:
		case errors.Is(err, unix.ENOTSUP), errors.Is(err, unix.EOPNOTSUPP):
			if log != nil {
				log.Info("filesystem does not support file metadata; stored without it", "path", f.Name())
			}
			return nil
		case errors.Is(err, unix.E2BIG), errors.Is(err, unix.ERANGE), errors.Is(err, unix.ENOSPC) && !full:
			return errorf(KindBadRequest, err, "invalid metadata: too large for this filesystem: %v", err)
		case noSpace(err):
			return errorf(KindNoSpace, err, "not enough space for file metadata: %v", err)
		default:
			return errorf(KindInternal, err, "error writing file metadata: %v", err)
		}
	}
	return nil
}

// writeInPlace writes a device, FIFO or pseudo-filesystem file directly:
// there is nothing to replace atomically, and owner, mode and metadata are
// left alone. FIFOs are opened non-blocking, so a FIFO without a reader
// fails (ENXIO) instead of blocking the request forever in open(2);
// os.NewFile then drives the non-blocking descriptor through the poller.
// O_NOCTTY: a terminal written to never becomes envd's controlling terminal.
func writeInPlace(final *identity.Final, req WriteRequest) error {
	flags := unix.O_WRONLY | unix.O_TRUNC | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NOCTTY
	if final.Stat != nil && final.Stat.Mode&unix.S_IFMT == unix.S_IFIFO {
		flags |= unix.O_NONBLOCK
	}
	fd, err := unix.Openat(final.Dir.Fd(), final.Name, flags, 0)
	if err != nil {
		err = &os.PathError{Op: "open", Path: final.Path(), Err: err}
		return errorf(KindInternal, err, "error opening file: %v", err)
	}
	f := os.NewFile(uintptr(fd), final.Path())
	defer f.Close()
	// E2B's in-place events: whatever the writes themselves produce.
	defer req.Changes.Dir(final.Dir.Fd(), final.Dir.Path())
	if err := copyBody(f, req.Body, req.ContentLength); err != nil {
		return err
	}
	if err := f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return writeError(err, req.ContentLength)
	}
	return nil
}

// Written describes one uploaded file for the response (spec http.md §12.7).
type Written struct {
	Name     string            `json:"name"`
	Path     string            `json:"path"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// written builds the response entry of target, reading its metadata back.
func written(target string) Written {
	return Written{Name: filepath.Base(target), Path: target, Type: "file", Metadata: fsops.ReadMetadata(target)}
}
