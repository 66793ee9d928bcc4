package process

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// openPTY allocates a pseudo-terminal of size sz. The master is returned
// in non-blocking mode, registered with Go's poller, so that closing it
// unblocks a pending read or write (pty.Open leaves it blocking because it
// calls Fd); the slave stays blocking, as the child expects.
func openPTY(sz Size) (master, slave *os.File, err error) {
	m, s, err := pty.Open()
	if err != nil {
		return nil, nil, err
	}
	fd, err := unix.FcntlInt(m.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	_ = m.Close()
	if err != nil {
		_ = s.Close()
		return nil, nil, fmt.Errorf("dup terminal master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		_ = s.Close()
		return nil, nil, fmt.Errorf("terminal master: %w", err)
	}
	master = os.NewFile(uintptr(fd), "/dev/ptmx")
	if err := setWinsize(master, sz); err != nil {
		_ = master.Close()
		_ = s.Close()
		return nil, nil, fmt.Errorf("set terminal size: %w", err)
	}
	return master, s, nil
}

// setWinsize is TIOCSWINSZ without taking f out of non-blocking mode.
// Sizes beyond the kernel's 16-bit fields are clamped.
func setWinsize(f *os.File, sz Size) error {
	ws := &unix.Winsize{Col: uint16(min(sz.Cols, 0xffff)), Row: uint16(min(sz.Rows, 0xffff))}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) { ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws) }); err != nil {
		return err
	}
	return ioErr
}

// currentNice is envd's nice value. The raw getpriority system call
// returns 20 - nice (to avoid negative results); misreading it as the nice
// value made children of an earlier envd run at nice -20.
func currentNice() int {
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		return 0
	}
	return 20 - prio
}

// placementError reports whether a spawn failed because the kernel cannot
// place a process into a cgroup at creation (spec lifecycle.md §6.2).
func placementError(err error) bool {
	return errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EINVAL) ||
		errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EBADF)
}

// forkExec starts path with argv and attr; it runs under the reaper's
// spawn lock.
// Everything envd opens is close-on-exec, but descriptors it inherited
// from whatever started it (a test harness, an init script) are not, and
// ForkExec closes nothing: they are marked close-on-exec first, so a child
// gets exactly its stdin, stdout and stderr. (Kernels before 5.11 lack the
// flag; there envd is PID 1 started by the kernel and inherits nothing.)
func forkExec(path string, argv []string, attr *syscall.ProcAttr) (int, error) {
	_ = unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	return syscall.ForkExec(path, argv, attr)
}
