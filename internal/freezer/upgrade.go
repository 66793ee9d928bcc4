package freezer

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/envd/envd/internal/handover"
	"github.com/envd/envd/internal/handover/handoverpb"
)

// ErrNotFrozen is the upgrade's strict freeze failing (control-plane.md
// §8.6 step 3).
var ErrNotFrozen = errors.New("workload was not frozen before the handover")

// HoldLock acquires the freezer lock for a live upgrade, waiting at most
// until ctx ends; the upgrade holds it through its own freeze to the exec
// or the rollback (§1.3 #6).
func (f *Freezer) HoldLock(ctx context.Context) (release func(), err error) {
	if !f.acquire(ctx) {
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() { once.Do(f.release) }, nil
}

// FreezeHeld is the upgrade's freeze (§8.6 step 3): a legacy sweep of the
// static groups, written under the spawn lock the caller already holds,
// then a wait of up to settle. It is strict: unless everything stopped
// (notFrozen and failed 0; unobservable is acceptable, so that an envd
// with the no-op manager can still upgrade) it fails and the caller rolls
// back and thaws. The caller holds the freezer lock (HoldLock). It counts
// as an envd freeze; no rescan happens if one was already in effect.
func (f *Freezer) FreezeHeld(ctx context.Context, settle time.Duration) error {
	res, err := f.freezeLocked(ctx, Request{Mode: Legacy, MaxWait: settle}, true)
	if err != nil {
		return err
	}
	if res.NotFrozen != 0 || res.Failed != 0 {
		return ErrNotFrozen
	}
	return nil
}

// ThawAfterRollback is the rollback's thaw (§8.9 step 4).
func (f *Freezer) ThawAfterRollback() { f.Thaw("upgrade rollback") }

// ThawAfterFailedHandover thaws at once in an image whose handover failed
// (§8.16), treating an envd freeze as in effect: the old image did freeze,
// and the guest record may be lost (clearing too much is the safe
// direction).
func (f *Freezer) ThawAfterFailedHandover() {
	if f.o.Cgroup2 {
		f.mu.Lock()
		f.inEffect = true
		f.mu.Unlock()
	}
	f.Thaw("failed handover")
}

// ThawFallback is the post-handover fallback's thaw (§8.14 item 2).
func (f *Freezer) ThawFallback() { f.Thaw("post-handover fallback") }

// Placement is the cgroup manager's placement switch (*cgroups.Manager),
// which the handover carries with the freezer's state.
type Placement interface {
	PlacementDisabled() bool
	DisablePlacement()
}

// HandoverPart is the freezer's share of a live upgrade (§8.7 "Freezer"):
// the guest record and whether placement was disabled; in-effect is
// implied (the upgrade froze). It is a handover.Part and a
// handover.Importer.
type HandoverPart struct {
	F         *Freezer
	Placement Placement
}

var (
	_ handover.Part     = HandoverPart{}
	_ handover.Importer = HandoverPart{}
)

// Name implements handover.Part.
func (p HandoverPart) Name() string { return "freezer" }

// Quiesce has nothing to stop: the upgrade holds the freezer lock.
func (p HandoverPart) Quiesce(context.Context) error { return nil }

// Export writes the guest record and the placement flag.
func (p HandoverPart) Export(rec *handoverpb.Record, _ *handover.Carried) error {
	st := p.F.Export()
	rec.Freezer = &handoverpb.Freezer{
		GuestRecord:       slices.Clone(st.GuestRecord),
		PlacementDisabled: p.Placement != nil && p.Placement.PlacementDisabled(),
	}
	return nil
}

// Resume implements handover.Part.
func (p HandoverPart) Resume() {}

// Import restores placement (§8.11 step 10) and the freezer (step 11): a
// freeze in effect, the guest record, the thaw watchdog armed for a full
// window.
func (p HandoverPart) Import(rec *handoverpb.Record, _ *handover.Inherited) (handover.Counts, error) {
	if rec.GetFreezer().GetPlacementDisabled() && p.Placement != nil {
		p.Placement.DisablePlacement()
	}
	p.F.RestoreHandover(State{GuestRecord: rec.GetFreezer().GetGuestRecord(), InEffect: true})
	return handover.Counts{}, nil
}
