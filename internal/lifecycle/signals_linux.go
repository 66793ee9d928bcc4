package lifecycle

import (
	"os"
	"syscall"
)

// faultSignals are the signals the Go runtime dies of when another process
// sends them with kill(): the synchronous fault signals and SIGSTKFLT (its
// table marks them "throw" or "panic"). envd catches them so that a guest
// process cannot crash PID 1 with `kill -SEGV 1` (D19); they are logged and
// otherwise ignored. Catching changes nothing for real faults: the runtime
// sends a signal to the Notify channel only when it came from kill() or
// tkill(), and a fault raised by envd's own code still panics or crashes
// as before. Children start with the default dispositions, since exec
// resets caught signals.
//
// One gap is the Go runtime's and cannot be closed from Go code: a signal
// queued with rt_sigqueueinfo (sigqueue(3)) carries a negative si_code,
// which the runtime does not take for a kill() and handles as a real fault.
// Only a process allowed to signal PID 1 (root in the guest) can send it,
// and such a process can also reboot the guest.
var faultSignals = []os.Signal{
	syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGFPE, syscall.SIGILL,
	syscall.SIGABRT, syscall.SIGTRAP, syscall.SIGSYS, syscall.SIGSTKFLT,
}
