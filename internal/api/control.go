package api

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/hostinfo"
	"github.com/envd/envd/internal/hostinit"
	"github.com/envd/envd/internal/httperror"
	"github.com/envd/envd/internal/lifecycle"
)

// maxInitBody bounds the /init body.
const maxInitBody = 16 << 20

// Control serves /health, /metrics, /envs, /init and /snapshot/prepare.
type Control struct {
	Version  string
	Env      *defaults.Store
	Metrics  *hostinfo.Sampler
	Init     *hostinit.Initializer
	Snapshot *lifecycle.Snapshot
	Log      *slog.Logger
}

// Register mounts the control routes on mux.
func (c *Control) Register(mux Router) {
	mux.HandleFunc("GET /health", c.health)
	mux.HandleFunc("GET /metrics", c.metrics)
	mux.HandleFunc("GET /envs", c.envs)
	mux.HandleFunc("POST /init", c.init)
	mux.HandleFunc("POST /snapshot/prepare", c.prepare)
}

type healthBody struct {
	Version string `json:"version"`
}

// health answers readiness; the first call after a snapshot runs recovery.
func (c *Control) health(w http.ResponseWriter, r *http.Request) {
	c.Snapshot.RecoverIfNeeded()
	noStore(w)
	writeJSON(w, http.StatusOK, healthBody{Version: c.Version})
}

func (c *Control) metrics(w http.ResponseWriter, r *http.Request) {
	noStore(w)
	m, err := c.Metrics.Sample(time.Now())
	if err != nil {
		c.Log.Error("metrics failed", "error", err.Error())
		httperror.Write(w, http.StatusInternalServerError, "error collecting metrics: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, m)
}

func (c *Control) envs(w http.ResponseWriter, r *http.Request) {
	noStore(w)
	writeJSON(w, http.StatusOK, c.Env.Vars())
}

func (c *Control) init(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Envd-Version", c.Version)
	noStore(w)
	body, err := io.ReadAll(io.LimitReader(r.Body, maxInitBody+1))
	if err != nil || len(body) > maxInitBody {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	req, err := hostinit.ParseRequest(body)
	if err != nil {
		c.Log.Debug("init refused", "error", err.Error())
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	out, err := c.Init.Apply(r.Context(), req)
	if out.FreezeAudit != "" {
		w.Header().Set("X-Envd-Freeze-Audit", out.FreezeAudit)
	}
	switch {
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, hostinit.ErrBusy):
		w.WriteHeader(http.StatusServiceUnavailable)
	case errors.Is(err, hostinit.ErrResetNotAuthorized), errors.Is(err, hostinit.ErrTokenValidation):
		plain(w, http.StatusUnauthorized, err.Error())
	case errors.Is(err, hostinit.ErrCABusy):
		plain(w, http.StatusServiceUnavailable, err.Error())
	default:
		plain(w, http.StatusBadRequest, err.Error())
	}
}

func plain(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg)
}

// prepare quiesces envd for a snapshot; the 204 is flushed before the heavy
// work (spec http.md §9).
func (c *Control) prepare(w http.ResponseWriter, r *http.Request) {
	c.Snapshot.Prepare(func() {
		noStore(w)
		w.WriteHeader(http.StatusNoContent)
		_ = http.NewResponseController(w).Flush()
	})
}
