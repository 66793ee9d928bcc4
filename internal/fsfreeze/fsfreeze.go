// Package fsfreeze owns the freeze of the guest's root filesystem for a
// filesystem-only pause (spec control-plane.md §7): POST /fsfreeze
// (FIFREEZE on "/"), POST /fsthaw (FITHAW), their idempotency, the record of
// a freeze made by envd and the watchdog that thaws a freeze nobody undid.
// It knows nothing of HTTP.
//
// While the filesystem is frozen every write to it blocks in the kernel,
// uninterruptibly, until the thaw. envd's own writes go elsewhere (console,
// /run on tmpfs, cgroupfs, procfs); the one exception it cannot choose is
// its standard output, which an image may point at a file on the root
// filesystem: then log output is held (dropped and counted) for the frozen
// window, because a log line blocked in write(2) would hold the logger's
// lock and with it every goroutine that logs, the thaw included.
package fsfreeze

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// DefaultWatchdog is the window after which a freeze by envd is undone.
const DefaultWatchdog = 10 * time.Minute

var (
	// ErrNotAvailable: /fsfreeze with --isnotfc, where "/" is the host's.
	ErrNotAvailable = errors.New("filesystem freeze is not available with --isnotfc")
	// ErrAbandoned: the client went away before the fs-freeze lock was
	// obtained; nothing was done.
	ErrAbandoned = errors.New("filesystem freeze abandoned: the client went away")
)

// LogHold keeps log output away from a frozen filesystem (logging.Gate).
type LogHold interface {
	// Hold starts dropping log output; it waits a bounded time for writes
	// in progress.
	Hold()
	// Release ends it and reports how many lines were dropped.
	Release() int
}

// Options configure an FS.
type Options struct {
	// Target is the mount point to freeze: "/" (a test-only variable
	// names another).
	Target string
	// Disabled is --isnotfc: /fsfreeze fails, /fsthaw does nothing.
	Disabled bool
	// Watchdog is the window after the last successful freeze after which
	// envd thaws (DefaultWatchdog if zero).
	Watchdog time.Duration
	// Log receives the freeze and thaw lines.
	Log *slog.Logger
	// Output, when set, is held while the target is frozen if envd's
	// standard output is on the target filesystem.
	Output LogHold

	// ioctl replaces the kernel in unit tests.
	ioctl func(target string, freeze bool) error
	// stdoutOn reports whether standard output is on the target's
	// filesystem (tests).
	stdoutOn func(target string) bool
}

// FS is the root filesystem's freeze state.
type FS struct {
	o Options

	// lock is the fs-freeze lock (control-plane.md §1.3, #3); a channel so
	// that /fsfreeze can give up when its client goes away.
	lock chan struct{}

	mu      sync.Mutex
	frozen  bool // frozen by envd
	held    bool // log output held
	wd      *time.Timer
	wdGen   uint64
	stopped bool
}

// New returns the filesystem freezer.
func New(o Options) *FS {
	if o.Target == "" {
		o.Target = "/"
	}
	if o.Watchdog <= 0 {
		o.Watchdog = DefaultWatchdog
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.ioctl == nil {
		o.ioctl = freezeIoctl
	}
	if o.stdoutOn == nil {
		o.stdoutOn = stdoutOnFilesystem
	}
	return &FS{o: o, lock: make(chan struct{}, 1)}
}

// Frozen reports whether the filesystem is frozen by envd.
func (f *FS) Frozen() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.frozen
}

