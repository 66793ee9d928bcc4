package lifecycle

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

const (
	msNoSuid = unix.MS_NOSUID
	msNoDev  = unix.MS_NODEV
	msNoExec = unix.MS_NOEXEC
)

func linuxPID1System() pid1System {
	return pid1System{
		mount:      unix.Mount,
		mkdirAll:   func(path string) error { return os.MkdirAll(path, 0o755) },
		mountInfo:  "/proc/self/mountinfo",
		devDir:     "/dev",
		cgroupDir:  "/sys/fs/cgroup",
		isCgroup2:  isCgroup2,
		writeOnly:  writeOnly,
		loopbackUp: loopbackUp,
		cadOff:     cadOff,
	}
}

func isCgroup2(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// writeOnly writes value to an existing file with one write(2).
func writeOnly(path, value string) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.Write(fd, []byte(value))
	return err
}

// loopbackUp sets IFF_UP on lo if it is down; addresses are left alone.
func loopbackUp() (bool, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return false, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return false, err
	}
	flags := ifr.Uint16()
	if flags&unix.IFF_UP != 0 {
		return false, nil
	}
	ifr.SetUint16(flags | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return false, err
	}
	return true, nil
}

// cadOff makes Ctrl-Alt-Del send SIGINT to init instead of rebooting.
func cadOff() error {
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	if errors.Is(err, unix.EINVAL) {
		return errChildPIDNamespace
	}
	return err
}
