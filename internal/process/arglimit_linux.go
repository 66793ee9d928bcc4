package process

import "golang.org/x/sys/unix"

// Limits exec puts on a new program's arguments and environment (Linux
// fs/exec.c): every string with its NUL at most MAX_ARG_STRLEN, and the
// strings and their pointers together at most a quarter of the stack
// limit, capped at three quarters of _STK_LIM and at least ARG_MAX.
const (
	maxArgStrlen = 32 * 4096 // MAX_ARG_STRLEN
	minArgMax    = 32 * 4096 // ARG_MAX
	stkLim       = 8 << 20   // _STK_LIM
)

// execArgLimit is what exec accepts for the strings and pointers of argv
// and envp, with the stack limit envd (and so the child) has now.
func execArgLimit() int {
	limit := uint64(stkLim / 4 * 3)
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_STACK, &rl); err == nil && rl.Cur != unix.RLIM_INFINITY {
		limit = min(limit, rl.Cur/4)
	}
	return int(max(limit, minArgMax))
}
