package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// POST /freeze, /unfreeze and the /init thaw (spec control-plane.md §2–§5)
// on the machine's real cgroup v2 hierarchy, below a test cgroup given as
// --cgroup-root.

// A busy loop in user stops accruing CPU time while frozen and runs again
// after /unfreeze and after the /init thaw; a legacy freeze gets no audit.
func TestFreeze_LegacyStopsAndResumesTheWorkload(t *testing.T) {
	e, root := cpEnvd(t, envdtest.Options{})
	user := filepath.Join(root, "user")
	pid := busyInUser(t, e)
	running(t, pid, "before the freeze")

	cpStatus(t, e, "/freeze", http.StatusNoContent)
	cgWait(t, user, true)
	if !cgOwn(t, filepath.Join(root, "ptys")) {
		t.Fatal("ptys not frozen by the legacy sweep")
	}
	stopped(t, pid, "after /freeze")
	cpStatus(t, e, "/unfreeze", http.StatusNoContent)
	if cgOwn(t, user) || cgFrozen(t, user) {
		t.Fatal("user still frozen after /unfreeze")
	}
	running(t, pid, "after /unfreeze")

	// With maxWaitMs: 200 and the legacy result of §3.4.
	r := cpFreeze(t, e, "maxWaitMs=5000")
	if r.Mode != "legacy" || r.Requested != 2 || r.Frozen != 2 || r.NotFrozen != 0 || r.Failed != 0 || r.Visited != 0 || r.Allowlisted != 0 || r.Truncated {
		t.Fatalf("legacy result %+v", r)
	}
	stopped(t, pid, "after /freeze?maxWaitMs")
	resp, _ := postJSON(t, e.URL+"/init", nil, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("/init → %d", resp.StatusCode)
	}
	if h := resp.Header.Get("X-Envd-Freeze-Audit"); h != "" {
		t.Fatalf("audit after a legacy freeze: %s", h)
	}
	if cgOwn(t, user) {
		t.Fatal("/init did not thaw user")
	}
	running(t, pid, "after /init")
	lcWait(t, "the thaw line of /init", func() bool { return logRecordText(e.Log(), "[freezer] thaw", "by=init") })
}

// A group the guest froze itself stays frozen: /unfreeze and /init thaw
// nothing while no envd freeze is in effect (§4.1 step 2).
func TestFreeze_GuestFreezeSurvivesUnfreezeAndInit(t *testing.T) {
	e, root := cpEnvd(t, envdtest.Options{})
	user := filepath.Join(root, "user")
	pid := busyInUser(t, e)
	cgSetFreeze(t, user, true) // the guest's own freeze
	cgWait(t, user, true)
	cpStatus(t, e, "/unfreeze", http.StatusNoContent)
	if resp, _ := postJSON(t, e.URL+"/init", nil, nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("/init → %d", resp.StatusCode)
	}
	if !cgOwn(t, user) {
		t.Fatal("envd thawed a freeze the guest made")
	}
	stopped(t, pid, "guest freeze after /unfreeze and /init")
	cgSetFreeze(t, user, false)
	running(t, pid, "after the guest's thaw")
}

