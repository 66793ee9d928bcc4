package handover

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/handover/handoverpb"
)

// maxProbedFD bounds the fallback scan of descriptor numbers when
// /proc/self/fd cannot be listed.
const maxProbedFD = 1 << 16

// inheritedDescriptors lists the descriptors numbered 3 or above that
// this image inherited (§8.11 step 2): one pass over /proc/self/fd, or,
// without /proc, a probe of every number up to the soft limit (at most
// maxProbedFD). A descriptor open at this point was inherited exactly when
// its close-on-exec flag is clear: everything the exec carried had the
// flag cleared, while the Go runtime, which opens some files before main
// runs (its poller, the cgroup CPU-limit files it keeps open), always sets
// it. Those are never envd's to close.
func inheritedDescriptors() []int {
	var fds []int
	if entries, err := os.ReadDir("/proc/self/fd"); err == nil {
		for _, e := range entries {
			if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= 3 {
				fds = append(fds, fd)
			}
		}
	} else {
		limit := maxProbedFD
		var rl unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && rl.Cur < uint64(limit) {
			limit = int(rl.Cur)
		}
		for fd := 3; fd < limit; fd++ {
			fds = append(fds, fd)
		}
	}
	out := fds[:0]
	for _, fd := range fds {
		// Closed (the listing's own descriptor by now) or close-on-exec.
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue
		}
		out = append(out, fd)
	}
	slices.Sort(out)
	return out
}

// cloexecAll marks every descriptor from 3 up close-on-exec, so that
// nothing inherited can leak into a child whatever happens next:
// close_range(3, ~0U, CLOSE_RANGE_CLOEXEC), or each listed one where the
// kernel lacks it (before 5.11).
func cloexecAll(fds []int) {
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return
	}
	for _, fd := range fds {
		_ = setCloexec(fd, true)
	}
}

// checkKind verifies that fd is what the record says it is (§8.12, §8.13):
// a FIFO open for reading or writing for pipe ends, a character device for
// a PTY master, a TCP socket, listening or not, for sockets.
func checkKind(fd int, kind handoverpb.DescriptorKind) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("descriptor %d: %w", fd, err)
	}
	ft := st.Mode & unix.S_IFMT
	switch kind {
	case handoverpb.DescriptorKind_DESCRIPTOR_KIND_PIPE_READ, handoverpb.DescriptorKind_DESCRIPTOR_KIND_PIPE_WRITE:
		if ft != unix.S_IFIFO {
			return fmt.Errorf("descriptor %d is not a pipe", fd)
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil {
			return fmt.Errorf("descriptor %d: %w", fd, err)
		}
		want := unix.O_RDONLY
		if kind == handoverpb.DescriptorKind_DESCRIPTOR_KIND_PIPE_WRITE {
			want = unix.O_WRONLY
		}
		if fl&unix.O_ACCMODE != want {
			return fmt.Errorf("descriptor %d is the wrong end of a pipe", fd)
		}
	case handoverpb.DescriptorKind_DESCRIPTOR_KIND_PTY_MASTER:
		if ft != unix.S_IFCHR {
			return fmt.Errorf("descriptor %d is not a terminal device", fd)
		}
	case handoverpb.DescriptorKind_DESCRIPTOR_KIND_TCP_LISTENER, handoverpb.DescriptorKind_DESCRIPTOR_KIND_TCP_CONNECTION:
		if ft != unix.S_IFSOCK {
			return fmt.Errorf("descriptor %d is not a socket", fd)
		}
		typ, err1 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		proto, err2 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		listening, err3 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err := errors.Join(err1, err2, err3); err != nil {
			return fmt.Errorf("descriptor %d: %w", fd, err)
		}
		// Go listens with MPTCP where the kernel has it (falling back to
		// TCP per connection), so both protocols are TCP here.
		if typ != unix.SOCK_STREAM || (proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_MPTCP) {
			return fmt.Errorf("descriptor %d is not a TCP socket", fd)
		}
		if want := kind == handoverpb.DescriptorKind_DESCRIPTOR_KIND_TCP_LISTENER; (listening == 1) != want {
			if want {
				return fmt.Errorf("descriptor %d is not listening", fd)
			}
			return fmt.Errorf("descriptor %d is listening", fd)
		}
	default:
		return fmt.Errorf("descriptor %d has an unknown kind %v", fd, kind)
	}
	return nil
}

// parentOf reads the parent pid of pid from /proc/<pid>/stat; ok is false
// when the process does not exist or the file cannot be parsed.
func parentOf(pid int) (ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return 0, false
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 2 {
		return 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	return ppid, err == nil
}
