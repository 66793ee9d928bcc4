package identity

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ErrTildeUser is returned for "~name/..." paths: envd only expands the
// requesting user's own home.
var ErrTildeUser = errors.New("cannot expand user-specific home dir")

// ExpandAndResolve turns a request path into the path envd acts on, for user
// u (spec http.md §4.2): empty means the default workdir (if set) else home;
// "~" and "~/x" expand to u's home; absolute paths are returned unchanged
// (not cleaned, symlinks kept); relative paths are joined to u's home.
func ExpandAndResolve(path string, u *User, defaultWorkdir string) (string, error) {
	if path == "" {
		path = defaultWorkdir
	}
	if strings.HasPrefix(path, "~") {
		if path != "~" && !strings.HasPrefix(path, "~/") {
			return "", fmt.Errorf("failed to expand path '%s' for user '%s': %w", path, u.Name, ErrTildeUser)
		}
		return filepath.Join(u.Home, path[1:]), nil
	}
	if filepath.IsAbs(path) {
		return path, nil
	}
	return filepath.Join(u.Home, path), nil
}

// ErrNotDirectory marks an existing path component that is not a directory.
var ErrNotDirectory = errors.New("path is a file")

// EnsureDirs creates every missing component of dir, each with mode 0755
// (under envd's umask) and owned by uid:gid; existing directories are left as
// they are (spec http.md §4.3). Ownership is only changed when envd runs as
// root. Concurrent creators are tolerated: a component someone else created
// meanwhile is still chowned.
func EnsureDirs(dir string, uid, gid uint32) error {
	dir = filepath.Clean(dir)
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("failed to create directory: %s is not absolute", dir)
	}
	chown := os.Geteuid() == 0
	// Fast path: the whole directory already exists.
	if st, err := os.Stat(dir); err == nil {
		if !st.IsDir() {
			return fmt.Errorf("%w: %s", ErrNotDirectory, dir)
		}
		return nil
	}
	cur := "/"
	for _, part := range strings.Split(dir, "/") {
		if part == "" {
			continue
		}
		cur = filepath.Join(cur, part)
		st, err := os.Stat(cur)
		if err == nil {
			if !st.IsDir() {
				return fmt.Errorf("%w: %s", ErrNotDirectory, cur)
			}
			continue
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("failed to create directory: %w", err)
		}
		if err := os.Mkdir(cur, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			if errors.Is(err, syscall.ENOTDIR) {
				return fmt.Errorf("%w: %s", ErrNotDirectory, cur)
			}
			return fmt.Errorf("failed to create directory: %w", err)
		}
		if chown {
			if err := os.Chown(cur, int(uid), int(gid)); err != nil {
				return fmt.Errorf("failed to chown directory: %w", err)
			}
		}
	}
	return nil
}
