package process

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// The wrapper's effects (spec rpc.md §4.2 step 5), produced without it.
//
// Nice value and I/O priority are per thread on Linux and a child inherits
// those of the thread that forked it: the fork runs on a goroutine locked
// to its OS thread, the thread is set to nice 0 and best-effort level 4
// for the fork and set back afterwards. (The Go runtime never clones a new
// thread of its own from a locked one, so nothing else inherits them.)
//
// oom_score_adj is per process: under the spawn lock, which every fork of
// envd holds, envd writes 100 to its own value, forks, and writes its old
// value (-1000) back, so the child has 100 from its first instruction and
// so has anything it forks at once. While the value is raised, the forking
// thread's effective CAP_SYS_RESOURCE is dropped: written with that
// capability the kernel would also raise the minimum a process may later
// lower its value to (oom_score_adj_min) to 100 and pass that on; written
// without it, as the wrapper's unprivileged shell wrote it, the child keeps
// envd's minimum, exactly as before. Lowering the value back needs no
// capability (a value never goes below its minimum). For the duration of
// one fork+exec envd itself has 100: that matters only when envd is not
// PID 1 — the kernel's OOM killer never picks init.

// ioprioBestEffort4 is IOPRIO_PRIO_VALUE(IOPRIO_CLASS_BE, 4), what
// "ionice -c 2 -n 4" sets.
const ioprioBestEffort4 = 2<<13 | 4

// ioprioWhoProcess is IOPRIO_WHO_PROCESS; with who 0 it means the calling
// thread.
const ioprioWhoProcess = 1

// effects produces the wrapper's effects for the processes of one manager.
type effects struct {
	log *slog.Logger

	// mu guards the descriptor of /proc/self/oom_score_adj, opened on first
	// use and kept for envd's life (oomFD < 0 after a failed open).
	mu     sync.Mutex
	opened bool
	oomFD  int

	// off: setting something back failed once; every later process goes
	// through the wrapper.
	off atomic.Bool
}

func newEffects(log *slog.Logger) *effects { return &effects{log: log, oomFD: -1} }

// start forks the process of l: directly with the effects produced here
// when it can, else through the wrapper. It runs under the spawn lock.
func (x *effects) start(l *launch, attr *syscall.ProcAttr) (int, error) {
	if l.path != "" && !x.off.Load() {
		attr.Env = l.directEnv
		if pid, err, tried := x.forkDirect(l.path, l.argv(), attr); tried && err == nil {
			return pid, nil
		}
		// Not started: exec refused the command (not executable for the
		// user, ENOEXEC, ...) and the wrapper reports it as it always did,
		// or the thread's priority could not be changed. A failure of the
		// fork itself fails the wrapper the same way, with its usual error.
	}
	attr.Env = l.env
	argv := l.wrapperArgv()
	return forkExec(argv[0], argv, attr)
}

// forkDirect execs path with the effects in place; tried is false when
// they could not be produced and nothing was forked.
//
// The fork runs on a goroutine of its own that locks its OS thread, so the
// caller's goroutine (an RPC handler, which on HTTP/1.1 serves every
// request of its connection) never runs locked; and if the thread cannot
// be set back, that goroutine simply exits still locked, which makes Go
// end the thread: no envd thread keeps the child's priority.
func (x *effects) forkDirect(path string, argv []string, attr *syscall.ProcAttr) (pid int, err error, tried bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	fd := x.oomFile()
	if fd < 0 {
		return 0, nil, false
	}
	type result struct {
		pid   int
		err   error
		tried bool
	}
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			if p := recover(); p != nil {
				x.off.Store(true)
				x.log.Error("panic while spawning; starting processes through the wrapper from now on", "panic", fmt.Sprint(p))
			}
			done <- r
		}()
		runtime.LockOSThread()
		var t threadState
		if err := t.apply(fd); err != nil {
			x.log.Debug("starting the process through the wrapper", "reason", err.Error())
		} else {
			r.pid, r.err = forkExec(path, argv, attr)
			r.tried = true
		}
		if x.restore(&t, fd) {
			runtime.UnlockOSThread()
		}
	}()
	r := <-done
	return r.pid, r.err, r.tried
}

