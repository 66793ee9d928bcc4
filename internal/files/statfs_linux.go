package files

import (
	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/identity"
)

// isPseudoFS reports the filesystems (statfs f_type) whose files cannot be
// created by rename and whose sizes are not real: uploads write them in
// place, downloads stream them without a length (spec http.md §10.2,
// §12.5).
func isPseudoFS(fsType uint32) bool {
	switch fsType {
	case 0x9fa0, // procfs
		0x62656572, // sysfs
		0x27e0eb,   // cgroup
		0x63677270, // cgroup2
		0x64626720, // debugfs
		0x74726163, // tracefs
		0x73636673, // securityfs
		0x62656570, // configfs
		0x1cd1:     // devpts
		return true
	}
	return false
}

// onPseudoFS reports whether path lies on a pseudo filesystem. A failing
// statfs counts as "no": the normal path then reports the real error.
func onPseudoFS(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return isPseudoFS(uint32(st.Type))
}

// onPseudoFSFd is onPseudoFS for an open descriptor.
func onPseudoFSFd(fd int) bool {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return false
	}
	return isPseudoFS(uint32(st.Type))
}

// onPseudoFSAt is onPseudoFS for a walked final entry: the filesystem of the
// entry itself when it exists (it may be a mount point), else of its
// directory.
func onPseudoFSAt(f *identity.Final) bool {
	var st unix.Statfs_t
	if f.Stat == nil || f.Name == "." {
		if err := unix.Fstatfs(f.Dir.Fd(), &st); err != nil {
			return false
		}
		return isPseudoFS(uint32(st.Type))
	}
	fd, err := unix.Openat(f.Dir.Fd(), f.Name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if err := unix.Fstatfs(fd, &st); err != nil {
		return false
	}
	return isPseudoFS(uint32(st.Type))
}

// noFreeBlocks reports whether the filesystem of fd has no block left for
// an unprivileged writer (f_bavail): an ENOSPC there is a full disk.
func noFreeBlocks(fd uintptr) bool {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(fd), &st); err != nil {
		return true // cannot tell: keep the disk-full answer
	}
	return st.Bavail == 0
}

// setXattr stores one metadata attribute on an open file.
func setXattr(fd uintptr, name string, value []byte) error {
	return unix.Fsetxattr(int(fd), name, value, 0)
}
