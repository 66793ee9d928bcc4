// Package lifecycle carries envd through the VM's life (spec lifecycle.md
// §2–§3, §7): the early startup guarantees (standard descriptors, process
// settings), the duties of PID 1 (kernel filesystems, /dev links, cgroup
// controllers, loopback, Ctrl-Alt-Del), signal routing, the bounded
// graceful shutdown, and snapshot prepare with the post-restore recovery
// that undoes it. The reaper, the cgroup manager and the port forwarder are
// their own packages; main hands them to this one.
package lifecycle

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
)

// Part is one subsystem that must be quiet while the VM is prepared for a
// snapshot. Suspend and Resume must be idempotent; Resume must also be safe
// when Suspend was never called.
type Part struct {
	Name    string
	Suspend func()
	Resume  func()
}

// Snapshot coordinates /snapshot/prepare and the recovery that undoes it,
// exactly once per prepare, on the first /health or /init afterwards.
type Snapshot struct {
	log   *slog.Logger
	parts []Part // in suspension order; resumed in reverse

	mu           sync.Mutex // the snapshot lock
	needsRestore atomic.Bool
	savedProcs   int
	prepares     atomic.Uint64
	recoveries   atomic.Uint64
}

// NewSnapshot returns a coordinator for parts, listed in the order they are
// suspended at prepare (spec: port forwarding, MMDS poller, keepalive timers,
// connection tracker).
func NewSnapshot(log *slog.Logger, parts ...Part) *Snapshot {
	return &Snapshot{log: log, parts: parts}
}

// Prepare quiesces envd. respond must write and flush the HTTP response; it
// is called after the subsystems are quiet and before the heavy work (GC,
// returning memory to the OS, GOMAXPROCS 1), so the host's 3 s budget is
// spent on nothing slow. A second Prepare before recovery only responds.
func (s *Snapshot) Prepare(respond func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.needsRestore.Load() {
		respond()
		return
	}
	for _, p := range s.parts {
		p.Suspend()
	}
	s.needsRestore.Store(true)
	s.prepares.Add(1)
	respond()
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	s.savedProcs = runtime.GOMAXPROCS(1)
	s.log.Info("snapshot prepared")
}

// Barrier acquires and releases the snapshot lock, waiting at most until
// ctx ends, so that a caller never overlaps the garbage collection and
// memory release of a prepare (POST /collapse, spec control-plane.md
// §6.1). The lock is not held afterwards. A waiter whose ctx ended leaves a
// goroutine that takes and drops the lock as soon as it is free.
func (s *Snapshot) Barrier(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.mu.Lock()
		//lint:ignore SA2001 the empty critical section is the barrier
		s.mu.Unlock()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Hold takes the snapshot lock for a live upgrade, waiting at most until
// ctx ends, and returns its release (control-plane.md §1.3 #2): no
// prepare and no recovery runs until the exec or the rollback. A waiter
// that gives up leaves a goroutine that takes and drops the lock as soon
// as it is free.
func (s *Snapshot) Hold(ctx context.Context) (release func(), err error) {
	got := make(chan struct{})
	abandon := make(chan struct{})
	go func() {
		s.mu.Lock()
		select {
		case got <- struct{}{}:
		case <-abandon:
			s.mu.Unlock()
		}
	}()
	select {
	case <-got:
		var once sync.Once
		return func() { once.Do(s.mu.Unlock) }, nil
	case <-ctx.Done():
		close(abandon)
		return nil, ctx.Err()
	}
}

// Prepared reports whether a prepare is waiting for recovery.
func (s *Snapshot) Prepared() bool { return s.needsRestore.Load() }

// RecoverIfNeeded runs post-restore recovery if a prepare is pending; only
// the first caller after a prepare does the work. It reports whether it ran.
func (s *Snapshot) RecoverIfNeeded() bool {
	if !s.needsRestore.CompareAndSwap(true, false) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.savedProcs > 0 {
		runtime.GOMAXPROCS(s.savedProcs)
	}
	runtime.GC()
	debug.FreeOSMemory()
	s.resumeLocked()
	s.recoveries.Add(1)
	s.log.Info("recovered after restore", "rss_kib", RSSKiB(), "goroutines", runtime.NumGoroutine())
	return true
}

// EnsureResumed resumes every part (idempotent); /init calls it as a safety
// net after a possible recovery.
func (s *Snapshot) EnsureResumed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.needsRestore.Load() {
		return // a prepare is pending; recovery will resume
	}
	s.resumeLocked()
}

func (s *Snapshot) resumeLocked() {
	for i := len(s.parts) - 1; i >= 0; i-- {
		s.parts[i].Resume()
	}
}

// Counts reports how many prepares and recoveries ran.
func (s *Snapshot) Counts() (prepares, recoveries uint64) {
	return s.prepares.Load(), s.recoveries.Load()
}

// RSSKiB is envd's resident memory (VmRSS) in KiB, or -1 if unknown.
func RSSKiB() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Bytes()
		if bytes.HasPrefix(line, []byte("VmRSS:")) {
			f := bytes.Fields(line[len("VmRSS:"):])
			if len(f) > 0 {
				if n, err := strconv.ParseInt(string(f[0]), 10, 64); err == nil {
					return n
				}
			}
		}
	}
	return -1
}
