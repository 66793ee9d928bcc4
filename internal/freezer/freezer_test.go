package freezer

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envd/envd/internal/handover/handoverpb"
)

// fakeTree is a cgroup hierarchy in memory: a cgroup's settled state is
// frozen when its own request or an ancestor's is 1 (tasks stop at once).
type fakeTree struct {
	mu       sync.Mutex
	own      map[string]bool // every cgroup except the root
	failW    map[string]bool // writes fail
	failList map[string]bool
	// stuck cgroups never settle (a task in an uninterruptible sleep).
	stuck  map[string]bool
	writes []string
}

func newFake(paths ...string) *fakeTree {
	t := &fakeTree{own: map[string]bool{}, failW: map[string]bool{}, failList: map[string]bool{}}
	for _, p := range paths {
		t.own[p] = false
	}
	return t
}

func (t *fakeTree) children(rel string, limit int) ([]string, bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if rel != "" {
		if _, ok := t.own[rel]; !ok {
			return nil, false, fs.ErrNotExist
		}
	}
	if t.failList[rel] {
		return nil, false, errors.New("EIO")
	}
	var names []string
	for p := range t.own {
		if parentOf(p) == rel {
			names = append(names, p[strings.LastIndexByte(p, '/')+1:])
		}
	}
	sort.Strings(names)
	more := len(names) > limit
	if more {
		names = names[:limit]
	}
	return names, more, nil
}

func (t *fakeTree) ownRequest(rel string) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := t.own[rel]
	if !ok {
		return false, fs.ErrNotExist
	}
	return v, nil
}

func (t *fakeTree) request(rel string, freeze bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.own[rel]; !ok {
		return fs.ErrNotExist
	}
	if t.failW[rel] {
		return errors.New("operation not supported")
	}
	t.own[rel] = freeze
	if freeze {
		t.writes = append(t.writes, rel)
	}
	return nil
}

func (t *fakeTree) settled(rel string) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.own[rel]; !ok {
		return false, fs.ErrNotExist
	}
	if t.stuck[rel] {
		return false, nil
	}
	for _, c := range chainOf(rel)[1:] {
		if t.own[c] {
			return true, nil
		}
	}
	return false, nil
}

func (t *fakeTree) isOwn(rel string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.own[rel]
}

func newTest(t *testing.T, tr *fakeTree, o Options) *Freezer {
	o.tree = tr
	if o.chain == nil {
		o.chain = func() ([]string, error) { return []string{""}, nil }
	}
	if o.Watchdog == 0 {
		o.Watchdog = time.Hour
	}
	f := New(o)
	t.Cleanup(f.Stop)
	return f
}

func wantJSON(t *testing.T, r Result, want string) {
	t.Helper()
	r.SweepMs, r.WaitMs = 0, 0
	b, _ := json.Marshal(r)
	if string(b) != want {
		t.Fatalf("result\n got %s\nwant %s", b, want)
	}
}

