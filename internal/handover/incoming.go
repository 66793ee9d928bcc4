package handover

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/handover/handoverpb"
)

// DefaultFallback is the post-handover fallback's window of guest
// monotonic time (§8.14).
const DefaultFallback = 60 * time.Second

// Registrar registers a carried child with the single reaper before its
// first pass (*reaper.Reaper).
type Registrar interface {
	Adopt(pid int) (<-chan unix.WaitStatus, error)
}

// Incoming is the incoming side of a handover (§8.11): created first thing
// in main by Begin, whether or not envd was started from a handover
// (Active says which).
type Incoming struct {
	active bool
	memfd  int
	self   int // envd's pid

	// failed: the handover as a whole failed (§8.16); why says how.
	failed atomic.Bool
	why    string

	rec *handoverpb.Record
	in  *Inherited

	counts  Counts
	header  string
	log     *slog.Logger
	started time.Time

	mu       sync.Mutex
	fallback *time.Timer
	stopped  bool
}

// Inherited is what an Importer takes its descriptors and carried children
// from.
type Inherited struct {
	mu sync.Mutex
	// open: the descriptors ≥ 3 open when the image started, all inherited.
	open map[int]bool
	// kinds: what the record lists them as.
	kinds map[int]handoverpb.DescriptorKind
	// adopted: taken by an importer (or the memory file, read and closed).
	adopted map[int]bool
	// children: carried pids registered with the reaper, with their status
	// channel; rejected: those that failed the parent check.
	children map[uint32]<-chan unix.WaitStatus
	rejected map[uint32]bool
}

// Begin is step 2 of §8.11, run before anything else can open or inherit
// a descriptor: it reads and removes ENVD_HANDOVER_FD from envd's
// environment (it must reach no child and no later upgrade), records the
// inherited descriptors numbered 3 or above (inheritedDescriptors), and
// marks every descriptor from 3 up close-on-exec. Without the variable it does nothing
// and the result is inactive.
func Begin() *Incoming {
	in := &Incoming{memfd: -1, self: os.Getpid(), started: time.Now(), in: &Inherited{
		open: map[int]bool{}, kinds: map[int]handoverpb.DescriptorKind{}, adopted: map[int]bool{},
		children: map[uint32]<-chan unix.WaitStatus{}, rejected: map[uint32]bool{},
	}}
	v, ok := os.LookupEnv(EnvFD)
	if !ok {
		return in
	}
	_ = os.Unsetenv(EnvFD)
	in.active = true
	defer in.recoverInto("take stock of the inherited descriptors")
	fds := inheritedDescriptors()
	cloexecAll(fds)
	for _, fd := range fds {
		in.in.open[fd] = true
	}
	fd, err := strconv.Atoi(v)
	switch {
	case err != nil || fd < 3:
		in.fail(fmt.Sprintf("%s=%q is not a descriptor number", EnvFD, v))
	case !in.in.open[fd]:
		in.fail(fmt.Sprintf("%s=%d is not open", EnvFD, fd))
	default:
		in.memfd = fd
	}
	return in
}

// Active reports whether envd was started from a handover, successful or
// not: the post-handover gate and X-Envd-Handover apply.
func (in *Incoming) Active() bool { return in.active }

// Failed reports whether the handover as a whole failed (§8.16).
func (in *Incoming) Failed() bool { return in.failed.Load() }

func (in *Incoming) fail(why string) {
	if in.failed.CompareAndSwap(false, true) {
		in.why = why
	}
}

// Read is step 5: it reads the whole memory file, closes it and decodes
// the record. An unreadable or undecodable record, or one of a schema
// this image does not read, fails the handover. log is the handover's
// logger from here on.
func (in *Incoming) Read(log *slog.Logger) {
	in.log = log
	if !in.active || in.memfd < 0 {
		return
	}
	defer in.recoverInto("read the record")
	b, err := readMemfd(in.memfd)
	unix.Close(in.memfd)
	in.in.adopted[in.memfd] = true
	if err != nil {
		in.fail(err.Error())
		return
	}
	rec, err := decode(b)
	wipe(b)
	if err != nil {
		in.fail(err.Error())
		return
	}
	in.rec = rec
	for _, d := range rec.GetDescriptors() {
		in.in.kinds[int(d.GetFd())] = d.GetKind()
	}
}

