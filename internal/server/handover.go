package server

import (
	"context"

	"github.com/envd/envd/internal/handover"
	"github.com/envd/envd/internal/handover/handoverpb"
)

// HandoverPart carries envd's own listening socket across a live upgrade
// (control-plane.md §8.13), so that no connection to envd's port is
// refused during the swap: Quiesce stops acceptance without closing it
// (§8.6 step 4), and the incoming image adopts it (§8.11 step 15) — or,
// when it is not a listening TCP socket on the configured port, closes it
// and binds anew. It is a handover.Part and a handover.Importer.
type HandoverPart struct {
	S *Server
}

var (
	_ handover.Part     = HandoverPart{}
	_ handover.Importer = HandoverPart{}
)

// Name implements handover.Part.
func (h HandoverPart) Name() string { return "api listener" }

// Quiesce stops acceptance; connections wait in the listen backlog.
func (h HandoverPart) Quiesce(ctx context.Context) error { return h.S.PauseAccept(ctx) }

// Resume accepts again after a rollback.
func (h HandoverPart) Resume() { h.S.ResumeAccept() }

// Export carries the listening socket.
func (h HandoverPart) Export(rec *handoverpb.Record, fds *handover.Carried) error {
	fd, err := h.S.ListenerFD()
	if err != nil {
		return err
	}
	if err := fds.Add(fd, handoverpb.DescriptorKind_DESCRIPTOR_KIND_TCP_LISTENER); err != nil {
		return err
	}
	rec.ApiServer = &handoverpb.ApiServer{ListenerFd: int32(fd)}
	return nil
}

// Import adopts the carried listener; on failure the server binds anew
// when it starts listening (connections that arrived during the swap are
// then lost, and the orchestrator's retries cover the gap).
func (h HandoverPart) Import(rec *handoverpb.Record, in *handover.Inherited) (handover.Counts, error) {
	fd := int(rec.GetApiServer().GetListenerFd())
	if fd == 0 {
		return handover.Counts{}, nil
	}
	f, err := in.Take(fd, handoverpb.DescriptorKind_DESCRIPTOR_KIND_TCP_LISTENER)
	if err != nil {
		return handover.Counts{}, err
	}
	return handover.Counts{}, h.S.AdoptListener(f)
}
