package process

import (
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/signame"
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

// SignalName is the lower-case description of signal n ("killed"), or
// "signal <n>" for numbers without one.
func SignalName(n int) string { return signame.Name(n) }