// FromVersion is the outgoing image's version ("" when unknown).
func (in *Incoming) FromVersion() string { return in.rec.GetHeader().GetOutgoingVersion() }

// RegisterChildren is step 6: before the reaper's first pass, every
// carried process whose leader has not been reaped yet and whose
// /proc/<pid>/stat names envd as its parent is registered as managed. A
// process whose wait status is already in the record is not registered
// (its pid was freed by that reap and may belong to another process now);
// one that fails the check (only a corrupt record can do that: nothing
// reaped between serialisation and now) is rejected, for the process
// importer to count.
func (in *Incoming) RegisterChildren(r Registrar) {
	if in.rec == nil || in.Failed() {
		return
	}
	defer in.recoverInto("register carried processes")
	for _, p := range in.rec.GetProcesses() {
		if p.WaitStatus != nil {
			continue
		}
		pid := p.GetPid()
		if ppid, ok := parentOf(int(pid)); !ok || ppid != in.self || pid == 0 {
			in.in.rejected[pid] = true
			continue
		}
		ch, err := r.Adopt(int(pid))
		if err != nil {
			in.in.rejected[pid] = true
			continue
		}
		in.in.children[pid] = ch
	}
}

// Restore runs the importers in order (§8.11 steps 9–16; the caller lists
// them in that order), each under panic recovery. A panic fails the whole
// handover (§8.16); an importer's error is only logged. After a failure
// nothing more is imported.
func (in *Incoming) Restore(importers ...Importer) {
	if !in.active {
		return
	}
	for _, imp := range importers {
		if in.rec == nil || in.Failed() {
			return
		}
		c, err := in.importOne(imp)
		in.counts = in.counts.add(c)
		if err != nil {
			in.log.Warn("handover: part not fully restored", "part", imp.Name(), "error", err.Error())
		}
	}
}

func (in *Incoming) importOne(imp Importer) (c Counts, err error) {
	defer in.recoverInto("restore " + imp.Name())
	return imp.Import(in.rec, in.in)
}

