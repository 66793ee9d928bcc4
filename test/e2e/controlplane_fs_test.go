package e2e

import (
	"bytes"
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

	"github.com/envd/envd/gen/filesystem"
	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// POST /fsfreeze and /fsthaw (spec control-plane.md §7) and /collapse
// (§6). The freeze target is a filesystem the test creates, named by the
// test-only ENVD_TEST_FSFREEZE_TARGET: never the machine's "/".

// fsFreezeEnvd runs envd in Firecracker mode (the endpoints refuse with
// --isnotfc) in a network namespace, freezing mnt instead of "/".
func fsFreezeEnvd(t *testing.T, mnt string, opts envdtest.Options) *envdtest.Envd {
	t.Helper()
	opts.Env = append(opts.Env, "ENVD_TEST_FSFREEZE_TARGET="+mnt)
	e, _ := fcWithMMDS(t, map[string]any{"instanceID": "sbx-fs", "envID": "tpl-fs"}, opts)
	return e
}

// within fails the test if f does not return within d (it keeps running)
// or returns an error. f runs on its own goroutine and must not call t.Fatal.
func within(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(d):
		t.Fatalf("%s did not answer within %v while the filesystem was frozen", what, d)
	}
}

// getStatus is a GET's status (no t.Fatal: for within).
func getStatus(url string) (int, []byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.Bytes(), err
}

// runSh runs a script through the API and returns its stdout and exit
// code (no t.Fatal: for within).
func runSh(e *envdtest.Envd, script string) (string, int32, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := e.Process().Start(ctx, connect.NewRequest(&pb.StartRequest{Process: procSh(script)}))
	if err != nil {
		return "", 0, err
	}
	ev := newProcReader[pb.StartResponse, *pb.StartResponse](s).drain()
	if ev.err != nil || ev.end == nil {
		return "", 0, fmt.Errorf("stream: %v (events %v)", ev.err, ev.kinds)
	}
	return ev.stdout(), ev.end.GetExitCode(), nil
}

// While frozen, writes block — an upload, a guest process's write — and
// everything that does not write keeps answering: /health, /metrics, GET
// /files, Stat, ListDir, process RPCs; /fsthaw lets the writes complete.
// Both endpoints are idempotent.
func TestFSFreeze_WritesBlockReadsAnswer(t *testing.T) {
	mnt := scratchExt4(t)
	if err := os.WriteFile(filepath.Join(mnt, "existing.txt"), []byte("before the freeze\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := fsFreezeEnvd(t, mnt, envdtest.Options{})
	t.Cleanup(func() { _ = fsIoctl(mnt, false) }) // before envd is stopped
	cpStatus(t, e, "/fsfreeze", http.StatusNoContent)
	cpStatus(t, e, "/fsfreeze", http.StatusNoContent) // already frozen: EBUSY is success

	type upload struct {
		status int
		body   []byte
	}
	uploaded := make(chan upload, 1)
	go func() {
		req, _ := http.NewRequest("POST", filesURL(e, "path", filepath.Join(mnt, "up.bin")), bytes.NewReader([]byte("uploaded while frozen")))
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			uploaded <- upload{status: -1, body: []byte(err.Error())}
			return
		}
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		resp.Body.Close()
		uploaded <- upload{status: resp.StatusCode, body: b.Bytes()}
	}()
	wrote := blockedWrite(t, filepath.Join(mnt, "guest.txt"))

	const answer = 10 * time.Second
	for _, u := range []string{e.URL + "/health", e.URL + "/metrics", filesURL(e, "path", filepath.Join(mnt, "existing.txt"))} {
		within(t, answer, "GET "+u, func() error {
			status, body, err := getStatus(u)
			if err == nil && status != 200 {
				err = fmt.Errorf("status %d %q", status, body)
			}
			return err
		})
	}
	fs := e.Filesystem()
	within(t, answer, "Stat and ListDir", func() error {
		if _, err := fs.Stat(context.Background(), connect.NewRequest(&filesystem.StatRequest{Path: filepath.Join(mnt, "existing.txt")})); err != nil {
			return err
		}
		_, err := fs.ListDir(context.Background(), connect.NewRequest(&filesystem.ListDirRequest{Path: mnt}))
		return err
	})
	within(t, answer, "a process that reads the frozen filesystem", func() error {
		out, code, err := runSh(e, "cat "+filepath.Join(mnt, "existing.txt"))
		if err == nil && (code != 0 || out != "before the freeze\n") {
			err = fmt.Errorf("cat: %q exit %d", out, code)
		}
		return err
	})
	select {
	case u := <-uploaded:
		t.Fatalf("the upload completed while the filesystem was frozen: %d %q", u.status, u.body)
	case err := <-wrote:
		t.Fatalf("a guest write completed while the filesystem was frozen: %v", err)
	case <-time.After(time.Second):
	}

	cpStatus(t, e, "/fsthaw", http.StatusNoContent)
	select {
	case u := <-uploaded:
		if u.status != http.StatusOK {
			t.Fatalf("upload after the thaw: %d %q", u.status, u.body)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the upload did not complete after the thaw")
	}
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the guest write did not complete after the thaw")
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "up.bin")); err != nil || string(b) != "uploaded while frozen" {
		t.Fatalf("uploaded file %q %v", b, err)
	}
	cpStatus(t, e, "/fsthaw", http.StatusNoContent) // not frozen: EINVAL is success
	lcWait(t, "the thaw line", func() bool { return logRecord(e.Log(), "filesystem thawed", map[string]any{"by": "fsthaw"}) })

	// Shutdown thaws first (lifecycle.md §3.5).
	cpStatus(t, e, "/fsfreeze", http.StatusNoContent)
	if err := e.Stop(); err != nil {
		t.Fatalf("stop while frozen: %v", err)
	}
	select {
	case err := <-blockedWrite(t, filepath.Join(mnt, "after-stop.txt")):
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the filesystem is still frozen after envd stopped")
	}
}

