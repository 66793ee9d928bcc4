package identity

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Bounds of one physical walk. maxWalkHops counts the symlinks followed and
// the components looked at again because they changed under the walk (a
// racing process cannot keep a walk busy forever); 255 is the limit of
// filepath.EvalSymlinks. maxWalkComponents bounds the components waiting to
// be walked (link texts push theirs).
const (
	maxWalkHops       = 255
	maxWalkComponents = 4096
)

// dirFlags open a directory for walking: O_PATH needs only search
// permission (like the kernel's own walk) and the descriptor serves as the
// base of *at calls; O_NOFOLLOW|O_DIRECTORY refuse anything that was swapped
// for a symlink or a file since it was looked at.
const dirFlags = unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC

// Dir is a directory reached by a physical walk from "/": every component
// was entered through a descriptor of its parent, and symlinks were resolved
// as the kernel resolves them (a relative link against the directory that
// actually holds it, ".." physically), never by joining strings. The
// symlinks followed on the way are remembered, so that the protected-symlink
// rule (spec http.md §12.5 step 2) can be applied before envd acts in the
// directory. A Dir is used by one request at a time and must be closed.
type Dir struct {
	fd    int
	path  string
	links []followedLink
	hops  int
	db    *Database // loaded at the first check that needs a link owner
	made  []MadeIn
}

// MadeIn is a directory in which a walk created a directory: its physical
// path and its device and inode numbers. Watchers of it saw a CREATE.
type MadeIn struct {
	Path     string
	Dev, Ino uint64
}

// Made lists the directories in which this walk created a directory, in
// order (at most one per component walked).
func (d *Dir) Made() []MadeIn { return d.made }

type followedLink struct {
	path string
	uid  uint32
}

// Create says how a walk creates missing directories (spec http.md §4.3).
type Create struct {
	UID, GID uint32
	// Chown gives created directories to UID:GID (only root can).
	Chown bool
}

// Path is the physical path of the directory.
func (d *Dir) Path() string { return d.path }

// Fd is the directory's descriptor (O_PATH: a base for *at calls), valid
// until Close.
func (d *Dir) Fd() int { return d.fd }

// Child is the physical path of name in the directory.
func (d *Dir) Child(name string) string { return filepath.Join(d.path, name) }

// Close releases the descriptor.
func (d *Dir) Close() error {
	if d.fd < 0 {
		return nil
	}
	err := unix.Close(d.fd)
	d.fd = -1
	return err
}

// OpenDir walks to the existing directory path (absolute). A missing
// component is an error that matches fs.ErrNotExist.
func OpenDir(path string) (*Dir, error) {
	d, err := openRoot(path)
	if err != nil {
		return nil, err
	}
	if err := d.walk(path, nil); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// EnsureDir walks to the directory path (absolute), creating every missing
// component with mode 0755 (under envd's umask) owned by uid:gid when envd
// runs as root (spec http.md §4.3): each is made with mkdirat in the
// directory held open, then opened with O_NOFOLLOW and chowned through that
// descriptor, so a process that swaps a new directory for a symlink cannot
// make envd chown the link's target. A component someone else created
// meanwhile (EEXIST) is entered as existing and not chowned; existing
// directories are never changed. Before creating anything in a directory
// reached through symlinks, their owners must be allowed to create there
// (protected symlinks) — otherwise a *LinkError.
func EnsureDir(path string, uid, gid uint32) (*Dir, error) {
	d, err := openRoot(path)
	if err != nil {
		return nil, err
	}
	if err := d.walk(path, &Create{UID: uid, GID: gid, Chown: Privileged()}); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// EnsureDirs is EnsureDir for callers that do not act in the directory.
func EnsureDirs(dir string, uid, gid uint32) error {
	d, err := EnsureDir(dir, uid, gid)
	if err != nil {
		return err
	}
	return d.Close()
}

func openRoot(path string) (*Dir, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("failed to create directory: %s is not absolute", path)
	}
	fd, err := unix.Open("/", dirFlags, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: "/", Err: err}
	}
	return &Dir{fd: fd, path: "/"}, nil
}

// SplitTarget splits an absolute path into the directory to walk and the
// last component. A path that names a directory by its form (a trailing
// slash, a last "." or "..") yields the whole path and ".".
func SplitTarget(p string) (dir, name string) {
	i := strings.LastIndexByte(p, '/')
	dir, name = p[:i+1], p[i+1:]
	if name == "" || name == "." || name == ".." {
		return p, "."
	}
	return dir, name
}

