// Package freezer owns envd's cgroup freezing for the orchestrator's control
// plane (spec control-plane.md §2–§5): POST /freeze (the legacy sweep of the
// user and ptys groups and the hierarchy sweep of everything outside envd's
// chain and the liveness allowlist, waiting for the settled state), the one
// thaw procedure shared by /unfreeze, /init and the thaw watchdog, the
// record of cgroups the guest froze itself (which a thaw leaves frozen), and
// the freeze audit that /init reports. It knows nothing of HTTP.
//
// Its state lives in memory only: envd as PID 1 never restarts without the
// VM ending, so the in-effect flag is authoritative, and a live upgrade
// carries it (Export, RestoreHandover).
package freezer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Bounds and defaults of control-plane.md §3–§4.
const (
	// DefaultMaxCgroups is a hierarchy sweep's bound when maxCgroups is
	// absent or not positive.
	DefaultMaxCgroups = 512
	// Bound caps every walk: the guest scan, the thaw's discovering walk,
	// the audit, and maxCgroups (a sweep must never cover more than a thaw
	// can reach).
	Bound = 8192
	// MaxWait caps maxWaitMs.
	MaxWait = 24 * time.Hour
	// DefaultWatchdog is the thaw watchdog's window of guest monotonic time.
	DefaultWatchdog = 10 * time.Minute
	// pollEvery is how often the wait reads the settled state of every
	// written cgroup, all of them together.
	pollEvery = 2 * time.Millisecond
	// maxThawErrors bounds the failures a thaw reports one by one (the rest
	// are counted).
	maxThawErrors = 16
	// maxAuditPaths is how many violations and escapes the audit logs by
	// name.
	maxAuditPaths = 8
)

// Mode is the kind of sweep.
type Mode string

// The two sweeps.
const (
	Legacy    Mode = "legacy"
	Hierarchy Mode = "hierarchy"
)

// ParseMode maps the mode query parameter: exactly "hierarchy" selects the
// hierarchy sweep, anything else (absent, "legacy", unknown) the legacy one.
func ParseMode(s string) Mode {
	if s == string(Hierarchy) {
		return Hierarchy
	}
	return Legacy
}

// ErrAbandoned is returned when the client went away before the freezer lock
// was obtained (nothing done) or during the wait (the sweep's effects stay).
var ErrAbandoned = errors.New("freeze abandoned: the client went away")

// Request is one /freeze.
type Request struct {
	Mode Mode
	// MaxCgroups bounds a hierarchy sweep; ≤ 0 means DefaultMaxCgroups,
	// more than Bound means Bound.
	MaxCgroups int64
	// MaxWait is how long to wait for the written cgroups to settle; ≤ 0
	// means no wait (a 204 answer). Capped at MaxWait.
	MaxWait time.Duration
}

// Result is the FreezeResult of control-plane.md §3.4; its JSON form has
// all twelve members, in this order.
type Result struct {
	Allowlisted  int   `json:"allowlisted"`
	Failed       int   `json:"failed"`
	Frozen       int   `json:"frozen"`
	Mode         Mode  `json:"mode"`
	NotFrozen    int   `json:"notFrozen"`
	PreFrozen    int   `json:"preFrozen"`
	Requested    int   `json:"requested"`
	SweepMs      int64 `json:"sweepMs"`
	Truncated    bool  `json:"truncated"`
	Unobservable int   `json:"unobservable"`
	Visited      int   `json:"visited"`
	WaitMs       int64 `json:"waitMs"`
}

// ThawResult is what one thaw did (control-plane.md §4.1).
type ThawResult struct {
	// InEffect: an envd freeze was in effect, so the thaw did something.
	InEffect  bool
	Visited   int
	Thawed    int
	Preserved int
	Failed    int
	Truncated bool
	// Walked: the discovering walk ran (cgroup2 manager, not --isnotfc).
	Walked bool
	// Errors are the first failures, one message each
	// ("thaw <path>: <errno text>", or the truncation).
	Errors []string
}

// Clean reports whether nothing failed and the walk was complete.
func (r ThawResult) Clean() bool { return r.Failed == 0 && !r.Truncated }

// Audit is the X-Envd-Freeze-Audit value (control-plane.md §5.2); its JSON
// form has these members in this order.
type Audit struct {
	Visited    int  `json:"visited"`
	Frozen     int  `json:"frozen"`
	Escaped    int  `json:"escaped"`
	Violations int  `json:"violations"`
	Truncated  bool `json:"truncated"`
}