func TestLegacyFreezeAndThaw(t *testing.T) {
	tr := newFake("user", "ptys", "app")
	f := newTest(t, tr, Options{Cgroup2: true})
	r, err := f.Freeze(context.Background(), Request{Mode: Legacy, MaxWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	wantJSON(t, r, `{"allowlisted":0,"failed":0,"frozen":2,"mode":"legacy","notFrozen":0,"preFrozen":0,"requested":2,"sweepMs":0,"truncated":false,"unobservable":0,"visited":0,"waitMs":0}`)
	if tr.isOwn("app") || !tr.isOwn("user") || !tr.isOwn("ptys") || !f.InEffect() {
		t.Fatalf("state after legacy freeze: %v in effect %v", tr.own, f.InEffect())
	}
	if _, ok := f.Audit(); ok {
		t.Fatal("audit after a legacy sweep")
	}
	res := f.Thaw("test")
	if !res.Clean() || !res.Walked || tr.isOwn("user") || tr.isOwn("ptys") || f.InEffect() {
		t.Fatalf("thaw: %+v, %v", res, tr.own)
	}
}

// The hierarchy example of control-plane.md §3.4.
func TestHierarchyExample(t *testing.T) {
	tr := newFake("app", "app/inner", "docker", "mine", "ptys", "user")
	tr.own["mine"] = true // the guest's own freeze
	f := newTest(t, tr, Options{Cgroup2: true})
	r, err := f.Freeze(context.Background(), Request{Mode: Hierarchy, MaxWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	wantJSON(t, r, `{"allowlisted":0,"failed":0,"frozen":4,"mode":"hierarchy","notFrozen":0,"preFrozen":1,"requested":4,"sweepMs":0,"truncated":false,"unobservable":0,"visited":5,"waitMs":0}`)
	if tr.isOwn("app/inner") {
		t.Fatal("a child of a frozen cgroup was written")
	}
	if s, _ := tr.settled("app/inner"); !s {
		t.Fatal("child not stopped")
	}
	a, ok := f.Audit()
	if !ok || a != (Audit{Visited: 7, Frozen: 6}) {
		t.Fatalf("audit %+v %v", a, ok)
	}
	res := f.Thaw("init")
	if !res.Clean() || res.Preserved != 1 || res.Thawed != 2 || !tr.isOwn("mine") || tr.isOwn("app") || tr.isOwn("docker") {
		t.Fatalf("thaw %+v %v", res, tr.own)
	}
	if _, ok := f.Audit(); ok {
		t.Fatal("audit after the thaw")
	}
}

func TestHierarchyAllowlistTruncationAndFailures(t *testing.T) {
	tr := newFake("a", "b", "init.scope", "system.slice", "system.slice/rpcbind.service", "system.slice/x.service", "threaded", "user", "ptys")
	tr.failW["threaded"] = true
	f := newTest(t, tr, Options{Cgroup2: true})
	r, _ := f.Freeze(context.Background(), Request{Mode: Hierarchy, MaxWait: time.Second})
	// Root children a, b, init.scope (allowlisted), ptys, system.slice
	// (descend set), threaded (fails), user: 7; system.slice's children 2.
	wantJSON(t, r, `{"allowlisted":2,"failed":1,"frozen":5,"mode":"hierarchy","notFrozen":0,"preFrozen":0,"requested":5,"sweepMs":0,"truncated":false,"unobservable":0,"visited":9,"waitMs":0}`)
	if tr.isOwn("system.slice") || tr.isOwn("init.scope") || tr.isOwn("system.slice/rpcbind.service") || !tr.isOwn("system.slice/x.service") {
		t.Fatalf("%v", tr.own)
	}
	f.Thaw("test")

	tr2 := newFake("a", "b", "user", "ptys")
	f2 := newTest(t, tr2, Options{Cgroup2: true})
	r, _ = f2.Freeze(context.Background(), Request{Mode: Hierarchy, MaxCgroups: 1, MaxWait: time.Second})
	if !r.Truncated || r.Visited != 1 || r.Requested != 3 || !tr2.isOwn("user") || !tr2.isOwn("ptys") || !tr2.isOwn("a") || tr2.isOwn("b") {
		t.Fatalf("maxCgroups=1: %+v %v", r, tr2.own)
	}
}

func TestNoRescanWhileInEffect(t *testing.T) {
	tr := newFake("app", "user", "ptys")
	f := newTest(t, tr, Options{Cgroup2: true})
	f.Freeze(context.Background(), Request{Mode: Hierarchy})
	r, _ := f.Freeze(context.Background(), Request{Mode: Hierarchy, MaxWait: time.Second})
	if r.PreFrozen != 0 || r.Requested != 3 {
		t.Fatalf("second freeze recorded our own freeze as the guest's: %+v", r)
	}
	if res := f.Thaw("t"); !res.Clean() || tr.isOwn("app") {
		t.Fatalf("%+v %v", res, tr.own)
	}
	// Nothing in effect: a thaw leaves a guest freeze of the static groups.
	tr.own["user"] = true
	if res := f.Thaw("t"); res.InEffect || !tr.isOwn("user") {
		t.Fatalf("clean thaw touched the guest's freeze: %+v", res)
	}
}

func TestNoopManagerAndNotFC(t *testing.T) {
	tr := newFake("app", "user", "ptys")
	f := newTest(t, tr, Options{Cgroup2: false})
	r, _ := f.Freeze(context.Background(), Request{Mode: Hierarchy, MaxWait: time.Second})
	wantJSON(t, r, `{"allowlisted":0,"failed":0,"frozen":0,"mode":"legacy","notFrozen":0,"preFrozen":0,"requested":2,"sweepMs":0,"truncated":false,"unobservable":2,"visited":0,"waitMs":0}`)
	if f.InEffect() || len(tr.writes) != 0 || f.watchdogGeneration() != 0 {
		t.Fatal("no-op manager recorded a freeze")
	}

	tr2 := newFake("app", "user", "ptys")
	g := newTest(t, tr2, Options{Cgroup2: true, NotFC: true})
	r, _ = g.Freeze(context.Background(), Request{Mode: Hierarchy})
	if r.Mode != Legacy || tr2.isOwn("app") {
		t.Fatalf("--isnotfc ran a hierarchy sweep: %+v", r)
	}
	tr2.own["app"] = true
	if res := g.Thaw("t"); res.Walked || !tr2.isOwn("app") || tr2.isOwn("user") {
		t.Fatalf("--isnotfc thaw walked: %+v", res)
	}
}

func TestAbandonedWaitKeepsTheFreeze(t *testing.T) {
	tr := newFake("user", "ptys")
	f := newTest(t, tr, Options{Cgroup2: true})
	// The lock is held: a client that goes away gets ErrAbandoned.
	f.lock <- struct{}{}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	if _, err := f.Freeze(ctx, Request{}); !errors.Is(err, ErrAbandoned) || tr.isOwn("user") {
		t.Fatalf("%v", err)
	}
	cancel()
	f.release()
}

func TestWatchdogGeneration(t *testing.T) {
	tr := newFake("user", "ptys")
	f := newTest(t, tr, Options{Cgroup2: true})
	f.Freeze(context.Background(), Request{})
	old := f.watchdogGeneration()
	f.Freeze(context.Background(), Request{}) // re-arms
	f.fire(old)                               // a superseded timer
	if !tr.isOwn("user") || !f.InEffect() {
		t.Fatal("a superseded watchdog thawed")
	}
	f.fire(f.watchdogGeneration())
	if tr.isOwn("user") || f.InEffect() {
		t.Fatal("the current watchdog did not thaw")
	}
}

func TestWatchdogFires(t *testing.T) {
	tr := newFake("user", "ptys")
	f := newTest(t, tr, Options{Cgroup2: true, Watchdog: 30 * time.Millisecond})
	f.Freeze(context.Background(), Request{})
	deadline := time.Now().Add(5 * time.Second)
	for tr.isOwn("user") {
		if time.Now().After(deadline) {
			t.Fatal("watchdog never thawed")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAuditEscapesAndViolations(t *testing.T) {
	tr := newFake("app", "user", "ptys", "system.slice", "init.scope")
	f := newTest(t, tr, Options{Cgroup2: true})
	f.Freeze(context.Background(), Request{Mode: Hierarchy})
	tr.own["late"] = false        // created after the sweep
	tr.own["system.slice"] = true // a protected cgroup frozen
	a, ok := f.Audit()
	// Visited: root, app, init.scope, late, ptys, system.slice, user.
	if !ok || a != (Audit{Visited: 7, Frozen: 3, Escaped: 1, Violations: 1}) {
		t.Fatalf("%+v %v", a, ok)
	}
	h, _ := f.AuditHeader()
	if h != `{"visited":7,"frozen":3,"escaped":1,"violations":1,"truncated":false}` {
		t.Fatal(h)
	}
}

func TestWalkBound(t *testing.T) {
	var paths []string
	for i := 0; i < 50; i++ {
		paths = append(paths, "g"+strings.Repeat("x", i))
	}
	tr := newFake(paths...)
	var seen []string
	n, trunc := walk(tr, 10, func(rel string) bool { seen = append(seen, rel); return true }, nil)
	if n != 10 || !trunc || len(seen) != 10 || !slices.IsSorted(seen[1:]) {
		t.Fatalf("%d %v %v", n, trunc, seen)
	}
	n, trunc = walk(tr, 51, func(string) bool { return true }, nil)
	if n != 51 || trunc {
		t.Fatalf("exact bound: %d %v", n, trunc)
	}
}

func TestDescendSetAndLocate(t *testing.T) {
	if got := descendSet([]string{""}); !slices.Equal(got, []string{"", "system.slice"}) {
		t.Fatalf("%v", got)
	}
	if got := descendSet(chainOf("a/b")); !slices.Equal(got, []string{"", "a", "a/b", "system.slice"}) {
		t.Fatalf("%v", got)
	}
	mi := "30 25 0:26 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw\n"
	if abs, ok := locate(mi, "/sys/fs/cgroup/unified/t", "/t/x"); !ok || abs != "/sys/fs/cgroup/unified/t/x" {
		t.Fatalf("%s %v", abs, ok)
	}
	if _, ok := locate(mi, "/other", "/"); ok {
		t.Fatal("a root outside every cgroup2 mount located")
	}
}

type fakePlacement struct{ disabled bool }

func (p *fakePlacement) PlacementDisabled() bool { return p.disabled }
func (p *fakePlacement) DisablePlacement()       { p.disabled = true }

// The upgrade's strict freeze, and the state a handover carries: the
// guest record and the placement switch; the incoming image has a freeze
// in effect (the upgrade froze) and a watchdog armed, which the normal-start
// rule then leaves alone.
func TestUpgradeFreezeAndHandoverPart(t *testing.T) {
	tr := newFake("user", "ptys", "mine")
	tr.own["mine"] = true
	spawn := 0
	f := newTest(t, tr, Options{Cgroup2: true, SpawnLock: func(fn func()) { spawn++; fn() }})
	release, err := f.HoldLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := f.Freeze(ctx, Request{}); !errors.Is(err, ErrAbandoned) {
		t.Fatalf("a /freeze while the upgrade holds the freezer lock: %v", err)
	}
	if err := f.FreezeHeld(context.Background(), time.Second); err != nil {
		t.Fatal(err)
	}
	if spawn != 0 || !tr.isOwn("user") || !tr.isOwn("ptys") || !f.InEffect() {
		t.Fatalf("strict freeze: spawn lock taken %d times, %v", spawn, tr.own)
	}
	rec := &handoverpb.Record{}
	part := HandoverPart{F: f, Placement: &fakePlacement{disabled: true}}
	if err := part.Export(rec, nil); err != nil {
		t.Fatal(err)
	}
	if got := rec.GetFreezer(); len(got.GuestRecord) != 1 || got.GuestRecord[0] != "mine" || !got.PlacementDisabled {
		t.Fatalf("exported %v", got)
	}
	release()
	release()

	next := newTest(t, tr, Options{Cgroup2: true})
	placement := &fakePlacement{}
	if _, err := (HandoverPart{F: next, Placement: placement}).Import(rec, nil); err != nil {
		t.Fatal(err)
	}
	next.Start()
	if !next.InEffect() || !placement.disabled || next.watchdogGeneration() == 0 {
		t.Fatalf("after the import: in effect %v, placement disabled %v, watchdog %d", next.InEffect(), placement.disabled, next.watchdogGeneration())
	}
	next.ThawFallback()
	if tr.isOwn("user") || !tr.isOwn("mine") {
		t.Fatalf("the fallback thaw: %v (the guest's own freeze must stay)", tr.own)
	}

	// Settling fails: strict.
	tr2 := newFake("user", "ptys")
	tr2.stuck = map[string]bool{"user": true}
	g := newTest(t, tr2, Options{Cgroup2: true})
	rel, _ := g.HoldLock(context.Background())
	if err := g.FreezeHeld(context.Background(), 50*time.Millisecond); !errors.Is(err, ErrNotFrozen) {
		t.Fatalf("a group that does not settle: %v", err)
	}
	rel()
	g.ThawAfterRollback()
	if tr2.isOwn("user") || g.InEffect() {
		t.Fatal("the rollback's thaw left the freeze")
	}
	// A failed handover thaws whatever the record said.
	tr3 := newFake("user", "ptys")
	tr3.own["user"] = true
	h := newTest(t, tr3, Options{Cgroup2: true})
	h.ThawAfterFailedHandover()
	if tr3.isOwn("user") {
		t.Fatal("a failed handover did not thaw")
	}
}
