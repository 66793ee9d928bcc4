package files

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

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

// maxLinkHops bounds following a symlink chain at the target.
const maxLinkHops = 255

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
	Log           *slog.Logger
}

// Write stores the body at the target atomically: a temporary file in the
// final directory gets the data, owner, mode and metadata, then replaces the
// file by rename. On any failure the temporary file is removed and the
// previous content is untouched. Devices, FIFOs and files on pseudo
// filesystems are written in place instead.
func Write(req WriteRequest) error {
	if err := identity.EnsureDirs(filepath.Dir(req.Target), req.Owner.UID, req.Owner.GID); err != nil {
		return errorf(KindInternal, err, "error ensuring directories: %v", err)
	}
	final, fi, err := followLinks(req.Target)
	if err != nil {
		return errorf(KindInternal, err, "error opening file: %v", err)
	}
	if fi != nil && fi.IsDir() {
		return errorf(KindBadRequest, nil, "path is a directory: %s", final)
	}
	if (fi != nil && !fi.Mode().IsRegular()) || onPseudoFS(statfsPath(final, fi)) {
		return writeInPlace(final, fi, req)
	}
	mode := os.FileMode(0o644)
	if fi != nil {
		mode = fi.Mode().Perm()
	}
	tmp, err := createTemp(filepath.Dir(final))
	if err != nil {
		if noSpace(err) {
			return errorf(KindNoSpace, err, "not enough inodes available: %v", err)
		}
		return errorf(KindInternal, err, "error opening file: %v", err)
	}
	committed := false
	defer func() {
		if !committed {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
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
	if err := tmp.Close(); err != nil {
		return writeError(err, req.ContentLength)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return errorf(KindInternal, err, "error finalizing upload: %v", err)
	}
	committed = true
	if err := touch(final); err != nil && req.Log != nil {
		req.Log.Debug("cannot touch uploaded file for watchers", "path", final, "error", err.Error())
	}
	return nil
}

// statfsPath is the path whose filesystem decides the in-place exception:
// the file itself when it exists, else its directory.
func statfsPath(final string, fi fs.FileInfo) string {
	if fi != nil {
		return final
	}
	return filepath.Dir(final)
}

// followLinks resolves a symlink chain at target. It returns the path that
// is written and its lstat (nil when it does not exist: it will be created
// there, as writing through a dangling link does).
func followLinks(target string) (string, fs.FileInfo, error) {
	cur := target
	for hop := 0; ; hop++ {
		fi, err := os.Lstat(cur)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return cur, nil, nil
			}
			return "", nil, err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return cur, fi, nil
		}
		if hop >= maxLinkHops {
			return "", nil, &os.PathError{Op: "open", Path: target, Err: syscall.ELOOP}
		}
		link, err := os.Readlink(cur)
		if err != nil {
			return "", nil, err
		}
		if !filepath.IsAbs(link) {
			link = filepath.Join(filepath.Dir(cur), link)
		}
		cur = link
	}
}

// createTemp creates a new staging file in dir, readable only by root until
// its mode is set.
func createTemp(dir string) (*os.File, error) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	name := filepath.Join(dir, TempPrefix+hex.EncodeToString(b[:]))
	return os.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
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
// without user xattrs is logged and tolerated.
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
		if err := rc.Control(func(fd uintptr) { serr = setXattr(fd, fsops.MetadataPrefix+k, []byte(v)) }); err != nil {
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
// fails (ENXIO) instead of blocking the request forever in open(2).
func writeInPlace(final string, fi fs.FileInfo, req WriteRequest) error {
	flags := os.O_WRONLY | os.O_TRUNC
	if fi != nil && fi.Mode()&fs.ModeNamedPipe != 0 {
		flags |= syscall.O_NONBLOCK
	}
	f, err := os.OpenFile(final, flags, 0)
	if err != nil {
		return errorf(KindInternal, err, "error opening file: %v", err)
	}
	defer f.Close()
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