// restore sets the thread and the OOM score back and reports whether that
// worked. If not, every later process goes through the wrapper (and the
// caller leaves its thread locked, so that Go ends it).
func (x *effects) restore(t *threadState, oomFD int) bool {
	if t.restore(oomFD) {
		return true
	}
	x.off.Store(true)
	x.log.Error("cannot restore envd's priority or OOM score after a spawn; starting processes through the wrapper from now on",
		"error", t.restoreErr.Error())
	return false
}

// oomFile opens /proc/self/oom_score_adj once. Called with x.mu held.
func (x *effects) oomFile() int {
	if !x.opened {
		x.opened = true
		fd, err := unix.Open("/proc/self/oom_score_adj", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			x.log.Warn("cannot open /proc/self/oom_score_adj; starting processes through the wrapper", "error", err.Error())
			return -1
		}
		x.oomFD = fd
	}
	return x.oomFD
}

// threadState is what apply changed on the locked thread and envd's OOM
// score, for restore.
type threadState struct {
	nice, ioprio       int
	niceSet, ioprioSet bool
	oom                []byte // envd's value, as read
	oomSet             bool
	caps               [2]unix.CapUserData
	capsSet            bool
	oomBuf             [16]byte
	restoreErr         error
}

// capHeader addresses the calling thread's capabilities.
func capHeader() *unix.CapUserHeader {
	return &unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
}

// apply sets the calling (locked) thread to nice 0 and best-effort I/O
// level 4 and envd's OOM score to 100, changing only what differs.
func (t *threadState) apply(oomFD int) error {
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0) // 0: this thread
	if err != nil {
		return os.NewSyscallError("getpriority", err)
	}
	if t.nice = 20 - prio; t.nice != 0 {
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, 0); err != nil {
			return os.NewSyscallError("setpriority", err)
		}
		t.niceSet = true
	}
	r, _, errno := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, 0, 0)
	if errno != 0 {
		return os.NewSyscallError("ioprio_get", errno)
	}
	if t.ioprio = int(r); t.ioprio != ioprioBestEffort4 {
		if err := ioprioSet(ioprioBestEffort4); err != nil {
			return err
		}
		t.ioprioSet = true
	}
	n, err := unix.Pread(oomFD, t.oomBuf[:], 0)
	if err != nil {
		return os.NewSyscallError("read oom_score_adj", err)
	}
	t.oom = bytes.TrimSpace(t.oomBuf[:n])
	if string(t.oom) == "100" {
		return nil
	}
	if _, err := strconv.Atoi(string(t.oom)); err != nil {
		return os.NewSyscallError("read oom_score_adj", syscall.EINVAL)
	}
	if err := unix.Capget(capHeader(), &t.caps[0]); err != nil {
		return os.NewSyscallError("capget", err)
	}
	if t.caps[0].Effective&(1<<unix.CAP_SYS_RESOURCE) != 0 {
		drop := t.caps
		drop[0].Effective &^= 1 << unix.CAP_SYS_RESOURCE
		if err := unix.Capset(capHeader(), &drop[0]); err != nil {
			return os.NewSyscallError("capset", err)
		}
		t.capsSet = true
	}
	if _, err := unix.Pwrite(oomFD, []byte("100"), 0); err != nil {
		return os.NewSyscallError("write oom_score_adj", err)
	}
	t.oomSet = true
	return nil
}

// restore undoes apply in reverse order and reports whether everything
// was set back (the first failure is kept in restoreErr).
func (t *threadState) restore(oomFD int) bool {
	fail := func(err error) {
		if t.restoreErr == nil {
			t.restoreErr = err
		}
	}
	if t.oomSet {
		if _, err := unix.Pwrite(oomFD, t.oom, 0); err != nil {
			fail(os.NewSyscallError("write oom_score_adj", err))
		}
	}
	if t.capsSet {
		if err := unix.Capset(capHeader(), &t.caps[0]); err != nil {
			fail(os.NewSyscallError("capset", err))
		}
	}
	if t.ioprioSet {
		if err := ioprioSet(t.ioprio); err != nil {
			fail(err)
		}
	}
	if t.niceSet {
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, t.nice); err != nil {
			fail(os.NewSyscallError("setpriority", err))
		}
	}
	return t.restoreErr == nil
}

// ioprioSet sets the calling thread's I/O priority.
func ioprioSet(prio int) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, 0, uintptr(prio)); errno != 0 {
		return os.NewSyscallError("ioprio_set", errno)
	}
	return nil
}
