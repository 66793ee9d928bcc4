package handover

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// memfdName is the memory file's name (visible in /proc/<pid>/fd).
const memfdName = "envd-handover"

// writeMemfd puts b into a new sealed anonymous memory file (§8.8 step 1):
// close-on-exec until the exec clears it, sealed against writing, growing
// and shrinking, so that neither image can change it afterwards. Nothing
// is written to a filesystem.
func writeMemfd(b []byte) (int, error) {
	fd, err := unix.MemfdCreate(memfdName, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	for off := 0; off < len(b); {
		n, err := unix.Pwrite(fd, b[off:], int64(off))
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			unix.Close(fd)
			return -1, fmt.Errorf("write the memory file: %w", err)
		}
		off += n
	}
	seals := unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("seal the memory file: %w", err)
	}
	return fd, nil
}

// readMemfd reads the whole memory file from offset 0 (the outgoing side
// never moved its offset, but the file is read by position anyway), at
// most MaxRecordBytes.
func readMemfd(fd int) ([]byte, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("stat the memory file: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("descriptor %d is not a memory file", fd)
	}
	if st.Size < 0 || st.Size > MaxRecordBytes {
		return nil, fmt.Errorf("memory file of %d bytes: %w (%d MiB)", st.Size, errRecordTooLarge, MaxRecordBytes>>20)
	}
	b := make([]byte, st.Size)
	for off := 0; off < len(b); {
		n, err := unix.Pread(fd, b[off:], int64(off))
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return nil, fmt.Errorf("read the memory file: %w", err)
		}
		if n == 0 {
			return nil, fmt.Errorf("read the memory file: %d of %d bytes", off, len(b))
		}
		off += n
	}
	return b, nil
}

// setCloexec sets or clears FD_CLOEXEC on fd in place.
func setCloexec(fd int, on bool) error {
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		return err
	}
	if on {
		flags |= unix.FD_CLOEXEC
	} else {
		flags &^= unix.FD_CLOEXEC
	}
	_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFD, flags)
	return err
}

// execer replaces the process image; the tests replace it.
type execer func(path string, argv, env []string) error

// lockForkWrite takes Go's fork lock for writing within ctx: once held, no
// concurrent spawn can fork and inherit a descriptor whose close-on-exec
// flag is cleared (§8.8 step 2). Spawns are already excluded by the spawn
// lock, so it is normally free at once; polling keeps the wait bounded.
func lockForkWrite(ctx context.Context) error {
	for !syscall.ForkLock.TryLock() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("fork lock: %w", ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// execWithHandover runs §8.8 steps 2–3 and, when the execve fails, the
// first step of the rollback (§8.9 step 1, minus closing the memory file,
// which the caller owns): under the fork lock, held for writing, it clears
// close-on-exec on the memory file and every carried descriptor and execs
// path with argv and env plus ENVD_HANDOVER_FD. It returns only on
// failure, with everything set back and the fork lock released.
func execWithHandover(ctx context.Context, exec execer, path string, argv, env []string, memfd int, carried []int) error {
	if err := lockForkWrite(ctx); err != nil {
		return err
	}
	defer syscall.ForkLock.Unlock()
	cleared := make([]int, 0, len(carried)+1)
	restore := func() {
		for _, fd := range cleared {
			_ = setCloexec(fd, true)
		}
	}
	for _, fd := range append([]int{memfd}, carried...) {
		if err := setCloexec(fd, false); err != nil {
			restore()
			return fmt.Errorf("clear close-on-exec on descriptor %d: %w", fd, err)
		}
		cleared = append(cleared, fd)
	}
	env = withVar(env, EnvFD, strconv.Itoa(memfd))
	// syscall.Exec puts back the soft descriptor limit Go found at startup
	// when envd never set its own, and leaves it so when the exec fails:
	// keep the current one for the rollback.
	var saved unix.Rlimit
	haveLimit := unix.Getrlimit(unix.RLIMIT_NOFILE, &saved) == nil
	err := exec(path, argv, env)
	if haveLimit {
		// Raw, so that Go's own restore for children is left as it was.
		_, _, _ = unix.RawSyscall6(unix.SYS_PRLIMIT64, 0, unix.RLIMIT_NOFILE, uintptr(unsafe.Pointer(&saved)), 0, 0, 0)
	}
	restore()
	return &os.PathError{Op: "execve", Path: path, Err: err}
}

// withVar returns env with name set to value, replacing earlier values.
func withVar(env []string, name, value string) []string {
	out := make([]string, 0, len(env)+1)
	prefix := name + "="
	for _, kv := range env {
		if len(kv) >= len(prefix) && kv[:len(prefix)] == prefix {
			continue
		}
		out = append(out, kv)
	}
	return append(out, prefix+value)
}
