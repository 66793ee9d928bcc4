package api

import (
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/envd/envd/internal/auth"
	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/files"
	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/httperror"
	"github.com/envd/envd/internal/identity"
)

// DefaultUploadStall is how long an upload may receive nothing before it is
// aborted (spec http.md §12.5 step 7).
const DefaultUploadStall = 300 * time.Second

// Files serves file transfer: GET/HEAD /files (download), POST /files
// (upload) and POST /files/compose (spec http.md §10–§13). The handlers
// follow the spec's step order; the work is done by package files.
type Files struct {
	Token *auth.Token
	Env   *defaults.Store
	Log   *slog.Logger
	// Watchers are told about uploads and compose, which answer only once
	// every matching watcher has their events (spec D17); nil: none.
	Watchers fsops.Observer
	// UploadStall overrides DefaultUploadStall (tests).
	UploadStall time.Duration
	// Now overrides the clock used for signature expiry (tests).
	Now func() time.Time
	// Staging, when set, is told about every staging file (a live upgrade
	// lists them for the next image to remove).
	Staging files.Staging
}

// Register mounts the file routes on mux. "GET /files" also answers HEAD.
func (f *Files) Register(mux Router) {
	mux.HandleFunc("GET /files", f.download)
	mux.HandleFunc("POST /files", f.upload)
	mux.HandleFunc("POST /files/compose", f.compose)
}

func (f *Files) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

func (f *Files) stall() time.Duration {
	if f.UploadStall > 0 {
		return f.UploadStall
	}
	return DefaultUploadStall
}

// userName selects the request's user: the given name, else the default
// user (spec http.md §4.1). The Basic-auth user is deliberately ignored.
func (f *Files) userName(requested string) (string, *httperror.Error) {
	if requested != "" {
		return requested, nil
	}
	if d := f.Env.DefaultUser(); d != "" {
		return d, nil
	}
	return "", httperror.New(http.StatusBadRequest, "username not provided")
}

// lookupUser reads the user database afresh (users can appear at any time).
// An unprivileged envd can act only as itself (spec lifecycle.md §2.4): it
// could neither give files to another user nor read with their rights.
func lookupUser(name string) (*identity.User, *httperror.Error) {
	u, err := identity.LookupUser(name)
	if err != nil {
		return nil, httperror.New(http.StatusUnauthorized, "error looking up user '%s': %v", name, err)
	}
	if euid := os.Geteuid(); euid != 0 && u.UID != uint32(euid) {
		return nil, httperror.New(http.StatusForbidden, "cannot access files as user '%s': envd runs unprivileged (uid %d) and can only act as itself", name, euid)
	}
	return u, nil
}

// owner is who files written for u belong to; unprivileged envd cannot
// chown (spec lifecycle.md §2.4).
func owner(u *identity.User) files.Owner {
	return files.Owner{UID: u.UID, GID: u.GID, Chown: identity.Privileged()}
}

// fileStatus maps a transfer failure kind to its HTTP status, in one place.
func fileStatus(k files.Kind) int {
	switch k {
	case files.KindBadRequest:
		return http.StatusBadRequest
	case files.KindNotFound:
		return http.StatusNotFound
	case files.KindStalled:
		return http.StatusRequestTimeout
	case files.KindNoSpace:
		return http.StatusInsufficientStorage
	case files.KindForbidden:
		return http.StatusForbidden
	}
	return http.StatusInternalServerError
}

// writeFileError answers with err's status and message. A stalled upload
// also closes the connection: its client is not sending.
func writeFileError(w http.ResponseWriter, err error) {
	var fe *files.Error
	if !errors.As(err, &fe) {
		httperror.Write(w, http.StatusInternalServerError, err.Error())
		return
	}
	if fe.Kind == files.KindStalled {
		w.Header().Set("Connection", "close")
	}
	httperror.Write(w, fileStatus(fe.Kind), fe.Msg)
}

// firstValue is a query parameter's first value ("" when absent); an empty
// value is the same as an absent one (spec http.md §4.1).
func firstValue(q url.Values, key string) string {
	if v := q[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}
