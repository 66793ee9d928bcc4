package process

import (
	"strconv"

	"golang.org/x/sys/unix"
)

// End is how a process ended: the fields of the end event (spec rpc.md §4.3).
type End struct {
	ExitCode int32
	Exited   bool
	Status   string
	// Error is set (HasError) unless the process exited with code 0.
	Error    string
	HasError bool
}

// endOf translates a wait status into the end event. Only exit and
// termination statuses reach here: the reaper skips stop/continue reports.
func endOf(ws unix.WaitStatus) End {
	if ws.Exited() {
		n := ws.ExitStatus()
		e := End{ExitCode: int32(n), Exited: true, Status: "exit status " + strconv.Itoa(n)}
		if n != 0 {
			e.Error, e.HasError = e.Status, true
		}
		return e
	}
	st := "signal: " + SignalName(int(ws.Signal()))
	if ws.CoreDump() {
		st += " (core dumped)"
	}
	return End{ExitCode: -1, Status: st, Error: st, HasError: true}
}

// signalNames are the descriptions Go's syscall.Signal.String gives on
// linux/amd64. They are spelled out here so the strings clients see do not
// depend on the architecture's table (spec rpc.md §4.3).
var signalNames = [...]string{
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

// SignalName is the lower-case description of signal n ("killed"), or
// "signal <n>" for numbers without one.
func SignalName(n int) string {
	if n > 0 && n < len(signalNames) {
		return signalNames[n]
	}
	return "signal " + strconv.Itoa(n)
}
