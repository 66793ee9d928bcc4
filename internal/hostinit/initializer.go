package hostinit

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envd/envd/internal/auth"
	"github.com/envd/envd/internal/defaults"
)

// ErrBusy is returned when the init lock could not be taken before the
// client went away (503, empty body).
var ErrBusy = errors.New("init in progress")

// Deps are what /init acts on. Optional hooks may be nil.
type Deps struct {
	Token *auth.Token
	Env   *defaults.Store
	Log   *slog.Logger
	// FC is true in Firecracker mode: the clock may be set, MMDS is read.
	FC bool
	// ReadHash reads MMDS's accessTokenHash (FC mode; nil otherwise).
	ReadHash HashReader
	// SetClock sets the system clock (FC mode only).
	SetClock func(time.Time) error
	// Hyperloop, CA and Volumes apply those fields.
	Hyperloop *Hyperloop
	CA        *CAInstaller
	Volumes   *Volumes
	// Repoll restarts the MMDS poll after every /init (FC mode).
	Repoll func()
	// Recover runs post-restore recovery if a snapshot was prepared, then
	// resumes every subsystem idempotently (connection tracker, port
	// forwarding).
	Recover func()
	// Now is the clock used for the clock comparison (tests).
	Now func() time.Time
	// Audit is the freeze audit (control-plane.md §5.2): the
	// X-Envd-Freeze-Audit value, if one applies. Nil: none.
	Audit func() (string, bool)
	// Thaw undoes an envd freeze of cgroups (control-plane.md §4.1); it
	// logs its own failures. Nil: nothing to thaw.
	Thaw func()
}

// Initializer applies /init requests one at a time.
type Initializer struct {
	d    Deps
	lock chan struct{} // the init lock; a channel so waiting can be abandoned

	mu     sync.Mutex
	newest int64 // newest accepted timestamp (ns)

	// initialized is set by the first /init whose apply step completed or
	// was skipped as stale (control-plane.md §5.3).
	initialized atomic.Bool
}

// Initialized reports whether an /init has been applied since envd started.
func (in *Initializer) Initialized() bool { return in.initialized.Load() }

// New returns an Initializer.
func New(d Deps) *Initializer {
	if d.Now == nil {
		d.Now = time.Now
	}
	return &Initializer{d: d, lock: make(chan struct{}, 1)}
}

// Outcome is what Apply reports besides an error.
type Outcome struct {
	// Stale is set when the stale-request guard skipped the request (spec
	// http.md §8.2 step 6): nothing of it was applied, and the caller must
	// not take it for applied (D18: X-Envd-Init: stale).
	Stale bool
	// FreezeAudit is the X-Envd-Freeze-Audit value, when an audit ran
	// (control-plane.md §5.2).
	FreezeAudit string
}

// Loaded is a loader for Apply that returns an already parsed request.
func Loaded(req *Request) func() (*Request, error) {
	return func() (*Request, error) { return req, nil }
}

// Apply runs one /init request (spec http.md §8.2 steps 3–12). load reads
// and parses the request under the init lock, so that a body is read only
// when it is its turn (D19); an error from load is returned as it is and
// nothing else runs. Errors: ErrBusy; ErrResetNotAuthorized /
// ErrTokenValidation (401); a CA or volume error (400 with its text;
// ErrCABusy is 503).
func (in *Initializer) Apply(ctx context.Context, load func() (*Request, error)) (Outcome, error) {
	select {
	case in.lock <- struct{}{}:
	case <-ctx.Done():
		return Outcome{}, ErrBusy
	}
	defer func() { <-in.lock }()

	req, err := load()
	if err != nil {
		return Outcome{}, err
	}
	if err := validateToken(ctx, in.d.Token.IsSet(), in.d.Token.Equal, req.AccessToken, in.d.ReadHash); err != nil {
		in.d.Log.Warn("init refused", "error", err.Error())
		return Outcome{}, err
	}

	var out Outcome
	// The audit looks at the tree as the snapshot left it, before anything
	// is thawed or applied.
	if in.d.Audit != nil {
		if h, ok := in.d.Audit(); ok {
			out.FreezeAudit = h
		}
	}
	var applyErr error
	if newest, ok := in.fresh(req.Timestamp); ok {
		applyErr = in.apply(ctx, req)
	} else {
		out.Stale = true
		// The caller may believe envd is now configured (a token set, say)
		// while nothing was applied: say so loudly.
		in.d.Log.Warn("init not applied: its timestamp is older than one already accepted (reported as X-Envd-Init: stale)",
			"timestamp", req.Timestamp.Format(time.RFC3339Nano),
			"newest_accepted", time.Unix(0, newest).UTC().Format(time.RFC3339Nano))
	}
	if in.d.FC && in.d.Repoll != nil {
		in.d.Repoll()
	}
	if in.d.Recover != nil {
		in.d.Recover()
	}
	// Last, so that a frozen workload does not compete with envd while it
	// faults its own memory back in after a resume (e2b-dev/infra#2688);
	// also for a stale request and after a CA or NFS failure.
	if in.d.Thaw != nil {
		in.d.Thaw()
	}
	if applyErr == nil {
		in.initialized.Store(true)
	}
	return out, applyErr
}

