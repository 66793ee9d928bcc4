// Package reaper is the single owner of child exit statuses (spec
// lifecycle.md §3.3). Every child envd starts goes through Spawn, which
// registers its pid as managed under the spawn lock; the one reaping
// goroutine, woken by SIGCHLD, collects every exited child with
// wait4(-1, WNOHANG) and hands a managed child's status to its owner. Any
// other status belongs to an orphan (envd is PID 1) and is dropped. Nothing
// else in envd may wait for a child: no os/exec Wait/Run, no
// os.Process.Wait.
package reaper

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Reaper collects child exit statuses. Create it with New, Start it once,
// Stop it at the end of shutdown.
type Reaper struct {
	log *slog.Logger

	// spawnMu is the spawn lock: held from just before a fork until the
	// new pid is registered, and while a collected status is dispatched, so
	// a child can never be reaped before its owner is known. It guards
	// managed and nothing else.
	spawnMu sync.Mutex
	managed map[int]chan<- unix.WaitStatus
	// childFiles, when set, is the RLIMIT_NOFILE every child gets right
	// after it is started (LimitChildren).
	childFiles *unix.Rlimit

	// started is set by Start; Adopt is refused afterwards (guarded by
	// spawnMu).
	started bool

	orphans atomic.Uint64
	sigs    chan os.Signal
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

// New returns a reaper that is not yet running.
func New(log *slog.Logger) *Reaper {
	return &Reaper{
		log:     log,
		managed: map[int]chan<- unix.WaitStatus{},
		sigs:    make(chan os.Signal, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// Start installs the SIGCHLD handler and the reaping goroutine, whose
// first pass runs at once, without waiting for a SIGCHLD: children may
// have exited before the handler was installed, and after a live upgrade
// any SIGCHLD of the swap went to the old image (control-plane.md §8.11
// step 6).
func (r *Reaper) Start() {
	r.spawnMu.Lock()
	r.started = true
	r.spawnMu.Unlock()
	signal.Notify(r.sigs, syscall.SIGCHLD)
	go r.loop()
}

// ErrStarted refuses an Adopt after Start: the first pass may already have
// collected the child's status as an orphan's.
var ErrStarted = errors.New("reaper already started")

// Adopt registers pid, a child envd did not spawn in this image (a process
// carried across a live upgrade), as managed: its status is delivered on
// the returned channel, exactly once, as for Spawn. It must be called
// before Start, so that no pass can take the status first; the caller has
// checked that pid is still envd's child and not yet reaped (a reaped
// leader's pid may belong to another process by now).
func (r *Reaper) Adopt(pid int) (<-chan unix.WaitStatus, error) {
	r.spawnMu.Lock()
	defer r.spawnMu.Unlock()
	if r.started {
		return nil, ErrStarted
	}
	if pid <= 0 {
		return nil, errors.New("adopt: invalid pid")
	}
	if _, ok := r.managed[pid]; ok {
		return nil, errors.New("adopt: pid already managed")
	}
	ch := make(chan unix.WaitStatus, 1)
	r.managed[pid] = ch
	return ch, nil
}

// Stop ends the reaping goroutine. Children still running are no longer
// reaped; call it last.
func (r *Reaper) Stop() {
	r.once.Do(func() {
		signal.Stop(r.sigs)
		close(r.stop)
	})
	<-r.done
}

// Orphans is the number of statuses collected for children nobody managed.
func (r *Reaper) Orphans() uint64 { return r.orphans.Load() }

func (r *Reaper) loop() {
	defer close(r.done)
	// Children may have exited before the handler was installed.
	r.ReapNow()
	for {
		select {
		case <-r.stop:
			return
		case <-r.sigs:
			// Signals coalesce: one wake-up may stand for many exits.
			r.ReapNow()
		}
	}
}

// ReapNow collects whatever has exited without waiting for a signal; the
// shutdown path uses it while it waits for the last processes. A panic is
// logged and contained: PID 1 must keep reaping.
func (r *Reaper) ReapNow() {
	r.reapSafely()
}

// reapSafely reaps under panic containment and reports whether children
// remain (an unexpected state counts as "some remain").
func (r *Reaper) reapSafely() (remain bool) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("panic while reaping", "panic", p)
			remain = true
		}
	}()
	return r.reapAll()
}

// ReapUntilNone collects exited children until envd has none left or ctx
// ends, and reports whether none are left. The shutdown path of PID 1 uses
// it after signalling every process in the VM; it polls (every 10 ms)
// because it runs only then, never while the VM may be snapshotted.
func (r *Reaper) ReapUntilNone(ctx context.Context) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if !r.reapSafely() {
			return true
		}
		select {
		case <-ctx.Done():
			return !r.reapSafely()
		case <-tick.C:
		}
	}
}

