package lifecycle

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// linuxShutdownSystem ends the machine for real.
type linuxShutdownSystem struct{}

// errNotInit guards kill(-1): from any process but init it would reach
// every process the user may signal.
var errNotInit = errors.New("kill(-1) refused: envd is not PID 1")

func (linuxShutdownSystem) killAll(sig syscall.Signal) error {
	if os.Getpid() != 1 {
		return errNotInit
	}
	err := unix.Kill(-1, sig)
	if errors.Is(err, unix.ESRCH) {
		return nil // nothing else is running
	}
	return err
}

func (linuxShutdownSystem) sync() { unix.Sync() }

// reboot resets the machine. In a PID namespace other than the initial one
// the kernel ends the namespace instead, and the parent sees envd killed by
// SIGHUP.
func (linuxShutdownSystem) reboot() error {
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}

func (linuxShutdownSystem) exit(code int) { os.Exit(code) }