// Hold takes the init lock for a live upgrade, waiting at most until ctx
// ends (control-plane.md §8.6 step 1): no /init runs until the exec or
// the rollback.
func (in *Initializer) Hold(ctx context.Context) (release func(), err error) {
	select {
	case in.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() { once.Do(func() { <-in.lock }) }, nil
}

// fresh applies the stale-request guard: an older timestamp than the
// newest accepted one is a replay; an equal one is accepted. It returns the
// newest accepted timestamp (ns) as it was before.
func (in *Initializer) fresh(ts *time.Time) (newest int64, ok bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	newest = in.newest
	if ts == nil {
		return newest, true
	}
	ns := ts.UnixNano()
	if ns < in.newest {
		return newest, false
	}
	in.newest = ns
	return newest, true
}

func (in *Initializer) apply(ctx context.Context, req *Request) error {
	var applied []string
	if req.Timestamp != nil && in.d.FC && in.d.SetClock != nil {
		if now := in.d.Now(); clockNeedsSet(now, *req.Timestamp) {
			if err := in.d.SetClock(*req.Timestamp); err != nil {
				in.d.Log.Warn("cannot set clock", "error", err.Error())
			} else {
				in.d.Log.Info("clock set", "skew_ms", now.Sub(*req.Timestamp).Milliseconds())
			}
		}
		applied = append(applied, "timestamp")
	}
	if req.HasEnvVars {
		in.d.Env.ReplaceUserVars(req.EnvVars)
		applied = append(applied, "envVars")
	}
	if req.AccessToken != nil {
		in.d.Token.Set([]byte(*req.AccessToken))
		applied = append(applied, "accessToken")
	} else if in.d.Token.IsSet() {
		in.d.Token.Clear()
		applied = append(applied, "accessToken(cleared)")
	}
	if req.HyperloopIP != nil && in.d.Hyperloop != nil {
		in.d.Hyperloop.Set(*req.HyperloopIP)
		applied = append(applied, "hyperloopIP")
	}
	if req.DefaultUser != "" {
		in.d.Env.SetDefaultUser(req.DefaultUser)
		applied = append(applied, "defaultUser")
	}
	if req.DefaultWorkdir != "" {
		in.d.Env.SetDefaultWorkdir(req.DefaultWorkdir)
		applied = append(applied, "defaultWorkdir")
	}
	defer func() {
		names := make([]string, 0, len(req.EnvVars))
		for k := range req.EnvVars {
			names = append(names, k)
		}
		slices.Sort(names)
		in.d.Log.Info("init applied", "fields", applied, "env_var_names", names)
	}()
	if req.CABundle != "" && in.d.CA != nil {
		if err := in.d.CA.Install(ctx, req.CABundle); err != nil {
			return err
		}
		applied = append(applied, "caBundle")
	}
	if req.HasVolumes && in.d.Volumes != nil {
		if err := in.d.Volumes.Setup(req.VolumeMounts, req.LifecycleID); err != nil {
			return err
		}
		applied = append(applied, "volumeMounts")
	}
	return nil
}
