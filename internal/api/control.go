package api

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/hostinfo"
	"github.com/envd/envd/internal/hostinit"
	"github.com/envd/envd/internal/httperror"
	"github.com/envd/envd/internal/lifecycle"
	"github.com/envd/envd/internal/server"
)

// Limits of POST /init bodies (D19; http.md §8.1, §8.6).
const (
	// MaxInitBody is the largest /init body; beyond it 413. The largest
	// real field is a CA bundle (the whole Mozilla bundle is about 220 KiB)
	// and an environment larger than the kernel's ~2 MiB argument space
	// could not be passed to any program anyway; 4 MiB leaves room for both.
	MaxInitBody = 4 << 20
	// InitBodyTimeout bounds the arrival of an /init body from its first
	// read, so that a slow sender cannot hold the init lock for long.
	InitBodyTimeout = 10 * time.Second
	// Bodies that declare at most initEagerBody bytes are read at once,
	// before the init lock, as long as all bodies read that way total at
	// most initEagerBudget; every other body is read only when it is its
	// turn, under the lock, so at most one such body is in memory. Reading
	// at once lets the server notice a client that gives up while it waits
	// (503), which real bodies (a few hundred bytes, retried every 5 ms by
	// the E2B orchestrator) need; the budget bounds what waiting requests
	// hold.
	initEagerBody   = 64 << 10
	initEagerBudget = 1 << 20
)

var (
	errInitTooLarge   = errors.New("request body too large")
	errInitUnreadable = errors.New("unreadable request body")
)

// Control serves /health, /metrics, /envs, /init and /snapshot/prepare.
type Control struct {
	Version  string
	Env      *defaults.Store
	Metrics  *hostinfo.Sampler
	Init     *hostinit.Initializer
	Snapshot *lifecycle.Snapshot
	Log      *slog.Logger

	eager budget // bytes of /init bodies read before the init lock
}

// budget is a count of bytes with a ceiling; the zero value is empty.
type budget struct {
	mu   sync.Mutex
	used int64
}

func (b *budget) acquire(n, max int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > max {
		return false
	}
	b.used += n
	return true
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
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

// init applies POST /init (spec http.md §8). The body is read either at
// once within a small shared budget or under the init lock (initLoader);
// either way it is bounded in size and in time.
func (c *Control) init(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Envd-Version", c.Version)
	noStore(w)
	if r.ContentLength > MaxInitBody {
		initTooLarge(w)
		return
	}
	load, release, err := c.initLoader(w, r)
	defer release()
	if err != nil {
		c.initBodyError(w, err)
		return
	}
	out, err := c.Init.Apply(r.Context(), load)
	if out.Stale {
		w.Header().Set("X-Envd-Init", "stale")
	}
	if out.FreezeAudit != "" {
		w.Header().Set("X-Envd-Freeze-Audit", out.FreezeAudit)
	}
	switch {
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, errInitTooLarge), errors.Is(err, errInitUnreadable), errors.Is(err, hostinit.ErrBadRequest):
		c.initBodyError(w, err)
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

// initLoader returns how Apply gets the request: a small body that fits the
// eager budget is read and parsed now (a failure is returned at once, before
// the lock, as http.md §8.2 orders it); any other is read by the loader,
// under the lock. release gives the budget back.
func (c *Control) initLoader(w http.ResponseWriter, r *http.Request) (load func() (*hostinit.Request, error), release func(), err error) {
	n := r.ContentLength
	if n >= 0 && n <= initEagerBody && c.eager.acquire(n, initEagerBudget) {
		release = func() { c.eager.release(n) }
		req, err := readInitBody(w, r)
		return hostinit.Loaded(req), release, err
	}
	return func() (*hostinit.Request, error) { return readInitBody(w, r) }, func() {}, nil
}

// readInitBody reads and parses an /init body within MaxInitBody and
// InitBodyTimeout.
func readInitBody(w http.ResponseWriter, r *http.Request) (*hostinit.Request, error) {
	body := http.MaxBytesReader(w, server.BoundBodyRead(r.Context(), r.Body, InitBodyTimeout), MaxInitBody)
	b, err := io.ReadAll(body)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, errInitTooLarge
		}
		return nil, fmt.Errorf("%w: %v", errInitUnreadable, err)
	}
	return hostinit.ParseRequest(b)
}

func (c *Control) initBodyError(w http.ResponseWriter, err error) {
	c.Log.Debug("init refused", "error", err.Error())
	if errors.Is(err, errInitTooLarge) {
		initTooLarge(w)
		return
	}
	w.WriteHeader(http.StatusBadRequest)
}

func initTooLarge(w http.ResponseWriter) {
	httperror.Write(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than the /init limit of %d MiB", MaxInitBody>>20))
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