// Hierarchy mode (Firecracker mode): test-created cgroups under the root
// are frozen; their children are not written but stop; an allowlisted name
// is skipped and counted; a cgroup the guest froze is counted in preFrozen
// and stays frozen after /init; the audit counts a cgroup created after the
// freeze as escaped; maxCgroups=1 truncates but the static groups are
// frozen all the same.
func TestFreeze_HierarchyAuditAndBound(t *testing.T) {
	e, root := cpFCEnvd(t, envdtest.Options{})
	app, _ := testCgroup(t, root, "app", false)
	inner, innerPid := testCgroup(t, root, "app/inner", true)
	mine, minePid := testCgroup(t, root, "mine", true)
	scope, scopePid := testCgroup(t, root, "init.scope", true)
	cgSetFreeze(t, mine, true)
	cgWait(t, mine, true)

	r := cpFreeze(t, e, "mode=hierarchy&maxWaitMs=10000&maxCgroups=64")
	// Root children: app, init.scope, mine, ptys, user.
	want := freezeResult{Allowlisted: 1, Frozen: 3, Mode: "hierarchy", PreFrozen: 1, Requested: 3, Visited: 5}
	r.SweepMs, r.WaitMs = 0, 0
	if r != want {
		t.Fatalf("hierarchy result %+v, want %+v", r, want)
	}
	if !cgOwn(t, app) || cgOwn(t, inner) || !cgFrozen(t, inner) {
		t.Fatalf("app own=%v, app/inner own=%v settled=%v: want app written, inner stopped without a write", cgOwn(t, app), cgOwn(t, inner), cgFrozen(t, inner))
	}
	stopped(t, innerPid, "a child of a frozen cgroup")
	if cgOwn(t, scope) || cgFrozen(t, scope) {
		t.Fatal("the allowlisted init.scope was frozen")
	}
	running(t, scopePid, "the allowlisted cgroup")

	late, _ := testCgroup(t, root, "late", false)
	resp, _ := postJSON(t, e.URL+"/init", nil, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("/init → %d", resp.StatusCode)
	}
	// root, app, app/inner, init.scope, late, mine, ptys, user.
	if got, want := resp.Header.Get("X-Envd-Freeze-Audit"), `{"visited":8,"frozen":5,"escaped":1,"violations":0,"truncated":false}`; got != want {
		t.Fatalf("audit %q, want %q", got, want)
	}
	lcWait(t, "the audit's escape line", func() bool {
		return logRecord(e.Log(), "freeze audit: cgroups ran through the snapshot unfrozen", map[string]any{"escaped": float64(1)})
	})
	if cgOwn(t, app) || cgFrozen(t, inner) || cgOwn(t, filepath.Join(root, "user")) {
		t.Fatal("/init did not thaw the sweep")
	}
	running(t, innerPid, "after /init")
	if !cgOwn(t, mine) {
		t.Fatal("/init thawed the cgroup the guest had frozen")
	}
	stopped(t, minePid, "the guest's frozen cgroup after /init")
	_ = late

	// A second /init: nothing in effect, no audit.
	resp, _ = postJSON(t, e.URL+"/init", nil, nil)
	if h := resp.Header.Get("X-Envd-Freeze-Audit"); resp.StatusCode != http.StatusNoContent || h != "" {
		t.Fatalf("second /init → %d audit %q", resp.StatusCode, h)
	}

	r = cpFreeze(t, e, "mode=hierarchy&maxCgroups=1&maxWaitMs=10000")
	if !r.Truncated || r.Visited != 1 || r.Mode != "hierarchy" || r.Requested != 3 {
		t.Fatalf("maxCgroups=1: %+v", r)
	}
	for _, g := range []string{"user", "ptys", "app"} {
		if !cgOwn(t, filepath.Join(root, g)) {
			t.Fatalf("maxCgroups=1: %s not frozen", g)
		}
	}
	if cgOwn(t, late) {
		t.Fatal("maxCgroups=1 froze past its bound")
	}
	cpStatus(t, e, "/unfreeze", http.StatusNoContent)
	if cgOwn(t, filepath.Join(root, "user")) || cgOwn(t, app) || !cgOwn(t, mine) {
		t.Fatal("/unfreeze after a truncated sweep")
	}
}

// With --isnotfc a hierarchy request runs as legacy (§2.4): outside a VM
// everything else is the host's.
func TestFreeze_NotFCDowngradesHierarchy(t *testing.T) {
	e, root := cpEnvd(t, envdtest.Options{})
	app, _ := testCgroup(t, root, "app", false)
	r := cpFreeze(t, e, "mode=hierarchy&maxWaitMs=5000")
	if r.Mode != "legacy" || r.Requested != 2 || r.Visited != 0 || cgOwn(t, app) {
		t.Fatalf("--isnotfc hierarchy request: %+v, app frozen %v", r, cgOwn(t, app))
	}
	cgSetFreeze(t, app, true) // frozen by someone else: never thawed by envd here
	cpStatus(t, e, "/unfreeze", http.StatusNoContent)
	if !cgOwn(t, app) {
		t.Fatal("--isnotfc thaw walked the hierarchy")
	}
}