// walk descends through the components of p, each of which must be a
// directory; create (nil: none) makes the missing ones.
func (d *Dir) walk(p string, create *Create) error {
	pending, err := pushComponents(nil, p)
	if err != nil {
		return err
	}
	for len(pending) > 0 {
		name := pending[len(pending)-1]
		pending = pending[:len(pending)-1]
		switch name {
		case "", ".":
			continue
		case "..":
			if err := d.enter(".."); err != nil {
				return err
			}
			continue
		}
		var st unix.Stat_t
		err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == unix.ENOENT && create != nil {
			again, err := d.mkdir(name, create)
			if err != nil {
				return err
			}
			if again {
				if pending, err = d.retry(pending, name); err != nil {
					return err
				}
			}
			continue
		}
		if err != nil {
			return d.walkError(create, &os.PathError{Op: "lstat", Path: d.Child(name), Err: err})
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			fd, err := unix.Openat(d.fd, name, dirFlags, 0)
			if err == unix.ENOTDIR || err == unix.ELOOP || err == unix.ENOENT {
				// Swapped since the lstat: look again.
				if pending, err = d.retry(pending, name); err != nil {
					return err
				}
				continue
			}
			if err != nil {
				return d.walkError(create, &os.PathError{Op: "open", Path: d.Child(name), Err: err})
			}
			d.replace(fd, d.Child(name))
		case unix.S_IFLNK:
			target, err := d.readLink(name, &st)
			if err != nil {
				return d.walkError(create, err)
			}
			if pending, err = pushComponents(pending, target); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: %s", ErrNotDirectory, d.Child(name))
		}
	}
	return nil
}

// walkError adds the EnsureDirs prefix to failures of a creating walk.
func (d *Dir) walkError(create *Create, err error) error {
	if create != nil {
		return fmt.Errorf("failed to create directory: %w", err)
	}
	return err
}

// retry puts name back to be looked at again, counting it against the hop
// budget.
func (d *Dir) retry(pending []string, name string) ([]string, error) {
	d.hops++
	if d.hops > maxWalkHops {
		return nil, &os.PathError{Op: "open", Path: d.Child(name), Err: unix.ELOOP}
	}
	return append(pending, name), nil
}

// mkdir creates name in d and enters it. again is true when the name is
// not the directory envd just made (someone else created it, or swapped it
// right after): the caller looks at it again and enters it as existing,
// without chowning it.
func (d *Dir) mkdir(name string, create *Create) (again bool, err error) {
	if err := d.CheckCreate(); err != nil {
		return false, err
	}
	if err := unix.Mkdirat(d.fd, name, 0o755); err != nil {
		if err == unix.EEXIST {
			return true, nil
		}
		return false, fmt.Errorf("failed to create directory: %w", &os.PathError{Op: "mkdir", Path: d.Child(name), Err: err})
	}
	var parent unix.Stat_t
	if unix.Fstat(d.fd, &parent) == nil {
		d.made = append(d.made, MadeIn{Path: d.path, Dev: parent.Dev, Ino: parent.Ino})
	}
	fd, err := unix.Openat(d.fd, name, dirFlags, 0)
	if err != nil {
		return true, nil
	}
	if create.Chown {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Uid != uint32(os.Geteuid()) {
			// Not the directory envd made (renamed away and replaced):
			// never chown someone else's directory.
			unix.Close(fd)
			return true, nil
		}
		if err := unix.Fchownat(fd, "", int(create.UID), int(create.GID), unix.AT_EMPTY_PATH); err != nil {
			unix.Close(fd)
			return false, fmt.Errorf("failed to chown directory: %w", &os.PathError{Op: "chown", Path: d.Child(name), Err: err})
		}
	}
	d.replace(fd, d.Child(name))
	return false, nil
}

// enter moves to the directory name (".." is the physical parent; at "/"
// it stays there, as in the kernel).
func (d *Dir) enter(name string) error {
	fd, err := unix.Openat(d.fd, name, dirFlags, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: d.Child(name), Err: err}
	}
	d.replace(fd, d.Child(name))
	return nil
}

func (d *Dir) replace(fd int, path string) {
	unix.Close(d.fd)
	d.fd, d.path = fd, path
}

// readLink reads the symlink name (st is its lstat), records it as
// followed and, for an absolute target, moves the walk back to "/".
func (d *Dir) readLink(name string, st *unix.Stat_t) (string, error) {
	d.hops++
	if d.hops > maxWalkHops {
		return "", &os.PathError{Op: "open", Path: d.Child(name), Err: unix.ELOOP}
	}
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(d.fd, name, buf)
	if err != nil {
		return "", &os.PathError{Op: "readlink", Path: d.Child(name), Err: err}
	}
	if n >= len(buf) {
		return "", &os.PathError{Op: "readlink", Path: d.Child(name), Err: unix.ENAMETOOLONG}
	}
	target := string(buf[:n])
	d.links = append(d.links, followedLink{path: d.Child(name), uid: st.Uid})
	if strings.HasPrefix(target, "/") {
		fd, err := unix.Open("/", dirFlags, 0)
		if err != nil {
			return "", &os.PathError{Op: "open", Path: "/", Err: err}
		}
		d.replace(fd, "/")
	}
	return target, nil
}