// The watchdog thaws a freeze nobody undid (§7.4), and a freeze failure is
// a 500 with the ioctl's text: tmpfs cannot be frozen.
func TestFSFreeze_WatchdogAndFailures(t *testing.T) {
	mnt := scratchExt4(t)
	e := fsFreezeEnvd(t, mnt, envdtest.Options{Env: []string{"ENVD_TEST_FSFREEZE_WATCHDOG_MS=1500"}})
	cpStatus(t, e, "/fsfreeze", http.StatusNoContent)
	wrote := blockedWrite(t, filepath.Join(mnt, "w.txt"))
	select {
	case <-wrote:
		t.Fatal("write completed while frozen")
	case <-time.After(500 * time.Millisecond):
	}
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the watchdog did not thaw")
	}
	lcWait(t, "the watchdog line", func() bool {
		return strings.Contains(e.Log(), "root filesystem freeze outlived the watchdog window; thawing")
	})
	cpStatus(t, e, "/fsthaw", http.StatusNoContent)

	tmp := fsMountTmpfs(t, "size=1m")
	e2 := fsFreezeEnvd(t, tmp, envdtest.Options{})
	resp, body := cpPost(t, e2, "/fsfreeze", nil)
	jsonError(t, resp, body, http.StatusInternalServerError, "FIFREEZE "+tmp+": operation not supported")
	cpStatus(t, e2, "/fsthaw", http.StatusNoContent) // not frozen

	gone := filepath.Join(lcScratch(t), "missing")
	e3 := fsFreezeEnvd(t, gone, envdtest.Options{})
	resp, body = cpPost(t, e3, "/fsfreeze", nil)
	jsonError(t, resp, body, http.StatusInternalServerError, "open "+gone+": no such file or directory")
}

// With --isnotfc, /fsfreeze is refused (it would freeze the developer's own
// root filesystem) and /fsthaw does nothing.
func TestFSFreeze_NotFC(t *testing.T) {
	mnt := scratchExt4(t)
	e := envdtest.Start(t, envdtest.Options{Env: []string{"ENVD_TEST_FSFREEZE_TARGET=" + mnt}})
	resp, body := cpPost(t, e, "/fsfreeze", nil)
	jsonError(t, resp, body, http.StatusInternalServerError, "filesystem freeze is not available with --isnotfc")
	cpStatus(t, e, "/fsthaw", http.StatusNoContent)
	select {
	case err := <-blockedWrite(t, filepath.Join(mnt, "x")):
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("--isnotfc froze the filesystem")
	}
}