// The thaw watchdog thaws a freeze nobody undid, after its (shortened)
// window; a freeze that re-arms it supersedes the earlier timer.
func TestFreeze_ThawWatchdog(t *testing.T) {
	const window = 4 * time.Second
	e, root := cpEnvd(t, envdtest.Options{Env: []string{"ENVD_TEST_THAW_WATCHDOG_MS=4000"}})
	user := filepath.Join(root, "user")
	pid := busyInUser(t, e)
	t0 := time.Now()
	cpStatus(t, e, "/freeze", http.StatusNoContent)
	time.Sleep(time.Second)
	cpStatus(t, e, "/freeze", http.StatusNoContent) // re-arms: fires at ≥ t0+5 s
	time.Sleep(time.Until(t0.Add(window + 600*time.Millisecond)))
	// The first timer's moment has passed: superseded, it did nothing.
	if !cgOwn(t, user) || strings.Contains(e.Log(), "freeze outlived the thaw watchdog window") {
		t.Fatalf("the superseded watchdog thawed:\n%s", e.Log())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.WaitLog(ctx, "freeze outlived the thaw watchdog window; thawing"); err != nil {
		t.Fatal(err)
	}
	if cgOwn(t, user) {
		t.Fatal("the watchdog did not thaw user")
	}
	running(t, pid, "after the watchdog")
	time.Sleep(window + time.Second)
	if n := strings.Count(e.Log(), "freeze outlived the thaw watchdog window"); n != 1 {
		t.Fatalf("watchdog fired %d times", n)
	}
	// A clean thaw disarms it: freeze, /unfreeze, and no further firing.
	cpStatus(t, e, "/freeze", http.StatusNoContent)
	cpStatus(t, e, "/unfreeze", http.StatusNoContent)
	time.Sleep(window + time.Second)
	if n := strings.Count(e.Log(), "freeze outlived the thaw watchdog window"); n != 1 {
		t.Fatalf("a disarmed watchdog fired (%d lines)", n)
	}
}

// A Start while user is frozen does not fork into it: it waits, holding no
// lock, and runs after the thaw; meanwhile a _system Start and a PTY start's
// cancellation complete (§2.5, e2b-dev/infra#2923). The wait is also woken
// by a thaw someone else makes (inotify), and ends with the Start's
// deadline.
func TestFreeze_StartWaitsForTheThaw(t *testing.T) {
	e, root := cpEnvd(t, envdtest.Options{})
	user := filepath.Join(root, "user")
	c := e.Process()
	cpStatus(t, e, "/freeze", http.StatusNoContent)
	cgWait(t, user, true)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	type result struct {
		ev *procEvents
		at time.Time
	}
	waiting := make(chan result, 1)
	go func() {
		s, err := c.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: procSh("echo after-thaw")}))
		if err != nil {
			waiting <- result{ev: &procEvents{err: err}}
			return
		}
		ev := newProcReader[pb.StartResponse, *pb.StartResponse](s).drain()
		waiting <- result{ev: ev, at: time.Now()}
	}()

	// While it waits: a _system process is spawned and reaped.
	sys := procRun(t, c, connect.NewRequest(&pb.StartRequest{Process: procSh("echo system; exit 3"), Tag: ptr("_system")}))
	wantEnd(t, sys, 3, true, "exit status 3")
	if sys.stdout() != "system\n" {
		t.Fatalf("_system output %q", sys.stdout())
	}
	// A Start into the frozen ptys group ends with its deadline.
	dctx, dcancel := context.WithTimeout(ctx, 700*time.Millisecond)
	s, err := c.Start(dctx, connect.NewRequest(&pb.StartRequest{Process: procSh("true"), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}}}))
	if err == nil {
		for s.Receive() {
			t.Fatalf("a PTY start into the frozen ptys group produced %v", s.Msg())
		}
		err = s.Err()
	}
	dcancel()
	if code := connect.CodeOf(err); code != connect.CodeDeadlineExceeded {
		t.Fatalf("PTY start while frozen: %v, want deadline_exceeded", err)
	}
	select {
	case r := <-waiting:
		t.Fatalf("the Start did not wait for the thaw: %v", r.ev.kinds)
	default:
	}
	if procs := strings.TrimSpace(cgFile(t, user, "cgroup.procs")); procs != "" {
		t.Fatalf("a process was forked into the frozen group: %q", procs)
	}
	thawed := time.Now()
	cpStatus(t, e, "/unfreeze", http.StatusNoContent)
	r := <-waiting
	wantEnd(t, r.ev, 0, true, "exit status 0")
	if r.ev.stdout() != "after-thaw\n" || r.at.Before(thawed) {
		t.Fatalf("waiting Start: %q at %v (thaw at %v)", r.ev.stdout(), r.at, thawed)
	}

	// Frozen by the guest, thawed by the guest: the change notification
	// wakes the Start (envd's own thaw never runs).
	cgSetFreeze(t, user, true)
	cgWait(t, user, true)
	go func() {
		s, err := c.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: procSh("echo guest-thaw")}))
		if err != nil {
			waiting <- result{ev: &procEvents{err: err}}
			return
		}
		waiting <- result{ev: newProcReader[pb.StartResponse, *pb.StartResponse](s).drain()}
	}()
	time.Sleep(500 * time.Millisecond)
	select {
	case r := <-waiting:
		t.Fatalf("the Start did not wait for the guest's freeze: %v", r.ev.kinds)
	default:
	}
	cgSetFreeze(t, user, false)
	select {
	case r := <-waiting:
		wantEnd(t, r.ev, 0, true, "exit status 0")
		if r.ev.stdout() != "guest-thaw\n" {
			t.Fatalf("%q", r.ev.stdout())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the Start was not woken by the guest's thaw")
	}
}

