package lifecycle

import (
	"log/slog"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Descriptor limits (D19). The kernel starts init with RLIMIT_NOFILE
// 1024:4096 and Go raises only the soft limit, to 4095: a few thousand idle
// connections would leave envd without descriptors. envd raises both
// limits for itself when it may (CAP_SYS_RESOURCE, i.e. root in a VM), and
// else at least its soft limit to its hard one; its children start lower.
const (
	// maxFileLimit caps what envd raises itself to; the kernel's nr_open
	// (default 1048576) caps it too.
	maxFileLimit = 1 << 20
	// ChildFileSoft and ChildFileHard are the RLIMIT_NOFILE every child
	// starts with (systemd's DefaultLimitNOFILE=1024:524288): a soft 1024
	// keeps select()-based programs and programs that close every possible
	// descriptor working and fast; the hard limit lets a program that needs
	// more raise its own. The hard limit is never lower than the one envd
	// was started with, nor higher than envd's.
	ChildFileSoft = 1024
	ChildFileHard = 524288
)

// FileLimits is the outcome of RaiseFileLimit.
type FileLimits struct {
	// Envd is envd's own limit now; Children what every child is to get.
	Envd, Children unix.Rlimit
}

// rlimitSys is what RaiseFileLimit does to the process; tests replace it.
type rlimitSys struct {
	get    func(*unix.Rlimit) error
	set    func(*unix.Rlimit) error
	nrOpen func() (uint64, error)
}

func linuxRlimitSys() rlimitSys {
	return rlimitSys{
		get: func(l *unix.Rlimit) error { return unix.Getrlimit(unix.RLIMIT_NOFILE, l) },
		// unix.Prlimit, unlike syscall.Setrlimit, leaves Go's restoring of
		// the original limit in children in place when it fails.
		set: func(l *unix.Rlimit) error { return unix.Prlimit(0, unix.RLIMIT_NOFILE, l, nil) },
		nrOpen: func() (uint64, error) {
			b, err := os.ReadFile("/proc/sys/fs/nr_open")
			if err != nil {
				return 0, err
			}
			return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		},
	}
}

// RaiseFileLimit sets envd's RLIMIT_NOFILE, soft and hard, to nr_open (at
// most 1<<20); without the privilege to raise the hard limit, the soft one
// to the hard one. It returns envd's limit and the one children are to
// start with, and false when the limit could not be set at all (Envd is
// then the limit as it is, or zero if unreadable; Go's own
// handling then stays: envd runs at its hard limit minus one and children
// get the soft limit envd was started with). Once envd has set its limit
// itself, Go no longer restores the original one in children (syscall's
// documented behaviour), so the caller applies Children to every child
// (reaper.LimitChildren).
func RaiseFileLimit(log *slog.Logger) (FileLimits, bool) {
	return raiseFileLimit(log, linuxRlimitSys())
}

func raiseFileLimit(log *slog.Logger, sys rlimitSys) (FileLimits, bool) {
	var cur unix.Rlimit
	if err := sys.get(&cur); err != nil {
		log.Warn("cannot read the descriptor limit", "error", err.Error())
		return FileLimits{}, false
	}
	target := uint64(maxFileLimit)
	if n, err := sys.nrOpen(); err == nil && n > 0 && n < target {
		target = n
	}
	target = max(target, cur.Max) // never lower what envd was given
	envd := unix.Rlimit{Cur: target, Max: target}
	if err := sys.set(&envd); err != nil {
		// No CAP_SYS_RESOURCE (a container, an unprivileged envd): the
		// hard limit stays; the soft one can still reach it.
		envd = unix.Rlimit{Cur: cur.Max, Max: cur.Max}
		if err2 := sys.set(&envd); err2 != nil {
			log.Warn("cannot set the descriptor limit", "error", err2.Error())
			return FileLimits{Envd: cur}, false
		}
		log.Warn("cannot raise the hard descriptor limit; using it as it is", "limit", cur.Max, "wanted", target, "error", err.Error())
	}
	children := unix.Rlimit{Max: min(max(ChildFileHard, cur.Max), envd.Max)}
	children.Cur = min(ChildFileSoft, children.Max)
	log.Info("descriptor limit set", "envd", envd.Max, "was_soft", cur.Cur, "was_hard", cur.Max,
		"children_soft", children.Cur, "children_hard", children.Max)
	return FileLimits{Envd: envd, Children: children}, true
}
