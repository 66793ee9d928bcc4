package fsfreeze

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// The freeze ioctls (linux/fs.h); the codes are the same on amd64 and arm64.
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

// freezeIoctl opens target read-only and issues FIFREEZE or FITHAW with
// argument 0. EBUSY from FIFREEZE (already frozen) and EINVAL from FITHAW
// (not frozen) are success: both endpoints are idempotent.
func freezeIoctl(target string, freeze bool) error {
	fd, err := openRetry(target)
	if err != nil {
		return fmt.Errorf("open %s: %w", target, err)
	}
	defer unix.Close(fd)
	req, name, ok := uintptr(ioctlFITHAW), "FITHAW", unix.EINVAL
	if freeze {
		req, name, ok = ioctlFIFREEZE, "FIFREEZE", unix.EBUSY
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, 0)
		switch {
		case errno == 0 || errno == ok:
			return nil
		case errno == unix.EINTR:
			continue
		}
		return fmt.Errorf("%s %s: %w", name, target, errno)
	}
}

func openRetry(path string) (int, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}

// stdoutOnFilesystem reports whether envd's standard output is a file on
// target's filesystem: a pipe, socket or console has the device of its own
// pseudo filesystem, so comparing devices is enough.
func stdoutOnFilesystem(target string) bool {
	var out, tgt unix.Stat_t
	if unix.Fstat(1, &out) != nil || unix.Stat(target, &tgt) != nil {
		return false
	}
	return out.Dev == tgt.Dev
}