// recoverInto turns a panic into a failed handover: PID 1 carries on with
// whatever it has.
func (in *Incoming) recoverInto(what string) {
	if p := recover(); p != nil {
		in.fail(fmt.Sprintf("panic while trying to %s: %v", what, p))
		if in.log != nil {
			in.log.Error("panic in the handover", "step", what, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		}
	}
}

// FinishOptions are what the end of the restore acts on.
type FinishOptions struct {
	// Version is this image's version, for the log line.
	Version string
	// Initialized reports whether an /init has succeeded (the fallback
	// does nothing after one).
	Initialized func() bool
	// Thaw is the fallback's thaw (§8.14 item 2).
	Thaw func()
	// ThawFailed thaws at once after a failed handover, treating an envd
	// freeze as in effect (§8.16).
	ThawFailed func()
	// Fallback is the fallback's window (DefaultFallback if zero).
	Fallback time.Duration
}

// Finish ends the restore: every inherited descriptor that nothing adopted
// is closed (after a failure: the workload's pipes with them, §8.16), the
// outcome is fixed for X-Envd-Handover and logged, and either the workload
// is thawed at once (failed) or the post-handover fallback is armed.
func (in *Incoming) Finish(o FinishOptions) {
	if !in.active {
		return
	}
	closed := in.in.closeUnadopted()
	if in.Failed() {
		in.counts = Counts{}
	}
	c := in.counts
	in.header = fmt.Sprintf(`{"failed":%t,"procs":%d,"procs_failed":%d,"retained":%d,"retained_failed":%d,"watchers":%d,"watchers_failed":%d}`,
		in.Failed(), c.Procs, c.ProcsFailed, c.Retained, c.RetainedFailed, c.Watchers, c.WatchersFailed)
	attrs := []any{"from_version", in.FromVersion(), "version", o.Version, "failed", in.Failed(),
		"procs", c.Procs, "procs_failed", c.ProcsFailed, "retained", c.Retained, "retained_failed", c.RetainedFailed,
		"watchers", c.Watchers, "watchers_failed", c.WatchersFailed, "unadopted_descriptors_closed", closed,
		"goroutines", runtime.NumGoroutine()}
	if in.log == nil {
		in.log = slog.New(slog.DiscardHandler)
	}
	if in.Failed() {
		in.log.Error("envd resumed after handover", append(attrs, "error", in.why)...)
		if o.ThawFailed != nil {
			o.ThawFailed()
		}
		return
	}
	in.log.Info("envd resumed after handover", attrs...)
	window := o.Fallback
	if window <= 0 {
		window = DefaultFallback
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.stopped {
		return
	}
	in.fallback = time.AfterFunc(window, func() { in.fire(o) })
}

// fire is the post-handover fallback (§8.14 item 2): no /init came within
// the window, so the workload is thawed; the post-handover gate stays.
func (in *Incoming) fire(o FinishOptions) {
	defer func() {
		if p := recover(); p != nil {
			in.log.Error("panic in the post-handover fallback", "panic", fmt.Sprint(p))
		}
	}()
	if o.Initialized != nil && o.Initialized() {
		return
	}
	in.log.Warn("post-upgrade /init did not arrive; thawing workload as fallback")
	if o.Thaw != nil {
		o.Thaw()
	}
}

// Stop disarms the fallback (shutdown).
func (in *Incoming) Stop() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.stopped = true
	if in.fallback != nil {
		in.fallback.Stop()
	}
}

// Header is the X-Envd-Handover value (§8.15), for every /init response of
// an envd started from a handover.
func (in *Incoming) Header() (string, bool) {
	if !in.active || in.header == "" {
		return "", false
	}
	return in.header, true
}

// Take adopts an inherited descriptor: it must have been open when the
// image started, be listed in the record with kind, and be of that kind.
// The caller owns the returned file.
func (h *Inherited) Take(fd int, kind handoverpb.DescriptorKind) (*os.File, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case !h.open[fd]:
		return nil, fmt.Errorf("descriptor %d was not inherited", fd)
	case h.adopted[fd]:
		return nil, fmt.Errorf("descriptor %d is already adopted", fd)
	case h.kinds[fd] != kind:
		return nil, fmt.Errorf("descriptor %d is listed as %v, not %v", fd, h.kinds[fd], kind)
	}
	if err := checkKind(fd, kind); err != nil {
		return nil, err
	}
	h.adopted[fd] = true
	return os.NewFile(uintptr(fd), "handover-"+strconv.Itoa(fd)), nil
}

// Child returns the status channel of a carried process registered with
// the reaper before its first pass; rejected reports one that failed the
// parent check (§8.11 step 6).
func (h *Inherited) Child(pid uint32) (status <-chan unix.WaitStatus, rejected bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.children[pid], h.rejected[pid]
}

// closeUnadopted closes every inherited descriptor no importer took.
func (h *Inherited) closeUnadopted() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for fd := range h.open {
		if h.adopted[fd] {
			continue
		}
		if err := unix.Close(fd); err == nil || !errors.Is(err, unix.EBADF) {
			n++
		}
		h.adopted[fd] = true
	}
	return n
}

// Gate returns the post-handover gate (§5.3): closed while envd, started
// from a handover, is not initialized.
func (in *Incoming) Gate(initialized func() bool) func() bool {
	return func() bool { return in.active && !initialized() }
}

// Cmd is the --cmd to start: none after a handover, which carries the
// process it started (§8.11 step 3).
func (in *Incoming) Cmd(cmd string) string {
	if in.active {
		return ""
	}
	return cmd
}
