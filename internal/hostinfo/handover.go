package hostinfo

import (
	"context"

	"github.com/envd/envd/internal/handover"
	"github.com/envd/envd/internal/handover/handoverpb"
)

// HandoverPart carries the previous /proc/stat reading (§8.7
// "Miscellaneous"), so that the first /metrics after a live upgrade
// measures cpu_used_pct since the last one before it, as without the
// upgrade. It is a handover.Part and a handover.Importer.
type HandoverPart struct {
	S *Sampler
}

var (
	_ handover.Part     = HandoverPart{}
	_ handover.Importer = HandoverPart{}
)

// Name implements handover.Part.
func (h HandoverPart) Name() string { return "metrics" }

// Quiesce implements handover.Part.
func (h HandoverPart) Quiesce(context.Context) error { return nil }

// Resume implements handover.Part.
func (h HandoverPart) Resume() {}

// Export writes the last CPU reading.
func (h HandoverPart) Export(rec *handoverpb.Record, _ *handover.Carried) error {
	h.S.mu.Lock()
	defer h.S.mu.Unlock()
	rec.Metrics = &handoverpb.Metrics{CpuBusy: h.S.lastBusy, CpuTotal: h.S.lastAll}
	return nil
}

// Import installs the carried reading (none: the new image's own first
// reading stays).
func (h HandoverPart) Import(rec *handoverpb.Record, _ *handover.Inherited) (handover.Counts, error) {
	if m := rec.GetMetrics(); m != nil && m.GetCpuTotal() > 0 {
		h.S.mu.Lock()
		h.S.lastBusy, h.S.lastAll = m.GetCpuBusy(), m.GetCpuTotal()
		h.S.mu.Unlock()
	}
	return handover.Counts{}, nil
}
