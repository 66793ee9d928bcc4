//go:build vm

package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	procpb "github.com/envd/envd/gen/process"
)

// The orchestrator's control plane (spec control-plane.md §12) inside the
// snapshot cycles, in their warm-up quarter so that the flatness floors of
// the later cycles measure a settled envd:
//
//   - cycle 2: the in-guest 403 for all six routes; /collapse; a legacy
//     /freeze stops the counter (a Start into the frozen group waits, a
//     _system one runs, /unfreeze lets it run); frozen again, snapshot,
//     restore, and the /init after it thaws (no audit for a legacy sweep);
//   - cycle 3: a hierarchy /freeze of cgroups the test made (a child stops
//     without a write, an allowlisted one and one the guest froze are left
//     alone), a cgroup created after the freeze, snapshot, restore, and
//     /init thaws and reports the audit (violations 0, escaped 1);
//   - cycle 4: /fsfreeze of the real "/" (ext4 on the root disk): a guest
//     process's write blocks while /health, GET /files and ListDir answer,
//     /fsthaw lets it complete; maxCgroups=1 truncates.

const cgroupRoot = "/sys/fs/cgroup"

type vmFreezeResult struct {
	Allowlisted, Failed, Frozen, NotFrozen, PreFrozen, Requested int
	Mode                                                         string
	SweepMs                                                      int64
	Truncated                                                    bool
	Unobservable, Visited                                        int
	WaitMs                                                       int64
}

func (s *scenario) freeze(ctx context.Context, query string) (vmFreezeResult, error) {
	var r vmFreezeResult
	b, err := s.c.postWant(ctx, "/freeze?"+query, http.StatusOK)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("FreezeResult %q: %w", b, err)
	}
	return r, nil
}

// counterStopped checks that the counter prints nothing for a while.
func (s *scenario) counterStopped(ctx context.Context, what string) error {
	time.Sleep(300 * time.Millisecond) // a line on its way
	before := s.counterOut.len()
	select {
	case <-time.After(time.Second):
	case <-ctx.Done():
		return ctx.Err()
	}
	if after := s.counterOut.len(); after != before {
		return fmt.Errorf("%s: the counter printed %d bytes while frozen", what, after-before)
	}
	return nil
}

// cpBeforeSnapshot runs at the start of a cycle; cpFreezeForSnapshot right
// before its snapshot (after the connection list of the cycle was taken),
// as E2B's orchestrator freezes right before a pause.
func (s *scenario) cpBeforeSnapshot(t *testing.T, ctx context.Context, cycle int) {
	t.Helper()
	switch cycle {
	case 2:
		s.cpGuestRefused(t, ctx)
		s.cpCollapse(t, ctx)
		s.cpLegacyFreeze(t, ctx)
	case 4:
		s.cpFSFreeze(t, ctx)
		s.cpTruncatedFreeze(t, ctx)
	}
}

func (s *scenario) cpFreezeForSnapshot(t *testing.T, ctx context.Context, cycle int) {
	t.Helper()
	switch cycle {
	case 2:
		// Frozen across the snapshot; the /init after the restore thaws.
		r, err := s.freeze(ctx, "maxWaitMs=1500")
		if err != nil || r.Frozen != 2 {
			t.Fatalf("legacy freeze before the snapshot: %+v %v", r, err)
		}
	case 3:
		s.cpHierarchyFreeze(t, ctx)
	}
}

func (s *scenario) cpAfterInit(t *testing.T, ctx context.Context, cycle int, hdr http.Header) {
	t.Helper()
	audit := hdr.Get("X-Envd-Freeze-Audit")
	switch cycle {
	case 2:
		if audit != "" {
			t.Fatalf("cycle 2: an audit after a legacy freeze: %s", audit)
		}
		out, err := s.c.system(ctx, "cat "+cgroupRoot+"/user/cgroup.freeze "+cgroupRoot+"/ptys/cgroup.freeze")
		if err != nil || out != "0\n0\n" {
			t.Fatalf("cycle 2: static groups after /init: %q %v", out, err)
		}
	case 3:
		s.cpAuditAndCleanup(t, ctx, audit)
	default:
		if audit != "" {
			t.Fatalf("cycle %d: an audit without a freeze: %s", cycle, audit)
		}
	}
}

