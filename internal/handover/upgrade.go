package handover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/handover/handoverpb"
)

// Budgets of the outgoing side (§8.6).
const (
	// LockBudget bounds acquiring every lock of §1.3, the spawn lock
	// included, counted from the end of staging.
	LockBudget = 5 * time.Second
	// SettleBudget bounds the wait for the frozen static groups to settle.
	SettleBudget = 2 * time.Second
	// quiesceBudget bounds all parts' Quiesce together (forwarded
	// connections halt within 250 ms each, in parallel).
	quiesceBudget = 5 * time.Second
	// forkLockBudget bounds taking Go's fork lock for writing, which the
	// spawn lock already keeps free.
	forkLockBudget = time.Second
)

// HoldFunc acquires one lock of §1.3, waiting at most until ctx ends, and
// returns its release. The upgrade holds it from admission to the exec or
// the rollback.
type HoldFunc func(ctx context.Context) (release func(), err error)

// Freezer is the cgroup freezer as the upgrade uses it (*freezer.Freezer).
type Freezer interface {
	// HoldLock acquires the freezer lock (§1.3 #6) within ctx.
	HoldLock(ctx context.Context) (release func(), err error)
	// FreezeHeld runs a legacy sweep while the caller holds the freezer
	// lock and the spawn lock, and waits up to settle for the static
	// groups; it fails unless everything stopped (§8.6 step 3).
	FreezeHeld(ctx context.Context, settle time.Duration) error
	// ThawAfterRollback runs the thaw (§4.1), taking the freezer lock.
	ThawAfterRollback()
}

// Options configure the outgoing side.
type Options struct {
	// Version and Commit of this image, for the record's header and logs.
	Version, Commit string
	// StagingDir holds envd.next (DefaultStagingDir if empty).
	StagingDir string
	// Initialized reports whether an /init succeeded since envd started
	// (§5.3); Prepared whether a snapshot prepare awaits recovery; FSFrozen
	// whether the root filesystem is frozen by envd.
	Initialized, Prepared, FSFrozen func() bool
	// The locks of §1.3 #1–#5, acquired in this order; after the snapshot
	// lock Prepared is checked again, after the fs-freeze lock FSFrozen
	// (§8.6 step 1).
	InitLock, SnapshotLock, FSFreezeLock, CALock, HyperloopLock HoldFunc
	Freezer                                                     Freezer
	// SpawnLock holds the spawn lock (§1.3 #7) within ctx: from then on
	// nothing is spawned and the reaper does not run.
	SpawnLock func(ctx context.Context) (release func(), err error)
	// Parts take part in the handover, quiesced and exported in this
	// order (§8.6 steps 4–7).
	Parts []Part
	// Spawner runs the probe.
	Spawner Spawner
	// Args are envd's own arguments (os.Args[1:]), passed on unchanged.
	Args []string
	// Env is the environment the next image gets: envd's own as it was
	// given, before test-only variables were scrubbed (ExecEnvironment);
	// the current PATH and ENVD_HANDOVER_FD are set on top.
	Env []string
	// Corrupt makes the outgoing side write garbage instead of the record
	// (the test-only ENVD_TEST_HANDOVER_CORRUPT: the failed-handover path).
	Corrupt bool
	Log     *slog.Logger

	// exec replaces the image (syscall.Exec); tests replace it.
	exec execer
}

// Request is one POST /upgrade.
type Request struct {
	// Targets are the X-Envd-Upgrade-Bin values (empty ones are ignored).
	Targets []string
	// ReExec: Content-Length 0, execute the running binary again.
	ReExec bool
	// Body is the new binary (unless ReExec).
	Body io.Reader
	// Declared is the Content-Length (-1: unknown, chunked).
	Declared int64
}

// Upgrader is the outgoing side of POST /upgrade.
type Upgrader struct {
	o    Options
	busy atomic.Bool
	// closed: envd is shutting down; no exec may happen any more.
	closed atomic.Bool
}

// ErrShuttingDown refuses an upgrade once envd is shutting down (500
// "handover aborted: envd is shutting down").
var ErrShuttingDown = errors.New("envd is shutting down")

// Close is called when envd starts shutting down: an upgrade not yet at
// its exec rolls back instead (its shutdown signal would be lost with the
// old image), and later ones are refused.
func (u *Upgrader) Close() { u.closed.Store(true) }