// Every status of §3.3 and §1.1 that a client can see, and the query
// rules of §3.1; 503 (the client gone) is seen in envd's request log.
func TestFreeze_StatusesAndParameters(t *testing.T) {
	e, root := cpEnvd(t, envdtest.Options{Args: []string{"--verbose"}})
	for _, q := range []string{"maxWaitMs=abc", "maxWaitMs=1.5", "maxWaitMs=99999999999999999999", "maxCgroups=x", "maxCgroups=0x10", "mode=legacy&mode=hierarchy", "maxWaitMs=1&maxWaitMs=2"} {
		resp, body := cpPost(t, e, "/freeze?"+q, nil)
		jsonError(t, resp, body, http.StatusBadRequest, "")
		if !strings.Contains(string(body), "Invalid format for parameter ") {
			t.Fatalf("%s: %q", q, body)
		}
		if cgOwn(t, filepath.Join(root, "user")) {
			t.Fatalf("%s: a refused request froze", q)
		}
	}
	// Empty means absent; a sign is allowed; mode=foo is legacy; values ≤ 0
	// mean no wait; huge values are capped, not refused.
	cpStatus(t, e, "/freeze?maxWaitMs=", http.StatusNoContent)
	cpStatus(t, e, "/freeze?maxWaitMs=-5&maxCgroups=-1", http.StatusNoContent)
	if r := cpFreeze(t, e, "mode=foo&maxWaitMs=%2B2000&maxCgroups=99999999"); r.Mode != "legacy" || r.Frozen != 2 {
		t.Fatalf("mode=foo: %+v", r)
	}
	if r := cpFreeze(t, e, "mode=HIERARCHY&maxWaitMs=86400001"); r.Mode != "legacy" {
		t.Fatalf("mode is case-sensitive: %+v", r)
	}
	cpStatus(t, e, "/unfreeze", http.StatusNoContent)

	// Only POST; 405 with Allow: POST and Cache-Control.
	for _, p := range []string{"/freeze", "/unfreeze", "/collapse", "/fsfreeze", "/fsthaw"} {
		for _, m := range []string{"GET", "HEAD", "PUT"} {
			resp, _ := do(t, m, e.URL+p, nil, nil)
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" || resp.Header.Get("Cache-Control") != "no-store" {
				t.Fatalf("%s %s → %d Allow %q Cache-Control %q", m, p, resp.StatusCode, resp.Header.Get("Allow"), resp.Header.Get("Cache-Control"))
			}
		}
	}

	// 503: the client went away while /freeze waited for the lock.
	unblock := holdFreezerLock(t, e, root)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, "POST", e.URL+"/freeze", nil)
	if _, err := http.DefaultClient.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("/freeze behind the lock answered: %v", err)
	}
	cancel()
	lcWait(t, "the 503 in the request log", func() bool {
		return logRecordText(e.Log(), "request method=POST path=/freeze", "status_code=503")
	})
	unblock()

	// With a token every route needs it: 401 with the JSON body and
	// Cache-Control; with it they work.
	resp, _ := postJSON(t, e.URL+"/init", map[string]any{"accessToken": "cp-secret"}, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("/init with a token → %d", resp.StatusCode)
	}
	for _, p := range []string{"/freeze", "/unfreeze", "/collapse", "/fsfreeze", "/fsthaw"} {
		resp, body := cpPost(t, e, p, nil)
		jsonError(t, resp, body, http.StatusUnauthorized, "")
		resp, body = cpPost(t, e, p, map[string]string{"X-Access-Token": "wrong"})
		jsonError(t, resp, body, http.StatusUnauthorized, "")
	}
	if cgOwn(t, filepath.Join(root, "user")) {
		t.Fatal("an unauthorised /freeze froze")
	}
	tok := map[string]string{"X-Access-Token": "cp-secret"}
	if resp, _ := cpPost(t, e, "/freeze", tok); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("/freeze with the token → %d", resp.StatusCode)
	}
	if resp, _ := cpPost(t, e, "/unfreeze", tok); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("/unfreeze with the token → %d", resp.StatusCode)
	}
}