// cpGuestRefused: every control-plane route called from inside the VM,
// over loopback and the guest's own address, answers 403 (§1.1, D18).
func (s *scenario) cpGuestRefused(t *testing.T, ctx context.Context) {
	t.Helper()
	out, err := s.c.system(ctx, `for a in 127.0.0.1 10.0.2.15; do for p in freeze unfreeze collapse fsfreeze fsthaw upgrade; do
	echo "$a/$p $(wget -q -O /dev/null --post-data= "http://$a:49983/$p" 2>&1)"
done; done
cat /sys/fs/cgroup/user/cgroup.freeze`)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 13 || lines[12] != "0" {
		t.Fatalf("in-guest control-plane calls: %q", out)
	}
	for _, l := range lines[:12] {
		if !strings.Contains(l, "403") {
			t.Fatalf("in-guest call not refused with 403: %q", l)
		}
	}
}

func (s *scenario) cpCollapse(t *testing.T, ctx context.Context) {
	t.Helper()
	b, err := s.c.postWant(ctx, "/collapse", http.StatusOK)
	if err != nil {
		t.Fatal(err)
	}
	var r struct{ AlreadyHuge, Chunks, Collapsed, ElapsedMs, Regions, Skipped int }
	if err := json.Unmarshal(b, &r); err != nil || r.Regions == 0 || r.Chunks != r.Collapsed+r.AlreadyHuge+r.Skipped {
		t.Fatalf("/collapse: %s (%v)", b, err)
	}
	t.Logf("collapse: %s", strings.TrimSpace(string(b)))
}

// cpLegacyFreeze freezes the workload, checks that it stopped and that
// spawning waits without blocking envd, thaws with /unfreeze, and freezes
// again for the snapshot.
func (s *scenario) cpLegacyFreeze(t *testing.T, ctx context.Context) {
	t.Helper()
	if _, err := s.c.postWant(ctx, "/freeze", http.StatusNoContent); err != nil {
		t.Fatal(err)
	}
	r, err := s.freeze(ctx, "maxWaitMs=2000")
	if err != nil {
		t.Fatal(err)
	}
	if r.Mode != "legacy" || r.Requested != 2 || r.Frozen != 2 || r.NotFrozen != 0 || r.Failed != 0 || r.Visited != 0 {
		t.Fatalf("legacy freeze: %+v", r)
	}
	if err := s.counterStopped(ctx, "legacy freeze"); err != nil {
		t.Fatal(err)
	}
	if out, err := s.c.system(ctx, "grep frozen "+cgroupRoot+"/user/cgroup.events"); err != nil || out != "frozen 1\n" {
		t.Fatalf("user cgroup.events: %q %v", out, err)
	}
	// A Start into the frozen group waits; a _system one runs meanwhile.
	waited := make(chan *result, 1)
	go func() {
		r, err := s.c.run(ctx, "", "echo after-thaw")
		if err != nil {
			r = &result{stderr: err.Error()}
		}
		waited <- r
	}()
	time.Sleep(time.Second)
	if out, err := s.c.system(ctx, "echo system"); err != nil || out != "system\n" {
		t.Fatalf("_system start while frozen: %q %v", out, err)
	}
	select {
	case r := <-waited:
		t.Fatalf("a Start into the frozen group did not wait: %v", r)
	default:
	}
	if _, err := s.c.postWant(ctx, "/unfreeze", http.StatusNoContent); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-waited:
		if r.stdout != "after-thaw\n" || r.end.GetExitCode() != 0 {
			t.Fatalf("the waiting Start after /unfreeze: %v", r)
		}
	case <-ctx.Done():
		t.Fatal("the waiting Start never ran after /unfreeze")
	}
	if err := waitLines(ctx, &s.counterOut, mustLines(s.counterOut.bytes())+3); err != nil {
		t.Fatalf("counter after /unfreeze: %v", err)
	}
}