// NewUpgrader returns the outgoing side.
func NewUpgrader(o Options) *Upgrader {
	if o.StagingDir == "" {
		o.StagingDir = DefaultStagingDir
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.exec == nil {
		o.exec = syscall.Exec
	}
	return &Upgrader{o: o}
}

// InProgress reports whether an upgrade is between admission and its end.
func (u *Upgrader) InProgress() bool { return u.busy.Load() }

// Upgrade runs POST /upgrade from admission (§8.3 rows 3–7) to the exec.
// It returns only when the upgrade did not happen: one of the refusal
// errors (ErrNotInitialized, ErrTarget, ErrInProgress, ErrPrepared,
// ErrFSFrozen, ErrTooLarge, ErrClientGone) or a *Failure, after the
// rollback has left the old image fully serving and thawed. On success
// it does not return: the process is the new image.
func (u *Upgrader) Upgrade(ctx context.Context, req Request) error {
	if !u.o.Initialized() {
		return ErrNotInitialized
	}
	for _, t := range req.Targets {
		if t != "" && t != DefaultStagingDir+"/"+NextName {
			return ErrTarget
		}
	}
	if !u.busy.CompareAndSwap(false, true) {
		return ErrInProgress
	}
	defer u.busy.Store(false)
	if u.o.Prepared() {
		return ErrPrepared
	}
	if u.o.FSFrozen() {
		return ErrFSFrozen
	}
	if u.closed.Load() {
		return failf(ErrShuttingDown, "handover aborted: %v", ErrShuttingDown)
	}
	if !req.ReExec && req.Declared > MaxBinaryBytes {
		return ErrTooLarge
	}
	path, candidate, err := u.stageAndProbe(req)
	if err != nil {
		u.o.Log.Warn("upgrade refused", "reason", err.Error())
		return err
	}
	// From here the outcome no longer depends on the client: the body has
	// been read, and what follows is bounded by its own budgets.
	err = u.swap(context.WithoutCancel(ctx), path, candidate)
	u.o.Log.Warn("upgrade rolled back; the old image keeps serving", "reason", err.Error(), "goroutines", runtime.NumGoroutine())
	return err
}

// stageAndProbe stores the body (or picks the running binary) and probes
// it (§8.4, §8.5); it returns the path to execute and the candidate's
// version.
func (u *Upgrader) stageAndProbe(req Request) (path, version string, err error) {
	need := uint32(MaxSchema)
	pathEnv := os.Getenv("PATH")
	if req.ReExec {
		version, err = probe(u.o.Spawner, ReExecPath, pathEnv, need)
		if err != nil {
			return "", "", failf(err, "incompatible upgrade binary: %v", err)
		}
		return ReExecPath, version, nil
	}
	tmp, err := stageBody(u.o.StagingDir, req.Body, MaxBinaryBytes)
	if err != nil {
		return "", "", err
	}
	version, err = probe(u.o.Spawner, tmp, pathEnv, need)
	if err != nil {
		_ = os.Remove(tmp)
		return "", "", failf(err, "incompatible upgrade binary: %v", err)
	}
	final, err := install(tmp, u.o.StagingDir)
	if err != nil {
		return "", "", err
	}
	return final, version, nil
}

// swap is §8.6–§8.9: it holds the locks, freezes, quiesces, serialises and
// execs; on any failure it rolls back and returns the *Failure.
func (u *Upgrader) swap(ctx context.Context, path, candidate string) (err error) {
	u.o.Log.Info("self-upgrade", "from", u.o.Version, "to", candidate, "path", path)
	var releases []func() // in acquisition order
	var quiesced []Part
	froze, rolledBack := false, false
	rollback := func(f *Failure) error {
		// §8.9 steps 2–4: resume the parts, release the spawn lock (the
		// reaper then collects what accumulated) and the other locks in
		// reverse order, the freezer lock before the thaw that takes it.
		rolledBack = true
		for i := len(quiesced) - 1; i >= 0; i-- {
			u.safely("resume "+quiesced[i].Name(), quiesced[i].Resume)
		}
		for i := len(releases) - 1; i >= 0; i-- {
			u.safely("release a lock", releases[i])
		}
		if froze {
			u.safely("thaw after rollback", u.o.Freezer.ThawAfterRollback)
		}
		return f
	}
	// A panic of the upgrade itself must not leave a lock held or the
	// workload frozen (§1.1: every lock is released by deferred code).
	defer func() {
		if p := recover(); p != nil {
			u.o.Log.Error("panic in the upgrade", "panic", fmt.Sprint(p))
			if !rolledBack {
				err = rollback(failf(fmt.Errorf("panic: %v", p), "handover aborted: panic: %v", p))
			} else {
				err = failf(fmt.Errorf("panic: %v", p), "handover aborted: panic: %v", p)
			}
		}
	}()

	lockCtx, cancel := context.WithTimeout(ctx, LockBudget)
	defer cancel()
	locks := []struct {
		hold    HoldFunc
		recheck func() bool
		refusal error
	}{
		{hold: u.o.InitLock},
		{hold: u.o.SnapshotLock, recheck: u.o.Prepared, refusal: ErrPrepared},
		{hold: u.o.FSFreezeLock, recheck: u.o.FSFrozen, refusal: ErrFSFrozen},
		{hold: u.o.CALock},
		{hold: u.o.HyperloopLock},
	}
	for _, l := range locks {
		if l.hold == nil {
			continue
		}
		release, err := l.hold(lockCtx)
		if err != nil {
			return rollback(failf(err, "handover aborted: envd busy"))
		}
		releases = append(releases, release)
		if l.recheck != nil && l.recheck() {
			rollback(nil)
			return l.refusal
		}
	}
	release, err := u.o.Freezer.HoldLock(lockCtx)
	if err != nil {
		return rollback(failf(err, "handover aborted: envd busy"))
	}
	releases = append(releases, release)
	release, err = u.o.SpawnLock(lockCtx)
	if err != nil {
		return rollback(failf(err, "handover aborted: envd busy"))
	}
	releases = append(releases, release)

	froze = true
	if err := u.o.Freezer.FreezeHeld(ctx, SettleBudget); err != nil {
		return rollback(failf(err, "handover aborted: freeze workload: %v", err))
	}

	qctx, qcancel := context.WithTimeout(ctx, quiesceBudget)
	defer qcancel()
	for _, p := range u.o.Parts {
		quiesced = append(quiesced, p)
		if err := u.call(p.Name()+" quiesce", func() error { return p.Quiesce(qctx) }); err != nil {
			return rollback(failf(err, "handover aborted: %s: %v", p.Name(), err))
		}
	}

	rec := &handoverpb.Record{Header: &handoverpb.Header{
		OutgoingVersion: u.o.Version, OutgoingCommit: u.o.Commit, CandidateVersion: candidate,
	}}
	var fds Carried
	for _, p := range u.o.Parts {
		if err := u.call(p.Name()+" export", func() error { return p.Export(rec, &fds) }); err != nil {
			wipeRecord(rec)
			return rollback(failf(err, "handover aborted: %s: %v", p.Name(), err))
		}
	}
	rec.Descriptors = fds.list
	b, err := encode(rec)
	wipeRecord(rec)
	if err != nil {
		return rollback(failf(err, "handover aborted: %v", err))
	}
	if u.o.Corrupt {
		// Test-only: a record the next image cannot decode.
		wipe(b)
		b = append(b[:0], "not a handover record"...)
	}
	memfd, err := writeMemfd(b)
	wipe(b)
	if err != nil {
		return rollback(failf(err, "handover aborted: %v", err))
	}
	argv := append([]string{path}, u.o.Args...)
	env := withVar(u.o.Env, "PATH", os.Getenv("PATH"))
	if u.closed.Load() {
		unix.Close(memfd)
		return rollback(failf(ErrShuttingDown, "handover aborted: %v", ErrShuttingDown))
	}
	u.o.Log.Info("handing over to the new image", "path", path, "descriptors", len(fds.list), "record_bytes", len(b))
	fctx, fcancel := context.WithTimeout(ctx, forkLockBudget)
	err = execWithHandover(fctx, u.o.exec, path, argv, env, memfd, fds.FDs())
	fcancel()
	// Still here: the execve failed (§8.9 step 1 is done, but for the
	// memory file).
	unix.Close(memfd)
	var pe *os.PathError
	if errors.As(err, &pe) {
		return rollback(failf(err, "execve %s: %v", pe.Path, pe.Err))
	}
	return rollback(failf(err, "handover aborted: %v", err))
}

// call runs a part's step under panic recovery: a panicking part aborts
// the upgrade, it never ends PID 1.
func (u *Upgrader) call(what string, f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			u.o.Log.Error("panic in the handover", "step", what, "panic", fmt.Sprint(p))
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return f()
}

func (u *Upgrader) safely(what string, f func()) {
	_ = u.call(what, func() error { f(); return nil })
}

// wipeRecord overwrites the token in rec once it has been encoded.
func wipeRecord(rec *handoverpb.Record) {
	if rec.GetInit() != nil {
		wipe(rec.Init.AccessToken)
	}
}