// envd's standard output on the frozen filesystem must not wedge it: log
// lines are dropped (and counted) while it is frozen, so a Start (which
// logs), /fsthaw and everything else still answer.
func TestFSFreeze_LogOnTheFrozenFilesystem(t *testing.T) {
	mnt := scratchExt4(t)
	logFile := filepath.Join(mnt, "envd.log")
	e := fsFreezeEnvd(t, mnt, envdtest.Options{Wrap: []string{"sh", "-c", `exec "$@" >>"$0" 2>&1`, logFile}})
	// Before envd is stopped: a wedged envd would not stop while frozen.
	t.Cleanup(func() { _ = fsIoctl(mnt, false) })
	post := func(path string) error {
		resp, err := http.Post(e.URL+path, "", nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			return fmt.Errorf("%s → %d", path, resp.StatusCode)
		}
		return nil
	}
	// /fsfreeze logs once the filesystem is frozen.
	within(t, 10*time.Second, "/fsfreeze", func() error { return post("/fsfreeze") })
	within(t, 10*time.Second, "a Start (which logs) and /fsthaw", func() error {
		if out, code, err := runSh(e, "echo logged"); err != nil || code != 0 || out != "logged\n" {
			return fmt.Errorf("start: %q %d %v", out, code, err)
		}
		return post("/fsthaw")
	})
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["message"] == "filesystem thawed" {
			n, _ := rec["log_lines_dropped"].(float64)
			found = n >= 2 // the process's start and end lines at least
		}
	}
	if !found {
		t.Fatalf("no thaw line counting the dropped log lines in %s:\n%s", logFile, b)
	}
}

// /collapse answers with counts that add up; a pass whose client goes away
// mid-way leaves envd serving.
func TestCollapse_CountsAndCancellation(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	resp, body := cpPost(t, e, "/collapse", nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("/collapse → %d %q", resp.StatusCode, body)
	}
	var r struct {
		AlreadyHuge, Chunks, Collapsed, ElapsedMs, Regions, Skipped *int
	}
	if err := json.Unmarshal(body, &r); err != nil || r.AlreadyHuge == nil || r.Chunks == nil || r.Collapsed == nil || r.ElapsedMs == nil || r.Regions == nil || r.Skipped == nil {
		t.Fatalf("CollapseResult %q: %v", body, err)
	}
	want := `{"alreadyHuge":`
	if !strings.HasPrefix(string(body), want) || !strings.Contains(string(body), `,"chunks":`) || !strings.HasSuffix(string(body), "}\n") {
		t.Fatalf("CollapseResult shape %q", body)
	}
	if *r.Regions == 0 || *r.Chunks != *r.Collapsed+*r.AlreadyHuge+*r.Skipped {
		t.Fatalf("counts do not add up: %s", body)
	}
	// Clients that give up at once or after a few milliseconds, before or
	// during the pass (the server side of a pass cut short is covered by
	// internal/hugepage's tests): envd goes on serving.
	abandoned := 0
	for ms := 0; ms <= 40; ms += 2 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(ms)*time.Millisecond)
		req, _ := http.NewRequestWithContext(ctx, "POST", e.URL+"/collapse", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		} else if errors.Is(err, context.DeadlineExceeded) {
			abandoned++
		}
		cancel()
	}
	if abandoned == 0 {
		t.Fatal("no /collapse was abandoned by its client")
	}
	if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("/health after cancelled collapses → %d", resp.StatusCode)
	}
	if resp, body := cpPost(t, e, "/collapse", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("/collapse after cancelled ones → %d %q", resp.StatusCode, body)
	}
	ev := procRun(t, e.Process(), connect.NewRequest(&pb.StartRequest{Process: procSh("echo ok")}))
	wantEnd(t, ev, 0, true, "exit status 0")
}
