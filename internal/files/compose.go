package files

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"

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
	Log     *slog.Logger
}

// Composed describes the result (spec http.md §13.2 step 12).
type Composed struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

// Compose checks every source in order, concatenates them into a temporary
// file with kernel-side copies, renames it onto the destination and only
// then deletes the sources. Any failure leaves the destination and the
// sources as they were.
func Compose(req ComposeRequest) (*Composed, error) {
	resolved := make([]string, len(req.Sources))
	for i, src := range req.Sources {
		p, err := req.Resolve(src)
		if err != nil {
			return nil, errorf(KindBadRequest, err, "error resolving source path %q: %v", src, err)
		}
		if p == req.Destination {
			return nil, errorf(KindBadRequest, nil, "source path %q cannot be the same as destination", src)
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, errorf(KindNotFound, err, "source file not found: %s", src)
		}
		if !st.Mode().IsRegular() {
			return nil, errorf(KindBadRequest, nil, "source path is not a regular file: %s", src)
		}
		resolved[i] = p
	}
	if err := identity.EnsureDirs(filepath.Dir(req.Destination), req.Owner.UID, req.Owner.GID); err != nil {
		return nil, errorf(KindInternal, err, "error ensuring directories: %v", err)
	}
	tmp, err := createTemp(filepath.Dir(req.Destination))
	if err != nil {
		if noSpace(err) {
			return nil, errorf(KindNoSpace, err, "not enough disk space available")
		}
		return nil, errorf(KindInternal, err, "error creating destination file: %v", err)
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
			return nil, errorf(KindInternal, err, "error changing file ownership: %v", err)
		}
	}
	if err := tmp.Chmod(0o644); err != nil {
		return nil, errorf(KindInternal, err, "error changing file mode: %v", err)
	}
	for i, p := range resolved {
		if err := appendFile(tmp, p); err != nil {
			if noSpace(err) {
				return nil, errorf(KindNoSpace, err, "not enough disk space available")
			}
			return nil, errorf(KindInternal, err, "error composing source %s: %v", req.Sources[i], err)
		}
	}
	if err := tmp.Close(); err != nil {
		if noSpace(err) {
			return nil, errorf(KindNoSpace, err, "not enough disk space available")
		}
		return nil, errorf(KindInternal, err, "error finalizing compose: %v", err)
	}
	if err := os.Rename(tmp.Name(), req.Destination); err != nil {
		return nil, errorf(KindInternal, err, "error finalizing compose: %v", err)
	}
	committed = true
	if err := touch(req.Destination); err != nil && req.Log != nil {
		req.Log.Debug("cannot touch composed file for watchers", "path", req.Destination, "error", err.Error())
	}
	for _, p := range resolved {
		_ = os.Remove(p)
	}
	return &Composed{Path: req.Destination, Name: filepath.Base(req.Destination), Type: "file"}, nil
}

// appendFile copies src to the end of dst. io.Copy between two *os.File
// uses copy_file_range (then splice/sendfile, then read/write) on Linux.
func appendFile(dst *os.File, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(dst, f)
	return err
}