// State is what a live upgrade carries of the freezer (control-plane.md
// §8.7): the guest record; the in-effect flag is implied by the upgrade's
// own freeze but kept explicit.
type State struct {
	GuestRecord []string
	InEffect    bool
}

// Options configure a Freezer.
type Options struct {
	// Root is the cgroup root (--cgroup-root).
	Root string
	// Cgroup2 is true when the cgroup2 manager is in use; false selects the
	// no-op behaviour of control-plane.md §2.4 (writes "succeed" without
	// effect, settled states are unobservable, nothing is ever in effect).
	Cgroup2 bool
	// NotFC (--isnotfc) downgrades hierarchy sweeps to legacy and keeps the
	// thaw from walking the hierarchy: outside a VM everything else is the
	// host's own workload.
	NotFC bool
	// SpawnLock runs fn holding the spawn lock; /freeze writes the static
	// groups only inside it (control-plane.md §2.5). Nil runs fn directly.
	SpawnLock func(fn func())
	// Woken is called by every thaw that changed something, to wake Start
	// requests waiting for a static group (§4.1 step 5). May be nil.
	Woken func()
	// Watchdog is the thaw watchdog's window (DefaultWatchdog if zero).
	Watchdog time.Duration
	Log      *slog.Logger

	// tree and chain replace the kernel in unit tests.
	tree  tree
	chain func() ([]string, error)
}

// Freezer is envd's cgroup freezer. Create it with New, call Start once,
// Stop at shutdown.
type Freezer struct {
	o     Options
	t     tree
	chain func() ([]string, error)
	log   *slog.Logger

	// lock is the freezer lock (control-plane.md §1.3, #6): held by every
	// freeze and every thaw. A channel, so that /freeze can give up waiting
	// when its client goes away.
	lock chan struct{}

	// mu guards the state below; it is held only for short reads and
	// updates, so the audit and Export can read without the freezer lock.
	mu       sync.Mutex
	inEffect bool
	guest    map[string]bool
	mode     Mode   // unthawed sweep mode; "" when a thaw has begun since
	gen      uint64 // sweep generation
	wd       *time.Timer
	wdGen    uint64
	stopped  bool
	// restored: a live upgrade's state was installed (RestoreHandover), so
	// Start's rule for a normal start does not apply.
	restored bool
}

// New returns a freezer; it touches nothing until it is used.
func New(o Options) *Freezer {
	if o.Watchdog <= 0 {
		o.Watchdog = DefaultWatchdog
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	f := &Freezer{o: o, t: o.tree, chain: o.chain, log: o.Log, lock: make(chan struct{}, 1), guest: map[string]bool{}}
	if f.t == nil {
		f.t = kernelTree{root: o.Root}
	}
	if f.chain == nil {
		f.chain = func() ([]string, error) { return selfChain(o.Root) }
	}
	return f
}

// Start applies the rule of a normal (non-handover) start (§2.1): when a
// static group already reads frozen — possible only when envd is not PID 1
// and an earlier envd process froze it — an envd freeze counts as in
// effect, so that the next thaw undoes it.
func (f *Freezer) Start() {
	f.mu.Lock()
	restored := f.restored
	f.mu.Unlock()
	if !f.o.Cgroup2 || restored {
		return
	}
	for _, g := range staticGroups() {
		own, err1 := f.t.ownRequest(g)
		settled, err2 := f.t.settled(g)
		if (err1 == nil && own) || (err2 == nil && settled) {
			f.mu.Lock()
			f.inEffect = true
			f.mu.Unlock()
			f.log.Info("a static group is frozen at startup; the next thaw undoes it", "group", g)
			return
		}
	}
}

// Stop disarms the watchdog; no timer fires afterwards.
func (f *Freezer) Stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	f.disarmLocked()
}

// InEffect reports whether an envd freeze is in effect.
func (f *Freezer) InEffect() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inEffect
}

