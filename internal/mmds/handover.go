package mmds

import (
	"context"
	"time"

	"github.com/envd/envd/internal/handover"
	"github.com/envd/envd/internal/handover/handoverpb"
)

// HandoverPart is the MMDS poller's share of a live upgrade (§8.7
// "Miscellaneous": none, the boot poll, or a re-poll with its remaining
// deadline). Quiesce pauses the poller (§8.6 step 7); the incoming image's
// Start resumes what was carried (§8.11 step 14). It is a handover.Part
// and a handover.Importer.
type HandoverPart struct {
	P *Poller
}

var (
	_ handover.Part     = HandoverPart{}
	_ handover.Importer = HandoverPart{}
)

// Name implements handover.Part.
func (h HandoverPart) Name() string { return "mmds" }

// Quiesce pauses the poller.
func (h HandoverPart) Quiesce(context.Context) error {
	h.P.Pause()
	return nil
}

// Resume lets it continue after a rollback.
func (h HandoverPart) Resume() { h.P.Resume() }

// Export writes the poll state.
func (h HandoverPart) Export(rec *handoverpb.Record, _ *handover.Carried) error {
	st := h.P.State()
	m := &handoverpb.Mmds{Poll: handoverpb.MmdsPoll_MMDS_POLL_NONE}
	switch st.Kind {
	case PollBoot:
		m.Poll = handoverpb.MmdsPoll_MMDS_POLL_BOOT
	case PollRepoll:
		m.Poll, m.RemainingMs = handoverpb.MmdsPoll_MMDS_POLL_REPOLL, st.Remaining.Milliseconds()
	}
	rec.Mmds = m
	return nil
}

// Import makes the poller's Start resume the carried poll.
func (h HandoverPart) Import(rec *handoverpb.Record, _ *handover.Inherited) (handover.Counts, error) {
	st := PollState{Kind: PollNone}
	switch rec.GetMmds().GetPoll() {
	case handoverpb.MmdsPoll_MMDS_POLL_BOOT:
		st.Kind = PollBoot
	case handoverpb.MmdsPoll_MMDS_POLL_REPOLL:
		st = PollState{Kind: PollRepoll, Remaining: time.Duration(rec.GetMmds().GetRemainingMs()) * time.Millisecond}
	}
	h.P.Restore(st)
	return handover.Counts{}, nil
}
