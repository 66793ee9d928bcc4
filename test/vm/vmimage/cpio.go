package vmimage

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Archive is an initramfs being assembled in memory: a set of entries keyed
// by path, written out as a "newc" cpio archive (the format the kernel
// unpacks into its root filesystem). Parent directories are created
// implicitly so callers only name what they care about.
type Archive struct {
	entries map[string]*entry
}

type entry struct {
	mode     uint32 // type bits | permission bits
	uid, gid uint32
	data     []byte // file contents or symlink target
	src      string // file contents from this host path (read at write time)
	rdevMaj  uint32
	rdevMin  uint32
}

const (
	sIFDIR  = 0o040000
	sIFREG  = 0o100000
	sIFLNK  = 0o120000
	sIFCHR  = 0o020000
	permDir = 0o755
)

// NewArchive returns an empty archive.
func NewArchive() *Archive { return &Archive{entries: map[string]*entry{}} }

func clean(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}

func (a *Archive) parents(p string) {
	for dir := path.Dir(p); dir != "." && dir != "/" && dir != ""; dir = path.Dir(dir) {
		if _, ok := a.entries[dir]; !ok {
			a.entries[dir] = &entry{mode: sIFDIR | permDir}
		}
	}
}

// Dir adds a directory with the given permissions and owner.
func (a *Archive) Dir(p string, perm os.FileMode, uid, gid int) {
	p = clean(p)
	a.parents(p)
	mode := sIFDIR | uint32(perm.Perm())
	if perm&os.ModeSticky != 0 {
		mode |= 0o1000
	}
	a.entries[p] = &entry{mode: mode, uid: uint32(uid), gid: uint32(gid)}
}

// File adds a regular file with the given contents.
func (a *Archive) File(p string, data []byte, perm os.FileMode) {
	p = clean(p)
	a.parents(p)
	a.entries[p] = &entry{mode: sIFREG | uint32(perm.Perm()), data: data}
}

// HostFile adds a regular file whose contents are read from src when the
// archive is written.
func (a *Archive) HostFile(p, src string, perm os.FileMode) {
	p = clean(p)
	a.parents(p)
	a.entries[p] = &entry{mode: sIFREG | uint32(perm.Perm()), src: src}
}

// Symlink adds a symbolic link p pointing at target.
func (a *Archive) Symlink(p, target string) {
	p = clean(p)
	a.parents(p)
	a.entries[p] = &entry{mode: sIFLNK | 0o777, data: []byte(target)}
}

// CharDev adds a character device node.
func (a *Archive) CharDev(p string, perm os.FileMode, major, minor uint32) {
	p = clean(p)
	a.parents(p)
	a.entries[p] = &entry{mode: sIFCHR | uint32(perm.Perm()), rdevMaj: major, rdevMin: minor}
}

// Has reports whether p is already in the archive.
func (a *Archive) Has(p string) bool {
	_, ok := a.entries[clean(p)]
	return ok
}

// WriteDir materialises the archive as a directory tree under dir (which
// must not exist), with every entry's mode and owner, for an image builder
// that takes a directory (mkfs.ext4 -d). Owners other than root need root.
func (a *Archive) WriteDir(dir string) error {
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	sort.Strings(names) // parents first
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	for _, n := range names {
		e := a.entries[n]
		p := filepath.Join(dir, n)
		perm := os.FileMode(e.mode & 0o777)
		var err error
		switch e.mode & 0o170000 {
		case sIFDIR:
			err = os.Mkdir(p, perm)
			if err == nil && e.mode&0o1000 != 0 {
				err = os.Chmod(p, perm|os.ModeSticky)
			} else if err == nil {
				err = os.Chmod(p, perm) // past the umask
			}
		case sIFREG:
			data := e.data
			if e.src != "" {
				data, err = os.ReadFile(e.src)
			}
			if err == nil {
				err = os.WriteFile(p, data, perm)
			}
			if err == nil {
				err = os.Chmod(p, perm)
			}
		case sIFLNK:
			err = os.Symlink(string(e.data), p)
		case sIFCHR:
			err = unix.Mknod(p, unix.S_IFCHR|(e.mode&0o777), int(unix.Mkdev(e.rdevMaj, e.rdevMin)))
		default:
			err = fmt.Errorf("unsupported entry type %o", e.mode)
		}
		if err == nil && (e.uid != 0 || e.gid != 0) {
			err = os.Lchown(p, int(e.uid), int(e.gid))
		}
		if err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
	}
	return nil
}

// WriteFile writes the archive to dst atomically (temporary file + rename).
func (a *Archive) WriteFile(dst string) error {
	tmp := dst + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if err := a.Write(w); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}

// Write writes the archive in newc format. Entries are sorted so that every
// directory precedes its contents (the kernel creates entries in order).
func (a *Archive) Write(w io.Writer) error {
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	ino := uint32(1)
	for _, n := range names {
		e := a.entries[n]
		data := e.data
		if e.src != "" {
			b, err := os.ReadFile(e.src)
			if err != nil {
				return err
			}
			data = b
		}
		nlink := uint32(1)
		if e.mode&0o170000 == sIFDIR {
			nlink = 2
		}
		if err := writeRecord(w, n, ino, e.mode, e.uid, e.gid, nlink, e.rdevMaj, e.rdevMin, data); err != nil {
			return err
		}
		ino++
	}
	return writeRecord(w, "TRAILER!!!", 0, 0, 0, 0, 1, 0, 0, nil)
}

func writeRecord(w io.Writer, name string, ino, mode, uid, gid, nlink, rmaj, rmin uint32, data []byte) error {
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, uid, gid, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+8)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = pad4(buf)
	if _, err := w.Write(buf); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	if r := len(data) % 4; r != 0 {
		_, err := w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