// reapAll collects every exited child and reports whether any child (still
// running) remains.
func (r *Reaper) reapAll() bool {
	r.spawnMu.Lock()
	defer r.spawnMu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ECHILD) {
			return false
		}
		if err != nil || pid <= 0 {
			return true // 0: children remain, none exited.
		}
		if ws.Stopped() || ws.Continued() {
			continue
		}
		if ch, ok := r.managed[pid]; ok {
			delete(r.managed, pid)
			ch <- ws // buffered: never blocks
			continue
		}
		r.orphans.Add(1)
		r.log.Debug("reaped orphan", "pid", pid, "status", int(ws))
	}
}

// LimitChildren makes every child started from now on get lim as its
// RLIMIT_NOFILE. envd raises its own limit far above what ordinary
// programs expect (lifecycle.RaiseFileLimit), and Go cannot set a child's
// limit between fork and exec, so Spawn applies it with prlimit(2) as soon
// as the child is started: by then it has exec'd its program (Go starts
// children with vfork semantics), usually the wrapper shell, which starts
// the requested program only after that. A grandchild forked before the
// prlimit would keep envd's limit; the wrapper does not fork. Call it
// before anything is spawned.
func (r *Reaper) LimitChildren(lim unix.Rlimit) {
	r.spawnMu.Lock()
	defer r.spawnMu.Unlock()
	r.childFiles = &lim
}

// Spawn runs start, which must create exactly one child (e.g. with
// syscall.ForkExec) and return its pid, under the spawn lock, and registers
// that pid. The returned channel receives the child's status exactly once.
func (r *Reaper) Spawn(start func() (int, error)) (int, <-chan unix.WaitStatus, error) {
	ch := make(chan unix.WaitStatus, 1)
	r.spawnMu.Lock()
	defer r.spawnMu.Unlock()
	pid, err := start()
	if err != nil {
		return 0, nil, err
	}
	if r.childFiles != nil {
		// The child cannot have been reaped (that needs the spawn lock), so
		// pid is still this child. A failure leaves it envd's limit.
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, r.childFiles, nil); err != nil {
			r.log.Debug("cannot set a child's descriptor limit", "pid", pid, "error", err.Error())
		}
	}
	r.managed[pid] = ch
	return pid, ch, nil
}

// WithSpawnLock runs fn holding the spawn lock, so that no fork is in
// progress meanwhile: /freeze writes the static groups inside it (spec
// control-plane.md §2.5). fn must be short and must not spawn.
func (r *Reaper) WithSpawnLock(fn func()) {
	r.spawnMu.Lock()
	defer r.spawnMu.Unlock()
	fn()
}

// HoldSpawnLock takes the spawn lock for a live upgrade, waiting at most
// until ctx ends, and returns its release (control-plane.md §8.6 step 2):
// while it is held nothing is spawned and the reaper does not run, so a
// child that exits stays a zombie with its status kept by the kernel for
// the next image (or for this one after a rollback). A waiter that gives
// up leaves a goroutine that takes and drops the lock as soon as it is
// free.
func (r *Reaper) HoldSpawnLock(ctx context.Context) (release func(), err error) {
	got := make(chan struct{})
	abandon := make(chan struct{})
	go func() {
		r.spawnMu.Lock()
		select {
		case got <- struct{}{}:
		case <-abandon:
			r.spawnMu.Unlock()
		}
	}()
	select {
	case <-got:
		var once sync.Once
		return func() {
			once.Do(func() {
				r.spawnMu.Unlock()
				// Statuses may have accumulated meanwhile; their SIGCHLDs
				// were coalesced or handled while the lock was held.
				select {
				case r.sigs <- syscall.SIGCHLD:
				default:
				}
			})
		}, nil
	case <-ctx.Done():
		close(abandon)
		return nil, ctx.Err()
	}
}

// Managed reports how many children are registered and not yet reaped.
func (r *Reaper) Managed() int {
	r.spawnMu.Lock()
	defer r.spawnMu.Unlock()
	return len(r.managed)
}