// holdFreezerLock makes a /freeze hold the freezer lock in its wait: a
// process in user blocked in an uninterruptible write (on a filesystem the
// test froze) cannot be frozen, so the group never settles. First a short
// wait shows it as notFrozen. The returned function thaws the filesystem:
// the writer finishes, the group settles and the long wait ends.
func holdFreezerLock(t *testing.T, e *envdtest.Envd, root string) func() {
	t.Helper()
	mnt := scratchExt4(t)
	if err := fsIoctl(mnt, true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := e.Process().Start(ctx, connect.NewRequest(&pb.StartRequest{Process: procSh("echo stuck > " + mnt + "/f")}))
	if err != nil {
		t.Fatal(err)
	}
	r := newProcReader[pb.StartResponse, *pb.StartResponse](s)
	if !r.next() {
		t.Fatal("no start event")
	}
	pid := int(r.ev.pid)
	lcWait(t, "the writer blocked in D state", func() bool {
		st, ok := readStat(pid)
		return ok && st.state == 'D'
	})
	short := cpFreeze(t, e, "maxWaitMs=500")
	if short.Requested != 2 || short.Frozen != 1 || short.NotFrozen != 1 || short.Failed != 0 || short.WaitMs < 450 {
		t.Fatalf("a group that cannot settle: %+v, want notFrozen 1 after the whole wait", short)
	}
	cpStatus(t, e, "/unfreeze", http.StatusNoContent)
	if cgOwn(t, filepath.Join(root, "user")) {
		t.Fatal("user still frozen after /unfreeze")
	}
	done := make(chan freezeResult, 1)
	go func() {
		var fr freezeResult
		resp, err := http.Post(e.URL+"/freeze?maxWaitMs=60000", "", nil)
		if err == nil {
			if resp.StatusCode == http.StatusOK {
				_ = json.NewDecoder(resp.Body).Decode(&fr)
			}
			resp.Body.Close()
		}
		done <- fr
	}()
	// The long one writes user (under the lock) before it waits.
	lcWait(t, "the long /freeze in its wait", func() bool { return cgOwn(t, filepath.Join(root, "user")) })
	return func() {
		if err := fsIoctl(mnt, false); err != nil {
			t.Fatal(err)
		}
		select {
		case fr := <-done:
			if fr.Requested != 2 || fr.Frozen != 2 || fr.NotFrozen != 0 {
				t.Errorf("the long /freeze after the writer finished: %+v", fr)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the long /freeze never ended")
		}
		cpStatus(t, e, "/unfreeze", http.StatusNoContent)
		r.drain()
		cancel()
	}
}

// With the no-op manager (--no-cgroups) the counts are E2B's, nothing is
// in effect and no watchdog is armed (§2.4).
func TestFreeze_NoCgroups(t *testing.T) {
	e := procEnvd(t, envdtest.Options{Args: []string{"--no-cgroups"}, Env: []string{"ENVD_TEST_THAW_WATCHDOG_MS=300"}})
	cpStatus(t, e, "/freeze", http.StatusNoContent)
	r := cpFreeze(t, e, "maxWaitMs=1000&mode=hierarchy")
	r.SweepMs, r.WaitMs = 0, 0
	if want := (freezeResult{Mode: "legacy", Requested: 2, Unobservable: 2}); r != want {
		t.Fatalf("no-op result %+v, want %+v", r, want)
	}
	cpStatus(t, e, "/unfreeze", http.StatusNoContent)
	time.Sleep(time.Second)
	if strings.Contains(e.Log(), "watchdog") {
		t.Fatalf("a watchdog with the no-op manager:\n%s", e.Log())
	}
}

// Shutdown thaws first (lifecycle.md §3.5): a frozen process could not act
// on SIGTERM.
func TestFreeze_ShutdownThawsFirst(t *testing.T) {
	e, root := cpEnvd(t, envdtest.Options{})
	dir := lcScratch(t)
	mark := filepath.Join(dir, "term")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := procStart(t, ctx, e.Process(), connect.NewRequest(&pb.StartRequest{
		Process: procSh(fmt.Sprintf(`trap 'echo term > %s; exit 0' TERM; echo ready; while :; do sleep 0.05; done`, mark)),
	}))
	r.until(t, "stdout", "ready")
	cpStatus(t, e, "/freeze", http.StatusNoContent)
	cgWait(t, filepath.Join(root, "user"), true)
	if err := e.Stop(); err != nil {
		t.Fatalf("stop: %v\n%s", err, e.Log())
	}
	if b, err := os.ReadFile(mark); err != nil || string(b) != "term\n" {
		t.Fatalf("the frozen process never handled SIGTERM (%v):\n%s", err, e.Log())
	}
}

func logRecordText(log, prefix, contains string) bool {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, prefix) && strings.Contains(line, contains) {
			return true
		}
	}
	return false
}

