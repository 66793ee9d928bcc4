package lifecycle

import (
	"context"
	"fmt"
	"log/slog"
	"syscall"
	"time"
)

// Shutdown budgets (spec lifecycle.md §3.5); about 10 s in total.
const (
	// processBudget backs up the process manager's own bound (SIGTERM,
	// ≤5 s, SIGKILL, ≤1 s).
	processBudget = 6500 * time.Millisecond
	// httpGrace is what in-flight requests get after the processes ended.
	httpGrace = 2 * time.Second
	// termGrace is what every other process in the VM gets between
	// SIGTERM and SIGKILL when envd is PID 1.
	termGrace = 2 * time.Second
	// killGrace bounds reaping after SIGKILL.
	killGrace = time.Second
	// syncBudget bounds the final sync(); a stuck disk must not keep the
	// VM from ending. It applies even after a second signal.
	syncBudget = 2 * time.Second
)

// Terminator ends every process envd manages (the process manager).
type Terminator interface {
	// TerminateAll sends SIGTERM to the process group of every managed
	// process, waits up to 5 s, sends SIGKILL to the groups still alive
	// and waits up to 1 s. Attached streams get their end events as
	// usual. When ctx ends the waits are cut short.
	TerminateAll(ctx context.Context)
}

// HTTPServer is envd's server: Shutdown stops accepting at once, lets
// in-flight requests finish until ctx ends, then closes every connection.
type HTTPServer interface {
	Shutdown(ctx context.Context)
}

// ChildReaper is the single reaper (internal/reaper).
type ChildReaper interface {
	// ReapUntilNone reaps until no child is left or ctx ends; it reports
	// whether none is left.
	ReapUntilNone(ctx context.Context) bool
	// Stop ends reaping.
	Stop()
}

// Step is a named part of the shutdown.
type Step struct {
	Name string
	Run  func()
}

// Shutdown ends envd in the order of spec lifecycle.md §3.5, bounded to
// about 10 s; a second shutdown signal skips the remaining waits. main
// fills it with the pieces it built and calls Run once; Run does not
// return.
type Shutdown struct {
	Log *slog.Logger
	// PID1: envd is init, so every remaining process is ended and, in FC
	// mode, the VM is reset.
	PID1 bool
	// FC is Firecracker mode: as PID 1 the end is reboot(RESTART), which
	// with reboot=k ends the VM; with --isnotfc it is exit 0.
	FC bool
	// Thaw runs before anything else (lifecycle.md §3.5): the root
	// filesystem frozen by /fsfreeze, then an envd freeze of cgroups — a
	// frozen process cannot act on SIGTERM, and a frozen filesystem would
	// stall every later step.
	Thaw []Step
	// Server is stopped first (no new connections) and closed last.
	Server HTTPServer
	// Quiesce runs right after the listener closed: port forwarding, the
	// MMDS poller.
	Quiesce []Step
	// Processes ends the managed processes; nil when there is no process
	// manager.
	Processes Terminator
	// Release runs after the server is closed: watchers, background work.
	Release []Step
	// Reaper reaps the VM's remaining processes (PID 1) and is stopped
	// last.
	Reaper ChildReaper

	sys shutdownSystem
}

// shutdownSystem is the machine-wide part of the end; tests replace it.
type shutdownSystem interface {
	killAll(sig syscall.Signal) error // kill(-1, sig); only as PID 1
	sync()
	reboot() error // reboot(LINUX_REBOOT_CMD_RESTART)
	exit(code int)
}

// Run shuts envd down for reason and ends the process. hurry is closed by a
// second shutdown signal.
func (s *Shutdown) Run(reason Reason, hurry <-chan struct{}) {
	sys := s.sys
	if sys == nil {
		sys = linuxShutdownSystem{}
	}
	start := time.Now()
	s.Log.Info("shutting down", "signal", reason.String())
	for _, st := range s.Thaw {
		s.step(st)
	}

	// A second signal cancels every remaining wait.
	waits, cancelWaits := context.WithCancel(context.Background())
	defer cancelWaits()
	go func() {
		defer s.recoverPanic("hurry")
		select {
		case <-hurry:
			cancelWaits()
		case <-waits.Done():
		}
	}()

	// No new connections from here on; open requests and streams go on so
	// that attached clients see their processes end.
	httpCtx, closeHTTP := context.WithCancel(waits)
	defer closeHTTP()
	httpDone := make(chan struct{})
	go func() {
		defer close(httpDone)
		defer s.recoverPanic("http shutdown")
		if s.Server != nil {
			s.Server.Shutdown(httpCtx)
		}
	}()
	for _, st := range s.Quiesce {
		s.step(st)
	}

	if s.Processes != nil {
		ctx, cancel := context.WithTimeout(waits, processBudget)
		s.step(Step{Name: "processes", Run: func() { s.Processes.TerminateAll(ctx) }})
		cancel()
	}

	// In-flight requests get a last grace period, then every connection
	// is closed: long-lived streams must not keep envd alive.
	grace := time.AfterFunc(httpGrace, closeHTTP)
	<-httpDone
	grace.Stop()

	for _, st := range s.Release {
		s.step(st)
	}

	if s.PID1 {
		s.endEverything(waits, sys)
	}
	if s.Reaper != nil {
		s.Reaper.Stop()
	}
	s.Log.Info("stopped", "duration_ms", time.Since(start).Milliseconds())
	if s.PID1 && s.FC {
		if err := sys.reboot(); err != nil {
			// Exiting as PID 1 panics the kernel, which with panic=1
			// resets the VM too: the same end, only noisier.
			s.Log.Error("reboot failed; exiting", "error", err.Error())
		}
	}
	sys.exit(reason.ExitCode())
}

// endEverything is init's last duty: every process still in the VM (or
// the PID namespace) gets SIGTERM, then SIGKILL, and the file systems are
// synced.
func (s *Shutdown) endEverything(waits context.Context, sys shutdownSystem) {
	if err := sys.killAll(syscall.SIGTERM); err == nil {
		s.Log.Info("terminating remaining processes")
		ctx, cancel := context.WithTimeout(waits, termGrace)
		gone := s.reapUntilNone(ctx)
		cancel()
		if !gone {
			s.Log.Info("killing remaining processes")
			_ = sys.killAll(syscall.SIGKILL)
			ctx, cancel := context.WithTimeout(waits, killGrace)
			s.reapUntilNone(ctx)
			cancel()
		}
	}
	synced := make(chan struct{})
	go func() {
		defer close(synced)
		defer s.recoverPanic("sync")
		sys.sync()
	}()
	// Not cut short by a second signal: unwritten data would be lost with
	// the VM's disk. A stuck disk still cannot hold the end for long.
	select {
	case <-synced:
	case <-time.After(syncBudget):
		s.Log.Warn("sync did not finish in time")
	}
}

func (s *Shutdown) reapUntilNone(ctx context.Context) bool {
	if s.Reaper == nil {
		<-ctx.Done()
		return false
	}
	return s.Reaper.ReapUntilNone(ctx)
}

// step runs one part; a panic is logged and the shutdown goes on.
func (s *Shutdown) step(st Step) {
	defer s.recoverPanic(st.Name)
	st.Run()
}

func (s *Shutdown) recoverPanic(where string) {
	if p := recover(); p != nil {
		s.Log.Error("panic during shutdown", "step", where, "panic", fmt.Sprint(p))
	}
}
