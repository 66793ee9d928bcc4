package files

import "golang.org/x/sys/unix"

// Pseudo filesystems (statfs f_type) whose files cannot be created by
// rename and whose sizes are not real: uploads write them in place,
// downloads stream them without a length (spec http.md §10.2, §12.5).
var pseudoFS = map[uint32]bool{
	0x9fa0:     true, // procfs
	0x62656572: true, // sysfs
	0x27e0eb:   true, // cgroup
	0x63677270: true, // cgroup2
	0x64626720: true, // debugfs
	0x74726163: true, // tracefs
	0x73636673: true, // securityfs
	0x62656570: true, // configfs
	0x1cd1:     true, // devpts
}

// onPseudoFS reports whether path lies on one of pseudoFS. A failing statfs
// counts as "no": the normal path then reports the real error.
func onPseudoFS(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return pseudoFS[uint32(st.Type)]
}

// touch opens path write-only and truncates it to its own size: nothing
// changes, but the kernel emits IN_MODIFY, so watchers see a WRITE for a
// file that was replaced by rename (spec http.md §12.5 step 8).
func touch(path string) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	return unix.Ftruncate(fd, st.Size)
}

// setXattr stores one metadata attribute on an open file.
func setXattr(fd uintptr, name string, value []byte) error {
	return unix.Fsetxattr(int(fd), name, value, 0)
}
