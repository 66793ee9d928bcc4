package api

import (
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/envd/envd/internal/handover"
)

// UpgradeStall is how long the upload of an /upgrade body may send nothing
// before it is abandoned (the upgrade is then not in progress any more).
const UpgradeStall = 30 * time.Second

// Upgrade serves POST /upgrade (spec control-plane.md §8): the domain work
// is handover.Upgrader's; this maps its refusals to the statuses and plain
// text bodies of §8.10. It never answers 200 or 204: on success the exec
// closes the connection without a response.
type Upgrade struct {
	Upgrader *handover.Upgrader
}

// Register mounts the route on mux; other methods get the mux's 405.
func (u *Upgrade) Register(mux Router) {
	mux.HandleFunc("POST /upgrade", u.upgrade)
}

func (u *Upgrade) upgrade(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	body := &stallBody{r: r.Body, rc: rc}
	defer func() { _ = rc.SetReadDeadline(time.Time{}) }()
	err := u.Upgrader.Upgrade(r.Context(), handover.Request{
		Targets:  r.Header.Values("X-Envd-Upgrade-Bin"),
		ReExec:   r.ContentLength == 0,
		Body:     body,
		Declared: r.ContentLength,
	})
	switch {
	case err == nil:
		// Not reached: Upgrade returns only when there was no swap.
		upgradeError(w, http.StatusInternalServerError, "handover aborted: no swap")
	case errors.Is(err, handover.ErrClientGone):
		// The body ended early or its client went away: nobody to answer,
		// and no 200 may be sent for it.
		panic(http.ErrAbortHandler)
	case errors.Is(err, handover.ErrTarget):
		upgradeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, handover.ErrNotInitialized), errors.Is(err, handover.ErrInProgress),
		errors.Is(err, handover.ErrPrepared), errors.Is(err, handover.ErrFSFrozen):
		upgradeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, handover.ErrTooLarge):
		// The rest of the body is not read: the connection ends.
		w.Header().Set("Connection", "close")
		upgradeError(w, http.StatusRequestEntityTooLarge, err.Error())
	default:
		msg := err.Error()
		var f *handover.Failure
		if errors.As(err, &f) {
			msg = f.Message
		}
		upgradeError(w, http.StatusInternalServerError, msg)
	}
}

// upgradeError writes /upgrade's plain-text error (§8.10), the form E2B's
// envd uses: the message and a newline. Cache-Control is set for every
// control-plane response by noStoreControlPlane.
func upgradeError(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
}

// stallBody gives each read of the body UpgradeStall to deliver something,
// so that a client that stops sending cannot keep the upgrade "in
// progress" for ever.
type stallBody struct {
	r  io.Reader
	rc *http.ResponseController
}

func (b *stallBody) Read(p []byte) (int, error) {
	_ = b.rc.SetReadDeadline(time.Now().Add(UpgradeStall))
	return b.r.Read(p)
}
