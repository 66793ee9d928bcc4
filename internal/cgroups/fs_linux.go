package cgroups

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// isCgroup2 reports whether path is on a cgroup2 filesystem. On cgroup v1
// a directory could be created, but the kernel would reject its descriptor
// at spawn time.
func isCgroup2(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC, nil
}

// writeProperty writes value to an existing cgroup interface file. It never
// creates the file: a missing one means its controller is not enabled.
func writeProperty(path, value string) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_TRUNC|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for {
		_, err = unix.Write(fd, []byte(value))
		if err != unix.EINTR {
			return err
		}
	}
}

// openDir opens a group directory for CLONE_INTO_CGROUP.
func openDir(path string) (int, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}
