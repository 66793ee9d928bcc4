package fsops

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// FileType is the type reported for an entry. Symlinks report the type of
// their final target, so there is no symlink type (spec rpc.md §6).
type FileType int

// File types.
const (
	TypeUnspecified FileType = iota
	TypeFile
	TypeDirectory
)

// Entry describes one path (spec rpc.md §6).
type Entry struct {
	Name string
	Path string
	Type FileType
	// Size is st_size of the lstat: for a symlink, the length of its text.
	Size int64
	// Mode holds the permission bits (0777) of the entry, or of a symlink's
	// final target (0 when that cannot be stat-ed).
	Mode uint32
	// Permissions renders the lstat mode like os.FileMode.String().
	Permissions string
	Owner       string
	Group       string
	// ModTime is the lstat mtime; zero when st_mtim is 0.
	ModTime time.Time
	// SymlinkTarget is set for symlinks only: the fully resolved path, or the
	// link's own path when resolution fails.
	SymlinkTarget *string
	// Metadata holds the user.e2b.* extended attributes, prefix stripped.
	Metadata map[string]string
}

// Stat describes p without following a final symlink (spec rpc.md §6).
func Stat(names Names, p string) (*Entry, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		if notExist(err) {
			return nil, Errorf(KindNotFound, err, "file not found: %v", err)
		}
		return nil, Errorf(KindInternal, err, "error getting file info: %v", err)
	}
	return describe(names, p, fi), nil
}

// describe builds the entry of p from its lstat result.
func describe(names Names, p string, fi fs.FileInfo) *Entry {
	e := &Entry{
		Name:        filepath.Base(p),
		Path:        p,
		Size:        fi.Size(),
		Permissions: fi.Mode().String(),
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.Owner = names.UserName(st.Uid)
		e.Group = names.GroupName(st.Gid)
		if st.Mtim.Sec != 0 || st.Mtim.Nsec != 0 {
			e.ModTime = time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
		}
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		if target, err := os.Stat(p); err == nil {
			e.Type = typeOf(target.Mode())
			e.Mode = uint32(target.Mode().Perm())
		}
		resolved, err := filepath.EvalSymlinks(p)
		if err != nil {
			resolved = p
		}
		e.SymlinkTarget = &resolved
	} else {
		e.Type = typeOf(fi.Mode())
		e.Mode = uint32(fi.Mode().Perm())
	}
	e.Metadata = ReadMetadata(p)
	return e
}

func typeOf(m fs.FileMode) FileType {
	switch {
	case m.IsRegular():
		return TypeFile
	case m.IsDir():
		return TypeDirectory
	}
	return TypeUnspecified
}
