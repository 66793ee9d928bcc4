package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/envd/envd/internal/freezer"
	"github.com/envd/envd/internal/fsfreeze"
	"github.com/envd/envd/internal/httperror"
	"github.com/envd/envd/internal/hugepage"
)

// ControlPlanePaths are the orchestrator's control-plane routes (spec
// control-plane.md §1.1): POST only, token required, Cache-Control:
// no-store on every response, refused from inside the guest in FC mode.
// /upgrade belongs to the list but is served by the live-upgrade work.
func ControlPlanePaths() []string {
	return []string{"/freeze", "/unfreeze", "/collapse", "/fsfreeze", "/fsthaw", "/upgrade"}
}

// ControlPlane serves /freeze, /unfreeze, /collapse, /fsfreeze and
// /fsthaw. Each handler calls one domain package and maps its outcome.
type ControlPlane struct {
	Freezer *freezer.Freezer
	FS      *fsfreeze.FS
	// Barrier is the snapshot lock's barrier (lifecycle.Snapshot.Barrier).
	Barrier func(context.Context) error
	Log     *slog.Logger
}

// Register mounts the routes on mux. Other methods get the mux's 405 with
// Allow: POST.
func (c *ControlPlane) Register(mux Router) {
	mux.HandleFunc("POST /freeze", c.freeze)
	mux.HandleFunc("POST /unfreeze", c.unfreeze)
	mux.HandleFunc("POST /collapse", c.collapse)
	mux.HandleFunc("POST /fsfreeze", c.fsfreeze)
	mux.HandleFunc("POST /fsthaw", c.fsthaw)
}

// noStoreControlPlane sets Cache-Control: no-store on every response of the
// control-plane paths, whatever answers them (the token middleware's 401,
// the mux's 405, the handlers).
func noStoreControlPlane(next http.Handler) http.Handler {
	paths := map[string]bool{}
	for _, p := range ControlPlanePaths() {
		paths[p] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if paths[r.URL.Path] {
			noStore(w)
		}
		next.ServeHTTP(w, r)
	})
}

// freezeParams parses /freeze's query (control-plane.md §3.1).
func freezeParams(r *http.Request) (freezer.Request, error) {
	q := r.URL.Query()
	var req freezer.Request
	single := func(name string) (string, error) {
		vs := q[name]
		if len(vs) > 1 {
			return "", httperror.New(http.StatusBadRequest, "Invalid format for parameter %s: given more than once", name)
		}
		if len(vs) == 0 {
			return "", nil
		}
		return vs[0], nil
	}
	integer := func(name string) (int64, error) {
		v, err := single(name)
		if err != nil || v == "" {
			return 0, err
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, httperror.New(http.StatusBadRequest, "Invalid format for parameter %s: %s", name, err.Error())
		}
		return n, nil
	}
	mode, err := single("mode")
	if err != nil {
		return req, err
	}
	req.Mode = freezer.ParseMode(mode)
	if req.MaxCgroups, err = integer("maxCgroups"); err != nil {
		return req, err
	}
	ms, err := integer("maxWaitMs")
	if err != nil {
		return req, err
	}
	if ms > 0 {
		req.MaxWait = time.Duration(min(ms, int64(freezer.MaxWait/time.Millisecond))) * time.Millisecond
	}
	return req, nil
}

func (c *ControlPlane) freeze(w http.ResponseWriter, r *http.Request) {
	req, err := freezeParams(r)
	if err != nil {
		var he *httperror.Error
		if errors.As(err, &he) {
			httperror.WriteError(w, he)
			return
		}
		httperror.Write(w, http.StatusBadRequest, err.Error())
		return
	}
	res, err := c.Freezer.Freeze(r.Context(), req)
	switch {
	case errors.Is(err, freezer.ErrAbandoned):
		// The caller gave up; the status is for the log (no body).
		w.WriteHeader(http.StatusServiceUnavailable)
	case req.MaxWait <= 0:
		w.WriteHeader(http.StatusNoContent)
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

func (c *ControlPlane) unfreeze(w http.ResponseWriter, r *http.Request) {
	res := c.Freezer.Thaw("unfreeze")
	if !res.Clean() {
		msg := strings.Join(res.Errors, "; ")
		if more := res.Failed - len(res.Errors); more > 0 {
			msg += "; and " + strconv.Itoa(more) + " more"
		}
		httperror.Write(w, http.StatusInternalServerError, "thaw incomplete: "+msg)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (c *ControlPlane) collapse(w http.ResponseWriter, r *http.Request) {
	res, err := hugepage.Collapse(r.Context(), c.Barrier, hugepage.Files{})
	if err != nil {
		c.Log.Warn("collapse failed", "error", err.Error())
		httperror.Write(w, http.StatusInternalServerError, err.Error())
		return
	}
	c.Log.Info("collapse", "regions", res.Regions, "chunks", res.Chunks, "collapsed", res.Collapsed,
		"already_huge", res.AlreadyHuge, "skipped", res.Skipped, "elapsed_ms", res.ElapsedMs)
	writeJSON(w, http.StatusOK, res)
}

func (c *ControlPlane) fsfreeze(w http.ResponseWriter, r *http.Request) {
	err := c.FS.Freeze(r.Context())
	switch {
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, fsfreeze.ErrAbandoned):
		w.WriteHeader(http.StatusServiceUnavailable)
	default:
		httperror.Write(w, http.StatusInternalServerError, err.Error())
	}
}

func (c *ControlPlane) fsthaw(w http.ResponseWriter, r *http.Request) {
	if err := c.FS.Thaw(); err != nil {
		httperror.Write(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
