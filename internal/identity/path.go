package identity

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
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