// Hold takes the fs-freeze lock for a live upgrade, waiting at most until
// ctx ends (control-plane.md §1.3 #3): no freeze or thaw of the root
// filesystem runs until the exec or the rollback.
func (f *FS) Hold(ctx context.Context) (release func(), err error) {
	select {
	case f.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() { once.Do(func() { <-f.lock }) }, nil
}

// Freeze runs POST /fsfreeze (§7.2). FIFREEZE flushes the filesystem and
// can take as long as a sync; EBUSY (already frozen) counts as success.
func (f *FS) Freeze(ctx context.Context) error {
	if f.o.Disabled {
		return ErrNotAvailable
	}
	select {
	case f.lock <- struct{}{}:
	case <-ctx.Done():
		return ErrAbandoned
	}
	defer func() { <-f.lock }()
	f.holdOutput()
	if err := f.o.ioctl(f.o.Target, true); err != nil {
		f.mu.Lock()
		frozen := f.frozen
		f.mu.Unlock()
		if !frozen {
			f.releaseOutput()
		}
		f.o.Log.Warn("filesystem freeze failed", "target", f.o.Target, "error", err.Error())
		return err
	}
	f.mu.Lock()
	f.frozen = true
	f.armLocked()
	f.mu.Unlock()
	f.o.Log.Info("filesystem frozen", "target", f.o.Target)
	return nil
}

// Thaw runs POST /fsthaw (§7.3) under the fs-freeze lock, acquired
// unconditionally. EINVAL (not frozen) counts as success. With --isnotfc it
// does nothing.
func (f *FS) Thaw() error {
	if f.o.Disabled {
		return nil
	}
	f.lock <- struct{}{}
	defer func() { <-f.lock }()
	return f.thawLocked("fsthaw")
}

func (f *FS) thawLocked(why string) error {
	if err := f.o.ioctl(f.o.Target, false); err != nil {
		f.o.Log.Warn("filesystem thaw failed", "target", f.o.Target, "error", err.Error())
		return err
	}
	f.mu.Lock()
	was := f.frozen
	f.frozen = false
	f.disarmLocked()
	f.mu.Unlock()
	dropped := f.releaseOutput()
	if was {
		attrs := []any{"target", f.o.Target, "by", why}
		if dropped > 0 {
			attrs = append(attrs, "log_lines_dropped", dropped)
		}
		f.o.Log.Info("filesystem thawed", attrs...)
	}
	return nil
}

// ThawIfFrozen is the shutdown's first step (lifecycle.md §3.5): a frozen
// filesystem would stall every later step.
func (f *FS) ThawIfFrozen() {
	if f.Frozen() {
		_ = f.Thaw()
	}
}

// Stop disarms the watchdog.
func (f *FS) Stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	f.disarmLocked()
}

func (f *FS) armLocked() {
	if f.stopped {
		return
	}
	if f.wd != nil {
		f.wd.Stop()
	}
	f.wdGen++
	gen := f.wdGen
	f.wd = time.AfterFunc(f.o.Watchdog, func() { f.fire(gen) })
}

func (f *FS) disarmLocked() {
	if f.wd != nil {
		f.wd.Stop()
		f.wd = nil
	}
	f.wdGen++
}

// fire is the watchdog (§7.4): a running VM whose filesystem stays frozen
// this long is never legitimate (the guest clock stands still while the VM
// is paused), and without it an orchestrator that died between its freeze
// and its pause would leave every write blocked for ever.
func (f *FS) fire(gen uint64) {
	defer func() {
		if p := recover(); p != nil {
			f.o.Log.Error("panic in the filesystem-freeze watchdog", "panic", fmt.Sprint(p))
		}
	}()
	f.lock <- struct{}{}
	defer func() { <-f.lock }()
	f.mu.Lock()
	current := gen == f.wdGen && f.frozen && !f.stopped
	f.mu.Unlock()
	if !current {
		return
	}
	f.o.Log.Warn("root filesystem freeze outlived the watchdog window; thawing", "target", f.o.Target)
	if err := f.thawLocked("watchdog"); err != nil {
		f.mu.Lock()
		f.armLocked()
		f.mu.Unlock()
	}
}

func (f *FS) holdOutput() {
	if f.o.Output == nil || !f.o.stdoutOn(f.o.Target) {
		return
	}
	f.mu.Lock()
	already := f.held
	f.held = true
	f.mu.Unlock()
	if !already {
		f.o.Output.Hold()
	}
}

func (f *FS) releaseOutput() int {
	f.mu.Lock()
	held := f.held
	f.held = false
	f.mu.Unlock()
	if !held {
		return 0
	}
	return f.o.Output.Release()
}