func (f *Freezer) acquire(ctx context.Context) bool {
	select {
	case f.lock <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (f *Freezer) release() { <-f.lock }

// sweep is the count-keeping of one freeze.
type sweep struct {
	res        Result
	waitSet    []string
	realWrites int
}

// Freeze runs POST /freeze (control-plane.md §3.2). It returns ErrAbandoned
// when ctx ended before the freezer lock was obtained (nothing done) or
// during the wait (the sweep stays in effect); the result then is what was
// observed so far.
func (f *Freezer) Freeze(ctx context.Context, req Request) (Result, error) {
	if !f.acquire(ctx) {
		return Result{}, ErrAbandoned
	}
	defer f.release()
	return f.freezeLocked(ctx, req, false)
}

// freezeLocked is Freeze with the freezer lock held. spawnHeld: the caller
// (a live upgrade) holds the spawn lock already, so the static writes are
// made without taking it.
func (f *Freezer) freezeLocked(ctx context.Context, req Request, spawnHeld bool) (Result, error) {
	mode := req.Mode
	if mode != Hierarchy || !f.o.Cgroup2 || f.o.NotFC {
		mode = Legacy
	}
	bound := req.MaxCgroups
	if bound <= 0 {
		bound = DefaultMaxCgroups
	}
	bound = min(bound, Bound)

	start := time.Now()
	s := &sweep{res: Result{Mode: Legacy}}
	f.mu.Lock()
	inEffect := f.inEffect
	f.mu.Unlock()

	var chain []string
	var chainErr error
	if f.o.Cgroup2 {
		chain, chainErr = f.chain()
	}
	scanned := false
	if f.o.Cgroup2 && !inEffect {
		// Our own frozen cgroups would otherwise be recorded as the
		// guest's and stay frozen for ever: no rescan while in effect.
		scanChain := chain
		if chainErr != nil {
			scanChain = []string{""}
		}
		record, truncated, failures := f.scan(scanChain)
		f.mu.Lock()
		f.guest = record
		f.mu.Unlock()
		s.res.Truncated = truncated
		scanned = true
		if failures > 0 {
			level := slog.LevelDebug
			if req.MaxWait > 0 {
				level = slog.LevelWarn
			}
			f.log.Log(ctx, level, "freeze: guest scan could not read some cgroups (they will be thawed)", "failures", failures)
		}
	}
	f.mu.Lock()
	s.res.PreFrozen = len(f.guest)
	f.mu.Unlock()

	switch {
	case mode == Hierarchy && chainErr != nil:
		f.log.Warn("freeze: cannot determine envd's own cgroup; running the legacy sweep", "error", chainErr.Error())
		f.legacySweep(s, spawnHeld)
	case mode == Hierarchy:
		s.res.Mode = Hierarchy
		f.legacySweep(s, spawnHeld) // the static groups are always covered
		f.hierarchySweep(s, chain, int(bound), scanned)
	default:
		f.legacySweep(s, spawnHeld)
	}
	s.res.SweepMs = time.Since(start).Milliseconds()

	abandoned := false
	readErrs := 0
	if req.MaxWait > 0 {
		abandoned, readErrs = f.wait(ctx, s, min(req.MaxWait, MaxWait))
	}
	s.res.NotFrozen = s.res.Requested - s.res.Frozen - readErrs - s.res.Unobservable

	f.mu.Lock()
	f.mode = s.res.Mode
	f.gen++
	if s.realWrites > 0 {
		f.inEffect = true
		f.armLocked()
	}
	f.mu.Unlock()

	f.logFreeze(s.res, req.MaxWait > 0)
	if abandoned {
		return s.res, ErrAbandoned
	}
	return s.res, nil
}

// scan is the guest scan (§3.2 step 2): every cgroup outside the descend
// set, the static groups and the allowlist whose own request is 1.
func (f *Freezer) scan(chain []string) (record map[string]bool, truncated bool, failures int) {
	record = map[string]bool{}
	skip := setOf(descendSet(chain))
	_, truncated = walk(f.t, Bound, func(rel string) bool {
		if skip[rel] || isStatic(rel) || allowlisted(rel) {
			return true
		}
		frozen, err := f.t.ownRequest(rel)
		switch {
		case err != nil:
			failures++
			f.log.Debug("freeze: guest scan cannot read a cgroup", "cgroup", rel, "error", err.Error())
		case frozen:
			record[rel] = true
		}
		return true
	}, func(rel string, err error) {
		failures++
		f.log.Debug("freeze: guest scan cannot list a cgroup", "cgroup", rel, "error", err.Error())
	})
	return record, truncated, failures
}

// legacySweep writes 1 to the static groups, under the spawn lock so that
// no spawn is in the middle of a fork into them (held by the caller when
// spawnHeld).
func (f *Freezer) legacySweep(s *sweep, spawnHeld bool) {
	write := func() {
		for _, g := range staticGroups() {
			if !f.o.Cgroup2 {
				// No-op manager: "succeeds" without effect.
				s.res.Requested++
				s.waitSet = append(s.waitSet, g)
				continue
			}
			f.write(s, g)
		}
	}
	if f.o.SpawnLock != nil && !spawnHeld {
		f.o.SpawnLock(write)
	} else {
		write()
	}
}

func (f *Freezer) write(s *sweep, rel string) {
	if err := f.t.request(rel, true); err != nil {
		s.res.Failed++
		f.log.Debug("freeze: write failed", "cgroup", rel, "error", err.Error())
		return
	}
	s.res.Requested++
	s.realWrites++
	s.waitSet = append(s.waitSet, rel)
}

// hierarchySweep freezes the children of the descend set (§3.2 step 4.3).
// Their own children are never visited: one write stops a whole branch.
func (f *Freezer) hierarchySweep(s *sweep, chain []string, bound int, scanned bool) {
	descend := descendSet(chain)
	inDescend := setOf(descend)
	for _, d := range descend {
		names, _, err := f.t.children(d, bound-s.res.Visited+1)
		if err != nil {
			if !isNotExist(err) {
				s.res.Failed++
				f.log.Debug("freeze: cannot list a cgroup", "cgroup", d, "error", err.Error())
			}
			continue
		}
		for _, n := range names {
			if s.res.Visited >= bound {
				s.res.Truncated = true
				return
			}
			s.res.Visited++
			rel := join(d, n)
			if inDescend[rel] || isStatic(rel) {
				continue
			}
			if allowlisted(rel) {
				s.res.Allowlisted++
				continue
			}
			f.mu.Lock()
			known := f.guest[rel]
			f.mu.Unlock()
			if known {
				continue
			}
			if scanned {
				// Frozen by the guest after the scan: adopt it late.
				if own, err := f.t.ownRequest(rel); err == nil && own {
					f.mu.Lock()
					f.guest[rel] = true
					f.mu.Unlock()
					s.res.PreFrozen++
					continue
				}
			}
			f.write(s, rel)
		}
	}
}

// wait polls the settled state of every written cgroup together, every
// pollEvery, until all resolved, limit elapsed or ctx ended.
func (f *Freezer) wait(ctx context.Context, s *sweep, limit time.Duration) (abandoned bool, readErrs int) {
	start := time.Now()
	defer func() { s.res.WaitMs = time.Since(start).Milliseconds() }()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	pending := slices.Clone(s.waitSet)
	for {
		keep := pending[:0]
		for _, rel := range pending {
			if !f.o.Cgroup2 {
				s.res.Unobservable++
				continue
			}
			frozen, err := f.t.settled(rel)
			switch {
			case err != nil:
				s.res.Failed++
				readErrs++
				f.log.Debug("freeze: cannot read the settled state", "cgroup", rel, "error", err.Error())
			case frozen:
				s.res.Frozen++
			default:
				keep = append(keep, rel)
			}
		}
		pending = keep
		if len(pending) == 0 {
			return false, readErrs
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			return false, readErrs
		case <-ctx.Done():
			return true, readErrs
		}
	}
}

func (f *Freezer) logFreeze(r Result, waited bool) {
	attrs := []any{"mode", string(r.Mode), "requested", r.Requested, "frozen", r.Frozen, "not_frozen", r.NotFrozen,
		"failed", r.Failed, "unobservable", r.Unobservable, "pre_frozen", r.PreFrozen, "allowlisted", r.Allowlisted,
		"visited", r.Visited, "truncated", r.Truncated, "sweep_ms", r.SweepMs, "wait_ms", r.WaitMs}
	f.log.Info("freeze", attrs...)
	if !waited {
		return
	}
	if r.NotFrozen > 0 || r.Failed > 0 {
		f.log.Warn("freeze: not everything settled; some of the workload may still be running", attrs...)
	}
	if r.Truncated {
		f.log.Warn("freeze: coverage incomplete (a walk hit its bound)", attrs...)
	}
	if r.Unobservable > 0 {
		f.log.Warn("freeze: the settled state cannot be observed (no cgroup2 manager)", attrs...)
	}
}

// Thaw runs the thaw of control-plane.md §4.1 under the freezer lock,
// acquired unconditionally: a thaw is never abandoned. why names the caller
// for the log.
func (f *Freezer) Thaw(why string) ThawResult {
	f.lock <- struct{}{}
	defer f.release()
	return f.thawLocked(why)
}

func (f *Freezer) thawLocked(why string) ThawResult {
	f.mu.Lock()
	f.mode = ""
	f.gen++
	inEffect := f.inEffect
	guest := make(map[string]bool, len(f.guest))
	for k := range f.guest {
		guest[k] = true
	}
	f.mu.Unlock()
	res := ThawResult{InEffect: inEffect}
	if !inEffect {
		// envd's flag is authoritative: writing 0 here would undo a freeze
		// the guest made of envd's own groups at every /init.
		return res
	}
	fail := func(msg string) {
		res.Failed++
		if len(res.Errors) < maxThawErrors {
			res.Errors = append(res.Errors, msg)
		}
	}
	if f.o.Cgroup2 {
		for _, g := range staticGroups() {
			if err := f.t.request(g, false); err != nil && !isNotExist(err) {
				fail(fmt.Sprintf("thaw %s: %s", g, errText(err)))
			}
		}
	}
	if f.o.Cgroup2 && !f.o.NotFC {
		chain, err := f.chain()
		if err != nil {
			// Writing 0 to envd's own chain is harmless; only reading it is
			// pointless.
			chain = []string{""}
		}
		onChain := setOf(chain)
		res.Walked = true
		res.Visited, res.Truncated = walk(f.t, Bound, func(rel string) bool {
			if onChain[rel] {
				return true
			}
			if guest[rel] {
				res.Preserved++
				return true
			}
			own, err := f.t.ownRequest(rel)
			switch {
			case err != nil:
				if !isNotExist(err) {
					fail(fmt.Sprintf("thaw %s: %s", rel, errText(err)))
				}
			case own:
				if err := f.t.request(rel, false); err != nil {
					if !isNotExist(err) {
						fail(fmt.Sprintf("thaw %s: %s", rel, errText(err)))
					}
				} else {
					res.Thawed++
				}
			}
			return true
		}, func(rel string, err error) {
			fail(fmt.Sprintf("thaw %s: list: %s", rel, errText(err)))
		})
		if res.Truncated && len(res.Errors) < maxThawErrors {
			res.Errors = append(res.Errors, fmt.Sprintf("thaw walk truncated at %d cgroups: some may still be frozen", Bound))
		}
	}
	if f.o.Woken != nil {
		f.o.Woken()
	}
	if res.Clean() {
		f.mu.Lock()
		f.inEffect = false
		f.disarmLocked()
		f.mu.Unlock()
	}
	attrs := []any{"by", why, "visited", res.Visited, "thawed", res.Thawed, "preserved", res.Preserved,
		"failed", res.Failed, "truncated", res.Truncated, "walked", res.Walked}
	if res.Clean() {
		f.log.Info("thaw", attrs...)
	} else {
		f.log.Warn("thaw incomplete; the freeze stays in effect", append(attrs, "errors", res.Errors)...)
	}
	return res
}

// ThawIfInEffect thaws when an envd freeze is in effect (shutdown,
// lifecycle.md §3.5: a frozen process cannot act on SIGTERM).
func (f *Freezer) ThawIfInEffect(why string) {
	if f.InEffect() {
		f.Thaw(why)
	}
}

// armLocked (re)arms the thaw watchdog for a full window; f.mu is held.
// Each arming has its own generation: a timer that fires after it was
// superseded finds another generation and does nothing (stopping a Go timer
// cannot recall a callback that is already running).
func (f *Freezer) armLocked() {
	if f.stopped {
		return
	}
	if f.wd != nil {
		f.wd.Stop()
	}
	f.wdGen++
	gen := f.wdGen
	f.wd = time.AfterFunc(f.o.Watchdog, func() { f.fire(gen) })
}

func (f *Freezer) disarmLocked() {
	if f.wd != nil {
		f.wd.Stop()
		f.wd = nil
	}
	f.wdGen++
}

// fire is the thaw watchdog (§4.3): a freeze outlived its window of guest
// monotonic time (Go's timers run on CLOCK_MONOTONIC, which stands still
// while the VM is paused).
func (f *Freezer) fire(gen uint64) {
	defer func() {
		if p := recover(); p != nil {
			f.log.Error("panic in the thaw watchdog", "panic", fmt.Sprint(p))
		}
	}()
	f.lock <- struct{}{}
	defer f.release()
	f.mu.Lock()
	current := gen == f.wdGen && f.wd != nil && !f.stopped
	f.mu.Unlock()
	if !current {
		return
	}
	res := f.thawLocked("watchdog")
	attrs := []any{"thawed", res.Thawed, "visited", res.Visited, "failed", res.Failed, "truncated", res.Truncated}
	if len(res.Errors) > 0 {
		attrs = append(attrs, "error", res.Errors[0])
	}
	f.log.Warn("freeze outlived the thaw watchdog window; thawing", attrs...)
	if !res.Clean() {
		f.mu.Lock()
		f.armLocked()
		f.mu.Unlock()
	}
}

// watchdogGeneration is the current watchdog generation (unit tests).
func (f *Freezer) watchdogGeneration() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.wdGen
}

// Audit classifies the cgroup tree against the last hierarchy sweep (§5.2).
// It does not take the freezer lock — an observer must never delay a thaw
// — and discards its result when a freeze or thaw ran meanwhile. ok is false
// when no audit applies or it failed.
func (f *Freezer) Audit() (a Audit, ok bool) {
	if !f.o.Cgroup2 {
		return Audit{}, false
	}
	f.mu.Lock()
	mode, gen := f.mode, f.gen
	f.mu.Unlock()
	if mode != Hierarchy {
		return Audit{}, false
	}
	chain, err := f.chain()
	if err != nil {
		return Audit{}, false
	}
	protected := setOf(descendSet(chain))
	var violations, escapes []string
	a.Visited, a.Truncated = walk(f.t, Bound, func(rel string) bool {
		if rel == "" {
			return true
		}
		frozen, err := f.t.settled(rel)
		if err != nil {
			return true
		}
		prot := protected[rel] || allowlisted(rel)
		switch {
		case frozen && prot:
			a.Violations++
			if len(violations) < maxAuditPaths {
				violations = append(violations, rel)
			}
		case frozen:
			a.Frozen++
		case !prot:
			a.Escaped++
			if len(escapes) < maxAuditPaths {
				escapes = append(escapes, rel)
			}
		}
		return true
	}, nil)
	f.mu.Lock()
	same := f.gen == gen
	f.mu.Unlock()
	if !same {
		return Audit{}, false
	}
	if len(violations) > 0 {
		f.log.Error("freeze audit: protected cgroups are frozen", "violations", a.Violations, "first", violations)
	}
	if len(escapes) > 0 {
		f.log.Warn("freeze audit: cgroups ran through the snapshot unfrozen", "escaped", a.Escaped, "first", escapes)
	}
	return a, true
}

// AuditHeader is the X-Envd-Freeze-Audit value, if an audit applies.
func (f *Freezer) AuditHeader() (string, bool) {
	a, ok := f.Audit()
	if !ok {
		return "", false
	}
	b, err := json.Marshal(a)
	if err != nil {
		return "", false
	}
	return string(b), true
}

// Export returns the state a live upgrade carries.
func (f *Freezer) Export() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	rec := make([]string, 0, len(f.guest))
	for k := range f.guest {
		rec = append(rec, k)
	}
	slices.Sort(rec)
	return State{GuestRecord: rec, InEffect: f.inEffect}
}

// RestoreHandover installs the state carried by a live upgrade (§8.11 step
// 11): the upgrade froze, so a freeze is in effect whatever the record says,
// and the watchdog is armed for a full window.
func (f *Freezer) RestoreHandover(s State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restored = true
	f.guest = setOf(s.GuestRecord)
	if !f.o.Cgroup2 {
		return
	}
	f.inEffect = true
	f.armLocked()
}

func setOf(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

// errText is the error's text without the operation and path the caller
// already names (the errno text where there is one).
func errText(err error) string {
	var pe interface{ Unwrap() error }
	if errors.As(err, &pe) {
		if inner := pe.Unwrap(); inner != nil {
			return inner.Error()
		}
	}
	return err.Error()
}
