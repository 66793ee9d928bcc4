// Package signame holds the signal descriptions that appear in process end
// events ("signal: killed", spec rpc.md §4.3), shared by the daemon that
// writes them and the client that reads them back.
package signame

import (
	"strconv"
	"strings"
)

// names are the descriptions Go's syscall.Signal.String gives on
// linux/amd64, spelled out so the strings clients see do not depend on the
// architecture's table.
var names = [...]string{
	1: "hangup", 2: "interrupt", 3: "quit", 4: "illegal instruction",
	5: "trace/breakpoint trap", 6: "aborted", 7: "bus error",
	8: "floating point exception", 9: "killed", 10: "user defined signal 1",
	11: "segmentation fault", 12: "user defined signal 2", 13: "broken pipe",
	14: "alarm clock", 15: "terminated", 16: "stack fault", 17: "child exited",
	18: "continued", 19: "stopped (signal)", 20: "stopped",
	21: "stopped (tty input)", 22: "stopped (tty output)",
	23: "urgent I/O condition", 24: "CPU time limit exceeded",
	25: "file size limit exceeded", 26: "virtual timer expired",
	27: "profiling timer expired", 28: "window changed", 29: "I/O possible",
	30: "power failure", 31: "bad system call",
}

// Name is the lower-case description of signal n ("killed"), or
// "signal <n>" for numbers without one.
func Name(n int) string {
	if n > 0 && n < len(names) {
		return names[n]
	}
	return "signal " + strconv.Itoa(n)
}

// Number is the inverse of Name: the signal a description stands for, or 0.
func Number(name string) int {
	if rest, ok := strings.CutPrefix(name, "signal "); ok {
		if n, err := strconv.Atoi(rest); err == nil && n > 0 {
			return n
		}
		return 0
	}
	for i, n := range names {
		if n != "" && n == name {
			return i
		}
	}
	return 0
}