// In Firecracker mode all six control-plane routes refuse a peer inside the
// guest — loopback or the guest's own address — with 403 before the token
// check (§1.1, D18), and nothing happens; from the host they work.
func TestControlPlane_RefusedFromInsideTheGuest(t *testing.T) {
	mnt := scratchExt4(t)
	ns, e, root := cpFCEnvdNS(t, envdtest.Options{Env: []string{"ENVD_TEST_FSFREEZE_TARGET=" + mnt}})
	t.Cleanup(func() { _ = fsIoctl(mnt, false) })
	port := fmt.Sprint(e.Port)
	user := filepath.Join(root, "user")
	for _, addr := range []string{"127.0.0.1:" + port, ns.nsIP + ":" + port} {
		for _, path := range []string{"/freeze", "/unfreeze", "/collapse", "/fsfreeze", "/fsthaw", "/upgrade", "/freeze?maxWaitMs=100", "//fsfreeze"} {
			resp, b := ns.guestDo(t, addr, "POST", path, map[string]string{"Content-Length": "0"}, "")
			jsonError(t, resp, b, http.StatusForbidden, "not allowed from inside the sandbox")
			if resp.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("%s %s: 403 without Cache-Control: no-store", addr, path)
			}
		}
	}
	if cgOwn(t, user) || strings.Contains(e.Log(), "[freezer]") || strings.Contains(e.Log(), `"logger":"freezer"`) {
		t.Fatalf("a guest request reached the freezer:\n%s", e.Log())
	}
	select {
	case err := <-blockedWrite(t, filepath.Join(mnt, "x")):
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a guest request froze the filesystem")
	}
	// From the host.
	cpStatus(t, e, "/freeze", http.StatusNoContent)
	if !cgOwn(t, user) {
		t.Fatal("the host's /freeze did not freeze")
	}
	cpStatus(t, e, "/unfreeze", http.StatusNoContent)
	cpStatus(t, e, "/fsfreeze", http.StatusNoContent)
	cpStatus(t, e, "/fsthaw", http.StatusNoContent)
	if resp, _ := cpPost(t, e, "/collapse", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("/collapse from the host → %d", resp.StatusCode)
	}
}

// A freeze left by an earlier envd process (one that died without its
// shutdown thaw; possible only when envd is not PID 1) counts as in effect
// for the next envd on the same groups, so that its first thaw undoes it
// (§2.1).
func TestFreeze_InEffectAtStartupIsThawed(t *testing.T) {
	abs, _ := lcCgroupRoot(t)
	first := procEnvd(t, envdtest.Options{Args: []string{"--cgroup-root", abs}})
	pid := busyInUser(t, first)
	cpStatus(t, first, "/freeze", http.StatusNoContent)
	cgWait(t, filepath.Join(abs, "user"), true)
	first.Kill() // no shutdown, no thaw
	second := procEnvd(t, envdtest.Options{Args: []string{"--cgroup-root", abs}})
	lcWait(t, "the startup line", func() bool {
		return strings.Contains(second.Log(), "a static group is frozen at startup; the next thaw undoes it")
	})
	stopped(t, pid, "the orphaned workload before the thaw")
	cpStatus(t, second, "/unfreeze", http.StatusNoContent)
	if cgOwn(t, filepath.Join(abs, "user")) {
		t.Fatal("the second envd's thaw left the earlier freeze")
	}
	running(t, pid, "after the second envd's thaw")
}
