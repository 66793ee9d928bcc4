package lifecycle

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/envd/envd/internal/mountinfo"
)

// errChildPIDNamespace is returned by the Ctrl-Alt-Del switch when envd is
// PID 1 of a PID namespace other than the initial one, where the kernel
// refuses it.
var errChildPIDNamespace = errors.New("not the initial PID namespace")

// mountSpec is one kernel filesystem PID 1 mounts when it is missing.
type mountSpec struct {
	target, fstype string
	flags          uintptr
	data           string
}

// pid1Mounts is the spec's table (lifecycle.md §3.1), in mounting order:
// /proc first, because the others are checked in /proc/self/mountinfo.
func pid1Mounts() []mountSpec {
	return []mountSpec{
		{"/proc", "proc", msNoSuid | msNoDev | msNoExec, ""},
		{"/sys", "sysfs", msNoSuid | msNoDev | msNoExec, ""},
		{"/dev", "devtmpfs", msNoSuid, "mode=0755"},
		{"/dev/pts", "devpts", msNoSuid | msNoExec, "gid=5,mode=0620,ptmxmode=0666"},
		{"/dev/shm", "tmpfs", msNoSuid | msNoDev, "mode=1777"},
		{"/run", "tmpfs", msNoSuid | msNoDev, "mode=0755"},
		{"/tmp", "tmpfs", msNoSuid | msNoDev, "mode=1777"},
		{"/sys/fs/cgroup", "cgroup2", msNoSuid | msNoDev | msNoExec, ""},
	}
}

// devLinks are created in /dev when missing (oldname → newname).
func devLinks() [][2]string {
	return [][2]string{
		{"/proc/self/fd", "fd"},
		{"/proc/self/fd/0", "stdin"},
		{"/proc/self/fd/1", "stdout"},
		{"/proc/self/fd/2", "stderr"},
	}
}

// pid1System is what the PID-1 setup does to the machine; tests replace it.
type pid1System struct {
	mount      func(source, target, fstype string, flags uintptr, data string) error
	mkdirAll   func(path string) error
	mountInfo  string // normally /proc/self/mountinfo
	devDir     string // normally /dev
	cgroupDir  string // normally /sys/fs/cgroup
	isCgroup2  func(path string) bool
	writeOnly  func(path, value string) error // write an existing file, never create it
	loopbackUp func() (changed bool, err error)
	cadOff     func() error
}

// SetupPID1 does the duties of an init process that are missing when the
// kernel starts envd directly (spec lifecycle.md §3.1–§3.2): mount the
// kernel filesystems that are not mounted yet, create the standard /dev
// links, enable the cpu, memory and io cgroup controllers for envd's
// children, bring loopback up and take Ctrl-Alt-Del away from the kernel so
// that it arrives as SIGINT. Every failure is logged and ignored: an image
// init script may have done some of this already, and a container or a test
// namespace forbids some of it.
func SetupPID1(log *slog.Logger) {
	setupPID1(log, linuxPID1System())
}

func setupPID1(log *slog.Logger, sys pid1System) {
	var mounted []string
	for _, m := range pid1Mounts() {
		if isMounted(sys, m.target) {
			continue
		}
		if err := sys.mkdirAll(m.target); err != nil {
			log.Warn("cannot create mount point", "path", m.target, "error", err.Error())
			continue
		}
		if err := sys.mount(m.fstype, m.target, m.fstype, m.flags, m.data); err != nil {
			log.Warn("mount failed", "path", m.target, "type", m.fstype, "error", err.Error())
			continue
		}
		mounted = append(mounted, m.target)
	}
	if len(mounted) > 0 {
		log.Info("mounted kernel filesystems", "paths", mounted)
	}

	for _, l := range devLinks() {
		link := filepath.Join(sys.devDir, l[1])
		if _, err := os.Lstat(link); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := os.Symlink(l[0], link); err != nil {
			log.Warn("cannot create link", "path", link, "error", err.Error())
		}
	}
	// /dev/ptmx is a device node on most systems; link it to the devpts
	// multiplexer only if there is nothing at all.
	ptmx := filepath.Join(sys.devDir, "ptmx")
	if _, err := os.Lstat(ptmx); errors.Is(err, os.ErrNotExist) {
		if err := os.Symlink("pts/ptmx", ptmx); err != nil {
			log.Warn("cannot create link", "path", ptmx, "error", err.Error())
		}
	}

	if sys.isCgroup2(sys.cgroupDir) {
		// One write per controller, so that one unavailable controller
		// does not keep the others off.
		control := filepath.Join(sys.cgroupDir, "cgroup.subtree_control")
		for _, c := range []string{"+cpu", "+memory", "+io"} {
			if err := sys.writeOnly(control, c); err != nil {
				log.Warn("cannot enable cgroup controller", "controller", c[1:], "error", err.Error())
			}
		}
	}

	if changed, err := sys.loopbackUp(); err != nil {
		log.Warn("cannot bring loopback up", "error", err.Error())
	} else if changed {
		log.Info("loopback brought up")
	}

	switch err := sys.cadOff(); {
	case errors.Is(err, errChildPIDNamespace):
		// A container or test namespace: there is no keyboard to guard.
		log.Debug("Ctrl-Alt-Del belongs to the parent PID namespace")
	case err != nil:
		log.Warn("cannot take over Ctrl-Alt-Del", "error", err.Error())
	}
}

// isMounted reports whether target is a mount point. For /proc itself the
// mount table cannot be read before /proc is mounted, so a readable table
// means /proc is there.
func isMounted(sys pid1System, target string) bool {
	mp, err := mountinfo.MountPoints(sys.mountInfo)
	if err != nil {
		return false
	}
	return target == "/proc" || mp[target]
}