// pushComponents adds the components of p to the stack of components still
// to walk (the next one last).
func pushComponents(pending []string, p string) ([]string, error) {
	parts := strings.Split(p, "/")
	if len(pending)+len(parts) > maxWalkComponents {
		return nil, &os.PathError{Op: "open", Path: p, Err: unix.ENAMETOOLONG}
	}
	for i := len(parts) - 1; i >= 0; i-- {
		pending = append(pending, parts[i])
	}
	return pending, nil
}

// clone is an independent copy of d (its own descriptor).
func (d *Dir) clone() (*Dir, error) {
	fd, err := unix.FcntlInt(uintptr(d.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "dup", Path: d.path, Err: err}
	}
	return &Dir{fd: fd, path: d.path, links: append([]followedLink(nil), d.links...), hops: d.hops, db: d.db}, nil
}

// Final is what a write through a path lands on: the entry Name in Dir,
// after the symlink chain at the path was followed (spec http.md §12.5
// step 2). Name is "." when the path names a directory by its form.
type Final struct {
	Dir  *Dir
	Name string
	// Stat is the lstat of the entry; nil when it does not exist (it will be
	// created there, as writing through a dangling symlink does).
	Stat *unix.Stat_t
}

// Path is the physical path of the final entry.
func (f *Final) Path() string {
	if f.Name == "." {
		return f.Dir.path
	}
	return f.Dir.Child(f.Name)
}

// Close releases the final's directory.
func (f *Final) Close() error { return f.Dir.Close() }

// IsDir reports whether the final entry exists and is a directory.
func (f *Final) IsDir() bool {
	return f.Stat != nil && f.Stat.Mode&unix.S_IFMT == unix.S_IFDIR
}

// Resolve follows the entry name of d the way writing through it would: a
// symlink chain is followed physically (the directories on the way must
// exist; nothing is created), and the result is the entry it ends at. d is
// left as it was.
func (d *Dir) Resolve(name string) (*Final, error) {
	w, err := d.clone()
	if err != nil {
		return nil, err
	}
	f, err := w.resolve(name)
	if err != nil {
		w.Close()
		return nil, err
	}
	return f, nil
}

func (d *Dir) resolve(name string) (*Final, error) {
	for {
		if name == "." {
			var st unix.Stat_t
			if err := unix.Fstat(d.fd, &st); err != nil {
				return nil, &os.PathError{Op: "stat", Path: d.path, Err: err}
			}
			return &Final{Dir: d, Name: ".", Stat: &st}, nil
		}
		var st unix.Stat_t
		err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == unix.ENOENT {
			return &Final{Dir: d, Name: name}, nil
		}
		if err != nil {
			return nil, &os.PathError{Op: "lstat", Path: d.Child(name), Err: err}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			return &Final{Dir: d, Name: name, Stat: &st}, nil
		}
		target, err := d.readLink(name, &st)
		if err != nil {
			return nil, err
		}
		dir, last := SplitTarget(target)
		if err := d.walk(dir, nil); err != nil {
			return nil, err
		}
		name = last
	}
}

// CheckCreate applies the protected-symlink rule to creating or removing an
// entry in d: every symlink followed to reach d must be owned by root or by
// a user who may write and search d by its permission bits.
func (d *Dir) CheckCreate() error {
	if !d.hasUserLinks() {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return &os.PathError{Op: "stat", Path: d.path, Err: err}
	}
	return d.checkLinks(modeOf(&st), AccessCreate)
}

// Check applies the protected-symlink rule to acting on the final entry:
// every symlink followed (to its directory and in the chain) must be owned
// by root or by a user who could do want to the entry by its permission
// bits — or, when it does not exist, create it in its directory.
func (f *Final) Check(want Access) error {
	if f.Stat == nil {
		return f.Dir.CheckCreate()
	}
	if !f.Dir.hasUserLinks() {
		return nil
	}
	return f.Dir.checkLinks(modeOf(f.Stat), want)
}

func (d *Dir) hasUserLinks() bool {
	for _, l := range d.links {
		if l.uid != 0 {
			return true
		}
	}
	return false
}

func (d *Dir) checkLinks(m fileMode, want Access) error {
	if d.db == nil {
		db, err := Load()
		if err != nil {
			db = &Database{} // no names and no groups: only owner and other bits count
		}
		d.db = db
	}
	for _, l := range d.links {
		if l.uid == 0 || mayAccess(l.uid, d.db.groupsOf(l.uid), m, want) {
			continue
		}
		return &LinkError{Link: l.path, Owner: d.db.UserName(l.uid)}
	}
	return nil
}

func modeOf(st *unix.Stat_t) fileMode {
	return fileMode{mode: st.Mode & 0o7777, uid: st.Uid, gid: st.Gid}
}

// IsLinkRefused reports a *LinkError in err's chain.
func IsLinkRefused(err error) bool { return errors.Is(err, ErrLinkRefused) }