func mustLines(b []byte) int {
	n, _ := counterLines(b)
	return n
}

// cpHierarchyFreeze builds cgroups under the root and freezes the hierarchy.
func (s *scenario) cpHierarchyFreeze(t *testing.T, ctx context.Context) {
	t.Helper()
	// app/inner holds a process (a child of a cgroup the sweep writes);
	// init.scope is allowlisted; mine is frozen by the guest itself.
	if _, err := s.c.system(ctx, `cd `+cgroupRoot+` && mkdir -p app/inner init.scope mine && echo 1 > mine/cgroup.freeze`); err != nil {
		t.Fatal(err)
	}
	tag := "_system"
	pid, err := s.c.detach(ctx, "root", &procpb.StartRequest{
		Process: &procpb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", `echo $$ > ` + cgroupRoot + `/app/inner/cgroup.procs && exec sleep 100000`}},
		Tag:     &tag, Stdin: new(bool),
	})
	if err != nil {
		t.Fatal(err)
	}
	s.innerPid = pid
	if err := waitFor(ctx, func() (bool, string, error) {
		out, err := s.c.system(ctx, "cat "+cgroupRoot+"/app/inner/cgroup.procs")
		return strings.TrimSpace(out) == strconv.Itoa(int(pid)), out, err
	}); err != nil {
		t.Fatalf("process in app/inner: %v", err)
	}
	children, err := s.c.system(ctx, `cd `+cgroupRoot+` && for d in */; do echo "${d%/}"; done`)
	if err != nil {
		t.Fatal(err)
	}
	n := len(strings.Fields(children))
	r, err := s.freeze(ctx, "mode=hierarchy&maxCgroups=512&maxWaitMs=2000")
	if err != nil {
		t.Fatal(err)
	}
	// Root children: app, init.scope, mine, ptys, user (and whatever else
	// the kernel has there): app, ptys and user are written.
	if r.Mode != "hierarchy" || r.Visited != n || r.Allowlisted != 1 || r.PreFrozen != 1 || r.Requested != n-2 || r.Frozen != n-2 || r.NotFrozen != 0 || r.Failed != 0 || r.Truncated {
		t.Fatalf("hierarchy freeze with root children %q: %+v", children, r)
	}
	out, err := s.c.system(ctx, `cd `+cgroupRoot+` && cat app/cgroup.freeze app/inner/cgroup.freeze init.scope/cgroup.freeze; grep frozen app/inner/cgroup.events
mkdir late`)
	if err != nil || out != "1\n0\n0\nfrozen 1\n" {
		t.Fatalf("app, app/inner, init.scope after the sweep: %q %v", out, err)
	}
	if err := s.counterStopped(ctx, "hierarchy freeze"); err != nil {
		t.Fatal(err)
	}
	s.auditChildren = n + 1 // late
}

// cpAuditAndCleanup checks the audit of the /init after the hierarchy
// freeze and that the thaw left the guest's own freeze, then removes the
// test's cgroups.
func (s *scenario) cpAuditAndCleanup(t *testing.T, ctx context.Context, audit string) {
	t.Helper()
	// Visited: the root, its children and app/inner. Frozen: app,
	// app/inner, mine, ptys, user and any other kernel cgroup; escaped:
	// late; init.scope is protected and not frozen.
	want := fmt.Sprintf(`{"visited":%d,"frozen":%d,"escaped":1,"violations":0,"truncated":false}`, s.auditChildren+2, s.auditChildren-1)
	if audit != want {
		t.Fatalf("X-Envd-Freeze-Audit %q, want %q", audit, want)
	}
	out, err := s.c.system(ctx, `cd `+cgroupRoot+` && cat app/cgroup.freeze mine/cgroup.freeze user/cgroup.freeze; grep frozen app/inner/cgroup.events`)
	if err != nil || out != "0\n1\n0\nfrozen 0\n" {
		t.Fatalf("after /init: app, mine, user, app/inner: %q %v", out, err)
	}
	if err := s.c.kill(ctx, s.innerPid); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, func() (bool, string, error) {
		out, err := s.c.system(ctx, `cd `+cgroupRoot+` && echo 0 > mine/cgroup.freeze && rmdir app/inner && rmdir app init.scope mine late && echo gone`)
		return out == "gone\n", out, err
	}); err != nil {
		t.Fatalf("removing the test's cgroups: %v", err)
	}
}

