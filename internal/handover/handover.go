// Package handover owns envd's live self-upgrade (spec control-plane.md §8):
// the outgoing side of POST /upgrade (admission, staging the binary, the
// compatibility probe, quiescing under the locks of §1.3, the freeze, the
// record in a sealed memory file, the execve, the rollback) and the
// incoming side of an envd started from a handover (the inherited
// descriptors, reading the record, re-registering carried children with
// the reaper before its first pass, restoring every part, the fallback
// thaw, the X-Envd-Handover header). It knows nothing of HTTP.
//
// Subsystems take part through two small interfaces: a Part on the outgoing
// side (Quiesce, Export, Resume) and an Importer on the incoming side
// (Import). The record is the protobuf message of package handoverpb
// (proto/envd/handover/v1/handover.proto). docs/upgrade.md describes the
// seams for the parts that later work fills in.
package handover

import (
	"context"
	"errors"
	"fmt"

	"github.com/envd/envd/internal/handover/handoverpb"
)

// MaxSchema is the highest record schema this binary reads; the probe line
// `handover-schema <N>` (spec §8.5, lifecycle.md §1.3) prints it.
const MaxSchema = 1

// schemaFor is the lowest schema that can express rec (§8.7): a writer
// stamps it so that an envd can hand over to an older one whenever the
// state uses nothing newer. Every schema above 1 adds a rule here ("if rec
// uses field X, at least 2").
func schemaFor(rec *handoverpb.Record) uint32 {
	_ = rec
	return 1
}

// Environment variables of the live upgrade (lifecycle.md §4.1). Neither
// ever reaches a spawned process.
const (
	// EnvFD names the memory file holding the record; set only by an
	// outgoing envd on the execve of its successor (§8.8).
	EnvFD = "ENVD_HANDOVER_FD"
	// EnvProbe makes --version print the handover-schema line (§8.5).
	EnvProbe = "ENVD_HANDOVER_PROBE"
)

// Part is one subsystem's share of the outgoing side (spec §8.6–§8.9).
//
// The upgrade calls, while holding every lock of §1.3 up to the spawn
// lock: Quiesce on each part in registration order, then Export on each
// part in the same order; then it execs. If anything fails before or at
// the execve it calls Resume, in reverse order, on every part whose
// Quiesce was called (also when that Quiesce itself failed), and the old
// image carries on.
type Part interface {
	// Name names the part in errors and logs ("processes", "init", ...).
	Name() string
	// Quiesce stops the part at a safe boundary so that its state no
	// longer changes (e.g. output readers stopped between chunks, a lock
	// taken that keeps requests from draining carried state). It must
	// return by ctx's deadline. An error aborts the upgrade ("handover
	// aborted: <name>: <error>").
	Quiesce(ctx context.Context) error
	// Export writes the part's state into rec and registers every
	// descriptor the state names with fds (each exactly once). It must not
	// block. An error aborts the upgrade.
	Export(rec *handoverpb.Record, fds *Carried) error
	// Resume undoes Quiesce after a rollback. It must not fail: the old
	// image keeps serving with whatever it has.
	Resume()
}

// Importer is one subsystem's share of the incoming side (spec §8.11). The
// incoming image calls Import on each importer in the order of §8.11 steps
// 9–16, under panic recovery; a panic fails the whole handover (§8.16).
type Importer interface {
	Name() string
	// Import restores the part's state from rec, taking the descriptors it
	// carries from in (a descriptor not taken is closed at the end of the
	// restore). It returns what it contributes to X-Envd-Handover. An
	// error is logged: per-item failures are only counted (§8.16).
	Import(rec *handoverpb.Record, in *Inherited) (Counts, error)
}

// Counts are the X-Envd-Handover counts (§8.15) an importer contributes.
type Counts struct {
	Procs, ProcsFailed       int
	Retained, RetainedFailed int
	Watchers, WatchersFailed int
}

func (c Counts) add(o Counts) Counts {
	return Counts{
		Procs: c.Procs + o.Procs, ProcsFailed: c.ProcsFailed + o.ProcsFailed,
		Retained: c.Retained + o.Retained, RetainedFailed: c.RetainedFailed + o.RetainedFailed,
		Watchers: c.Watchers + o.Watchers, WatchersFailed: c.WatchersFailed + o.WatchersFailed,
	}
}

// Carried collects the descriptors the outgoing side passes on: their
// close-on-exec flags are cleared just before the execve and set again on
// a rollback.
type Carried struct {
	list []*handoverpb.Descriptor
	seen map[int]bool
}

// Add registers fd as carried with its kind. Registering the same
// descriptor twice, or one below 3, is an error: every part owns its own
// descriptors, and 0–2 are envd's standard streams.
func (c *Carried) Add(fd int, kind handoverpb.DescriptorKind) error {
	if fd < 3 {
		return fmt.Errorf("descriptor %d cannot be carried", fd)
	}
	if kind == handoverpb.DescriptorKind_DESCRIPTOR_KIND_UNSPECIFIED {
		return fmt.Errorf("descriptor %d has no kind", fd)
	}
	if c.seen == nil {
		c.seen = map[int]bool{}
	}
	if c.seen[fd] {
		return fmt.Errorf("descriptor %d is carried twice", fd)
	}
	c.seen[fd] = true
	c.list = append(c.list, &handoverpb.Descriptor{Fd: int32(fd), Kind: kind})
	return nil
}

// FDs lists the carried descriptor numbers.
func (c *Carried) FDs() []int {
	out := make([]int, 0, len(c.list))
	for _, d := range c.list {
		out = append(out, int(d.Fd))
	}
	return out
}

// Refusal errors of the outgoing side, mapped to statuses by the HTTP
// handler (spec §8.3, §8.10). Their texts are the response messages.
var (
	ErrNotInitialized = errors.New("envd not initialized")
	ErrTarget         = errors.New("unsupported upgrade target")
	ErrInProgress     = errors.New("upgrade already in progress")
	ErrPrepared       = errors.New("envd is prepared for a snapshot")
	ErrFSFrozen       = errors.New("root filesystem is frozen")
	ErrTooLarge       = errors.New("upgrade binary too large")
	// ErrClientGone: the body ended early or the client went away while it
	// was being staged; nothing is answered.
	ErrClientGone = errors.New("upgrade body cut off")
)

// Failure is a 500 of /upgrade (§8.10): Message is the response text.
type Failure struct {
	Message string
	Err     error
}

func (f *Failure) Error() string { return f.Message }
func (f *Failure) Unwrap() error { return f.Err }

func failf(err error, format string, args ...any) *Failure {
	return &Failure{Message: fmt.Sprintf(format, args...), Err: err}
}