// cpFSFreeze freezes the real root filesystem and thaws it.
func (s *scenario) cpFSFreeze(t *testing.T, ctx context.Context) {
	t.Helper()
	// "/" is the ext4 root disk (an initramfs cannot be frozen).
	if out, err := s.c.system(ctx, `awk '$2 == "/" {print $3}' /proc/self/mounts`); err != nil || out != "ext4\n" {
		t.Fatalf("the root filesystem is %q (%v), want ext4", out, err)
	}
	for i := 0; i < 2; i++ { // idempotent
		if _, err := s.c.postWant(ctx, "/fsfreeze", http.StatusNoContent); err != nil {
			t.Fatal(err)
		}
	}
	wrote := make(chan *result, 1)
	go func() {
		r, err := s.c.run(ctx, "root", "echo probe > /home/user/fsfreeze.probe && echo done")
		if err != nil {
			r = &result{stderr: err.Error()}
		}
		wrote <- r
	}()
	select {
	case r := <-wrote:
		t.Fatalf("a write to the frozen root filesystem completed: %v", r)
	case <-time.After(1500 * time.Millisecond):
	}
	if err := s.c.health(ctx); err != nil {
		t.Fatalf("/health while frozen: %v", err)
	}
	if sum, _, err := s.c.download(ctx, "", "/home/user/blob.bin"); err != nil || sum != s.blobSum {
		t.Fatalf("GET /files while frozen: %s %v", sum, err)
	}
	if _, err := s.c.listDir(ctx, "", "/home/user"); err != nil {
		t.Fatalf("ListDir while frozen: %v", err)
	}
	select {
	case r := <-wrote:
		t.Fatalf("the write completed while frozen: %v", r)
	default:
	}
	for i := 0; i < 2; i++ {
		if _, err := s.c.postWant(ctx, "/fsthaw", http.StatusNoContent); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case r := <-wrote:
		if r.stdout != "done\n" {
			t.Fatalf("the write after /fsthaw: %v", r)
		}
	case <-ctx.Done():
		t.Fatal("the write never completed after /fsthaw")
	}
}

// cpTruncatedFreeze: maxCgroups=1 stops the sweep after one child but the
// static groups are frozen all the same; /unfreeze undoes it.
func (s *scenario) cpTruncatedFreeze(t *testing.T, ctx context.Context) {
	t.Helper()
	r, err := s.freeze(ctx, "mode=hierarchy&maxCgroups=1&maxWaitMs=2000")
	if err != nil {
		t.Fatal(err)
	}
	if !r.Truncated || r.Visited != 1 || r.Frozen < 2 {
		t.Fatalf("maxCgroups=1: %+v", r)
	}
	if out, err := s.c.system(ctx, "cat "+cgroupRoot+"/user/cgroup.freeze "+cgroupRoot+"/ptys/cgroup.freeze"); err != nil || out != "1\n1\n" {
		t.Fatalf("static groups after a truncated sweep: %q %v", out, err)
	}
	if _, err := s.c.postWant(ctx, "/unfreeze", http.StatusNoContent); err != nil {
		t.Fatal(err)
	}
	if out, err := s.c.system(ctx, "cat "+cgroupRoot+"/user/cgroup.freeze"); err != nil || out != "0\n" {
		t.Fatalf("user after /unfreeze: %q %v", out, err)
	}
}
