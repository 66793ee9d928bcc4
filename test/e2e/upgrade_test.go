package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// Live self-upgrade (spec control-plane.md §8) end to end: envd as PID 1
// replaces itself with another build of itself, over POST /upgrade.

// tokenHdr is the access token header.
func tokenHdr(tok string) map[string]string { return map[string]string{"X-Access-Token": tok} }

// runAs runs a shell script through the API with the token and returns
// its stdout and the started process's pid.
func runAs(t *testing.T, u *upEnvd, tok, script string) (string, int32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := lcDrain(lcStart(t, ctx, u.Envd, &pb.StartRequest{Process: procSh(script)}, "X-Access-Token", tok))
	if r.end == nil {
		t.Fatalf("%q: no end event (%v)", script, r.err)
	}
	return r.stdout.String(), r.end.GetExitCode()
}

// childFDs starts a process that sleeps and returns the descriptors it
// has open, seen from outside: only 0, 1 and 2 may be there — nothing envd
// inherited or carried leaks into a child.
func childFDs(t *testing.T, u *upEnvd, tok string) []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newProcReader[pb.StartResponse, *pb.StartResponse](lcStart(t, ctx, u.Envd, &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sleep", Args: []string{"30"}}}, "X-Access-Token", tok))
	if !r.next() {
		t.Fatal("no start event")
	}
	pid := int(r.ev.pid)
	defer syscall.Kill(-pid, syscall.SIGKILL)
	hostPid := hostPID(t, u, pid)
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", hostPid))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", hostPid, e.Name()))
		out = append(out, e.Name()+"->"+link)
	}
	sort.Strings(out)
	return out
}

// hostPID maps a pid of envd's namespace to the host's (NSpid in
// /proc/<pid>/status of envd's children).
func hostPID(t *testing.T, u *upEnvd, nsPid int) int {
	t.Helper()
	var found int
	lcWait(t, fmt.Sprintf("the host pid of %d", nsPid), func() bool {
		for _, c := range children(u.pid) {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.pid))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
					f := strings.Fields(v)
					if len(f) == 2 && f[1] == strconv.Itoa(nsPid) {
						found = c.pid
						return true
					}
				}
			}
		}
		return false
	})
	return found
}

func onlyStdio(t *testing.T, what string, fds []string) {
	t.Helper()
	if len(fds) != 3 || !strings.HasPrefix(fds[0], "0->") || !strings.HasPrefix(fds[1], "1->") || !strings.HasPrefix(fds[2], "2->") {
		t.Fatalf("%s: a new process has descriptors %v, want only 0, 1 and 2", what, fds)
	}
}

// An upgrade to another build carries the whole /init state: token,
// environment, defaults, the CA bundle record (the same bundle is not
// appended twice), the stale-request guard, the hyperloop address, the NFS
// ledger (the volume is not mounted again). The /upgrade connection closes
// without a response; connections opened meanwhile wait and are served by
// the new image, none is refused; the new image gates every route but
// /health and /init until an /init, whose responses carry X-Envd-Handover.
func TestUpgrade_CarriesInitStateAndGates(t *testing.T) {
	a, b := upBinaries(t)
	binB := readFile(t, b)
	helpers := lcScratch(t)
	// mount -v -t nfs -o <opts> <target> <path>: logs itself, exits with
	// the number at the end of the target.
	writeScript(t, filepath.Join(helpers, "mount"), `echo "$7" >> `+filepath.Join(helpers, "mounts.log")+`; exit ${6##*-}`)
	user := envdtest.EnsureUser(t, "envd-upgrade")
	u := startUpgradable(t, upOptions{Options: envdtest.Options{Bin: a, Env: []string{"PATH=" + helpers + ":" + os.Getenv("PATH")}}})
	versionA := u.health()
	if versionA == upVersionB {
		t.Fatalf("build A reports B's version %s", versionA)
	}

	const tok = "upgrade-token-1"
	ca := "-----BEGIN CERTIFICATE-----\nUPGRADE-TEST-CA\n-----END CERTIFICATE-----\n"
	ts := time.Now().UTC()
	state := map[string]any{
		"accessToken": tok, "envVars": map[string]string{"UP_VAR": "carried"},
		"defaultUser": user.Name, "defaultWorkdir": user.Home, "caBundle": ca,
		"timestamp": ts.Format(time.RFC3339Nano), "hyperloopIP": "10.9.8.7",
		"volumeMounts": []map[string]string{{"nfs_target": "srv:/vol-0", "path": "/tmp/vol"}}, "lifecycleID": "life-1",
	}
	if resp, h := u.initOK(state); resp.Header.Get("X-Envd-Handover") != "" || h != (handover{}) {
		t.Fatal("X-Envd-Handover on an envd that did not start from a handover")
	}
	lcWait(t, "the hyperloop address applied", func() bool {
		_, b := do(t, "GET", u.URL+"/envs", nil, tokenHdr(tok))
		return strings.Contains(string(b), `"WRENN_EVENTS_ADDRESS":"http://10.9.8.7"`)
	})
	if got := strings.Count(string(readFile(t, filepath.Join(helpers, "mounts.log"))), "/tmp/vol"); got != 1 {
		t.Fatalf("mounted %d times before the upgrade", got)
	}

	storm := startDialStorm(u.URL, 8)
	time.Sleep(100 * time.Millisecond)
	end := u.swap(binB, tok)
	time.Sleep(300 * time.Millisecond)
	results := storm.end()
	if n := storm.refused.Load(); n != 0 {
		t.Fatalf("%d connections to envd's port were refused during the upgrade", n)
	}
	waited, cut := 0, 0
	for _, r := range results {
		switch {
		case r.err == nil && r.version == upVersionB && r.connected.Before(end):
			waited++ // connected before the old image was gone, served by the new one
		case r.err != nil && (errors.Is(r.err, io.EOF) || errors.Is(r.err, io.ErrUnexpectedEOF) || errors.Is(r.err, syscall.ECONNRESET)):
			cut++ // accepted by the old image just before it stopped accepting
		case r.err != nil:
			t.Fatalf("a connection during the upgrade: %v", r.err)
		}
	}
	t.Logf("dial storm: %d requests, %d waited through the swap, %d cut by the exec", len(results), waited, cut)
	if waited == 0 {
		t.Fatal("no connection opened during the swap was served by the new image")
	}
	if v := u.health(); v != upVersionB {
		t.Fatalf("/health after the upgrade: %s, want %s", v, upVersionB)
	}
	if !strings.Contains(u.Log(), "commit="+upCommitB) || !strings.Contains(u.Log(), "envd resumed after handover") {
		t.Fatalf("the new image did not start from the handover:\n%s", u.Log())
	}
	if link, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", u.pid)); !strings.HasSuffix(link, "/usr/bin/envd.next") {
		t.Fatalf("PID 1 runs %s", link)
	}
	u.nothingStaged("after the swap", true)

	// The gate, before and regardless of the token.
	u.gated(tokenHdr(tok))
	u.gated(nil)
	resp, body := u.init(map[string]any{"accessToken": "wrong"})
	if resp.StatusCode != http.StatusUnauthorized || string(body) != "access token validation failed" {
		t.Fatalf("/init with a wrong token → %d %q", resp.StatusCode, body)
	}
	parseHandover(t, resp)
	u.gated(tokenHdr(tok))

	same := map[string]any{
		"accessToken": tok, "caBundle": ca, "timestamp": ts.Add(time.Second).Format(time.RFC3339Nano),
		"volumeMounts": []map[string]string{{"nfs_target": "srv:/vol-0", "path": "/tmp/vol"}}, "lifecycleID": "life-1",
	}
	resp, h := u.initOK(same)
	if h != (handover{}) || resp.Header.Get("X-Envd-Version") != upVersionB {
		t.Fatalf("/init after the upgrade: %+v, X-Envd-Version %q", h, resp.Header.Get("X-Envd-Version"))
	}
	// Every later /init response carries the header too.
	resp, _ = u.init(map[string]any{"accessToken": tok, "timestamp": ts.Add(-time.Hour).Format(time.RFC3339Nano)})
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("X-Envd-Init") != "stale" {
		t.Fatalf("an /init older than the carried guard timestamp: %d, X-Envd-Init %q", resp.StatusCode, resp.Header.Get("X-Envd-Init"))
	}
	parseHandover(t, resp)

	bundle := string(readFile(t, filepath.Join(u.dir, "certs", "ca-certificates.crt")))
	if n := strings.Count(bundle, "UPGRADE-TEST-CA"); n != 1 || !strings.HasPrefix(bundle, "SYSTEM-CA\n") {
		t.Fatalf("the CA bundle holds %d copies:\n%s", n, bundle)
	}
	if got := strings.Count(string(readFile(t, filepath.Join(helpers, "mounts.log"))), "/tmp/vol"); got != 1 {
		t.Fatalf("the carried NFS volume was mounted again (%d mounts)", got)
	}
	if hosts := string(readFile(t, filepath.Join(u.dir, "hosts"))); hosts != "127.0.0.1\tlocalhost\n10.9.8.7\tevents.wrenn.local\n" {
		t.Fatalf("/etc/hosts:\n%s", hosts)
	}
	resp, body = do(t, "GET", u.URL+"/envs", nil, tokenHdr(tok))
	var envs map[string]string
	must(t, json.Unmarshal(body, &envs))
	if resp.StatusCode != http.StatusOK || envs["UP_VAR"] != "carried" || envs["WRENN_EVENTS_ADDRESS"] != "http://10.9.8.7" || envs["WRENN_SANDBOX"] != "false" {
		t.Fatalf("/envs after the upgrade: %d %v", resp.StatusCode, envs)
	}
	resp, body = do(t, "GET", u.URL+"/envs", nil, nil)
	jsonError(t, resp, body, http.StatusUnauthorized, "unauthorized access, please provide a valid access token or method signing if supported")

	// Helper programs keep their exact exit codes in the new image.
	resp, body = u.init(map[string]any{"accessToken": tok, "volumeMounts": []map[string]string{{"nfs_target": "srv:/vol-7", "path": "/tmp/vol7"}}})
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "mount srv:/vol-7 on /tmp/vol7: exit status 7") {
		t.Fatalf("a failing mount helper after the upgrade: %d %q", resp.StatusCode, body)
	}
	parseHandover(t, resp)

	out, code := runAs(t, u, tok, "id -un; pwd; echo $UP_VAR")
	if code != 0 || out != user.Name+"\n"+user.Home+"\ncarried\n" {
		t.Fatalf("a process after the upgrade: exit %d, %q", code, out)
	}
	onlyStdio(t, "after a handover", childFDs(t, u, tok))
}

// busyInGroup starts a busy loop that is not envd's (a workload the image
// started, say) in the cgroup dir and returns its pid.
func busyInGroup(t *testing.T, dir string) int {
	t.Helper()
	_, pid := testCgroupAt(t, dir)
	return pid
}

// testCgroupAt puts a busy loop into the existing cgroup dir; it is
// killed at the end of the test.
func testCgroupAt(t *testing.T, dir string) (string, int) {
	t.Helper()
	cmd := exec.Command("sh", "-c", "while :; do :; done")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	return dir, cmd.Process.Pid
}

// The upgrade freezes the workload in user and ptys; the new image keeps
// it frozen until the /init that lifts the gate thaws it (§8.14).
func TestUpgrade_WorkloadFrozenUntilInit(t *testing.T) {
	a, _ := upBinaries(t)
	u := startUpgradable(t, upOptions{Options: envdtest.Options{Bin: a}})
	u.initOK(nil)
	user := filepath.Join(u.root, "user")
	busy := busyInGroup(t, user)
	running(t, busy, "before the upgrade")
	u.swap(readFile(t, a), "")
	if !cgOwn(t, user) || !cgOwn(t, filepath.Join(u.root, "ptys")) {
		t.Fatal("the static groups are not frozen after the swap")
	}
	stopped(t, busy, "after the swap, before /init")
	u.gated(nil)
	stopped(t, busy, "behind the gate")
	_, h := u.initOK(nil)
	if h.Failed {
		t.Fatal("the handover failed")
	}
	running(t, busy, "after /init")
	if cgOwn(t, user) {
		t.Fatal("user still frozen after /init")
	}
}

// Without an /init the post-handover fallback thaws the workload after its
// window (ENVD_TEST_HANDOVER_FALLBACK_MS shortens the 60 s); the gate stays.
func TestUpgrade_FallbackThawsWithoutInit(t *testing.T) {
	a, _ := upBinaries(t)
	u := startUpgradable(t, upOptions{Options: envdtest.Options{Bin: a, Env: []string{"ENVD_TEST_HANDOVER_FALLBACK_MS=2500"}}})
	u.initOK(nil)
	busy := busyInGroup(t, filepath.Join(u.root, "user"))
	swapped := time.Now()
	u.swap(nil, "") // a re-exec of the running binary
	stopped(t, busy, "inside the fallback window")
	running(t, busy, "after the fallback window")
	if d := time.Since(swapped); d < 2500*time.Millisecond {
		t.Fatalf("thawed %v after the swap, before the 2.5 s window", d)
	}
	if !strings.Contains(u.Log(), "post-upgrade /init did not arrive; thawing workload as fallback") {
		t.Fatalf("no fallback warning:\n%s", u.Log())
	}
	u.gated(nil)
	u.initOK(nil)
}

// frozenNever fails if envd ever froze a static group (the freeze log line
// is the record of every freeze).
func (u *upEnvd) frozenNever(what string) {
	u.t.Helper()
	if cgOwn(u.t, filepath.Join(u.root, "user")) || strings.Contains(u.Log(), "[freezer] freeze ") {
		u.t.Fatalf("%s: the workload was frozen:\n%s", what, u.Log())
	}
}

// Every refusal of §8.3 and §8.10, in admission order, each with nothing
// frozen, nothing staged and PID 1 serving.
func TestUpgrade_Refusals(t *testing.T) {
	a, _ := upBinaries(t)
	old := oldEnvd(t)
	u := startUpgradable(t, upOptions{Options: envdtest.Options{Bin: a}})
	binA := readFile(t, a)

	resp, _ := do(t, "GET", u.URL+"/upgrade", nil, nil)
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET /upgrade → %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	u.refused(binA, nil, http.StatusConflict, "envd not initialized")
	u.refused(nil, nil, http.StatusConflict, "envd not initialized")

	const tok = "refusal-token"
	u.initOK(map[string]any{"accessToken": tok})
	hdr := tokenHdr(tok)
	r := u.postUpgrade(binA, nil)
	if r.closed || r.status != http.StatusUnauthorized {
		t.Fatalf("without the token: %+v", r)
	}
	u.refused(binA, map[string]string{"X-Access-Token": tok, "X-Envd-Upgrade-Bin": "/usr/local/bin/envd"}, http.StatusBadRequest, "unsupported upgrade target")

	// A body that is still arriving holds the upgrade in progress.
	c := dialRaw(t, u.URL)
	fmt.Fprintf(c, "POST /upgrade HTTP/1.1\r\nHost: envd\r\nX-Access-Token: %s\r\nContent-Length: %d\r\n\r\n", tok, len(binA))
	_, err := c.Write(binA[:4096])
	must(t, err)
	lcWait(t, "the staging file", func() bool { return len(u.usrBin(".envd.next.")) == 1 })
	u.refused(binA, hdr, http.StatusConflict, "upgrade already in progress")
	c.Close() // the body ends early: the staging file goes, nothing is answered
	lcWait(t, "the cut-off upload's staging file removed", func() bool { return len(u.usrBin(".envd.next.")) == 0 })

	cpStatus(t, u.Envd, "/snapshot/prepare", http.StatusNoContent)
	u.refused(binA, hdr, http.StatusConflict, "envd is prepared for a snapshot")
	u.health() // recovery

	// Over 512 MiB: declared, and streamed without a declared length.
	dc := dialRaw(t, u.URL)
	fmt.Fprintf(dc, "POST /upgrade HTTP/1.1\r\nHost: envd\r\nX-Access-Token: %s\r\nContent-Length: %d\r\n\r\n", tok, 512<<20+1)
	resp, err = http.ReadResponse(dc.br, nil)
	if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("a declared body over 512 MiB: %v %v", resp, err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "upgrade binary too large\n" {
		t.Fatalf("a declared body over 512 MiB: %q", b)
	}
	resp.Body.Close()
	if !dc.closedByPeer(5 * time.Second) {
		t.Fatal("the connection stays open after the 413")
	}
	sc := dialRaw(t, u.URL)
	resp, body, err := rawExchange(sc, "POST", "/upgrade", hdr, io.LimitReader(zeros{}, 512<<20+1), 0, true, 120*time.Second)
	if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge || string(body) != "upgrade binary too large\n" {
		t.Fatalf("a streamed body over 512 MiB: %v %v %q", resp, err, body)
	}
	if !sc.closedByPeer(5 * time.Second) {
		t.Fatal("the connection stays open after the 413")
	}
	u.nothingStaged("after the 413", false)

	// Candidates that cannot take over: refused by the probe (§8.5).
	dir := lcScratch(t)
	for _, c := range []struct{ name, body, msg string }{
		{"/bin/true", "", "incompatible upgrade binary: not a version: \"true (GNU coreutils)"},
		{"a shell script", "#!/bin/sh\necho hello\n", `incompatible upgrade binary: not a version: "hello"`},
		{"an old envd", "", "incompatible upgrade binary: no handover-schema line"},
		{"a binary that exits at once", "#!/bin/sh\nexit 3\n", "incompatible upgrade binary: exit status 3"},
		{"a binary that crashes in the probe", "#!/bin/sh\nkill -SEGV $$\n", "incompatible upgrade binary: signal: segmentation fault"},
		{"an empty body", "", "incompatible upgrade binary: exec format error"},
	} {
		var b []byte
		switch c.name {
		case "/bin/true":
			b = readFile(t, "/bin/true")
		case "an old envd":
			b = readFile(t, old)
		case "an empty body":
			// Chunked and empty: a body, which is staged (and fails).
			sc := dialRaw(t, u.URL)
			resp, body, err := rawExchange(sc, "POST", "/upgrade", hdr, strings.NewReader(""), 0, true, 30*time.Second)
			if err != nil || resp.StatusCode != http.StatusInternalServerError || string(body) != c.msg+"\n" {
				t.Fatalf("%s: %v %v %q", c.name, resp, err, body)
			}
			continue
		default:
			b = []byte(c.body)
		}
		_ = dir
		u.refused(b, hdr, http.StatusInternalServerError, c.msg)
		u.nothingStaged(c.name, false)
	}
	u.frozenNever("after the refusals")

	// A process the record cannot carry yet refuses the upgrade after the
	// freeze; everything is rolled back and the process keeps running.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	proc := newProcReader[pb.StartResponse, *pb.StartResponse](lcStart(t, ctx, u.Envd, &pb.StartRequest{Process: procSh("while :; do sleep 0.05; done")}, "X-Access-Token", tok))
	if !proc.next() {
		t.Fatal("no start event")
	}
	u.refused(binA, hdr, http.StatusInternalServerError, "handover aborted: processes: 1 running processes and 0 retained exits are not carried across an upgrade yet")
	if cgOwn(t, filepath.Join(u.root, "user")) {
		t.Fatal("user still frozen after the rollback")
	}
	if st, ok := readStat(hostPID(t, u, int(proc.ev.pid))); !ok || st.state == 'Z' {
		t.Fatal("the process did not survive the rolled-back upgrade")
	}
	if !strings.Contains(u.Log(), "upgrade rolled back; the old image keeps serving") {
		t.Fatalf("no rollback warning:\n%s", u.Log())
	}
	u.nothingStaged("after the rollback", true) // the probed binary stays (harmless, §8.9)

	// A read-only /usr/bin: the staging error, as text.
	remount := func(mode string) {
		if out, err := exec.Command("nsenter", "-t", strconv.Itoa(u.pid), "-m", "--", "mount", "-o", "remount,"+mode, "/usr/bin").CombinedOutput(); err != nil {
			t.Fatalf("remount %s: %v %s", mode, err, out)
		}
	}
	remount("ro")
	r = u.postUpgrade(binA, hdr)
	remount("rw")
	if r.closed || r.status != http.StatusInternalServerError || !strings.HasPrefix(r.body, "open /usr/bin/.envd.next.") || !strings.HasSuffix(r.body, ": read-only file system\n") {
		t.Fatalf("a read-only /usr/bin: %+v", r)
	}
}

// zeros is an endless stream of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// The locks of §1.3 are taken within 5 s or the upgrade gives up (an /init
// still reading its body holds the init lock), and a workload that cannot
// be frozen within 2 s (a process in user blocked in an uninterruptible
// write) aborts it: both roll back, everything thawed and serving, and the
// next upgrade succeeds.
func TestUpgrade_BusyAndUnsettledFreezeRollBack(t *testing.T) {
	a, _ := upBinaries(t)
	u := startUpgradable(t, upOptions{Options: envdtest.Options{Bin: a}})
	u.initOK(nil)
	binA := readFile(t, a)

	// An /init whose body (too large to be read before the lock) trickles
	// in holds the init lock.
	slow := dialRaw(t, u.URL)
	fmt.Fprintf(slow, "POST /init HTTP/1.1\r\nHost: envd\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", 100<<10)
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	u.refused(binA, nil, http.StatusInternalServerError, "handover aborted: envd busy")
	if d := time.Since(start); d < 5*time.Second || d > 9*time.Second {
		t.Fatalf("gave up after %v, want the 5 s budget", d)
	}
	slow.Close()
	u.frozenNever("after giving up on the locks")

	mnt := scratchExt4(t)
	must(t, fsIoctl(mnt, true))
	user := filepath.Join(u.root, "user")
	writer := exec.Command("sh", "-c", `read go; echo stuck > "$1"`, "sh", filepath.Join(mnt, "f"))
	stdin, err := writer.StdinPipe()
	must(t, err)
	must(t, writer.Start())
	t.Cleanup(func() { _ = fsIoctl(mnt, false); writer.Process.Kill(); writer.Wait() })
	must(t, os.WriteFile(filepath.Join(user, "cgroup.procs"), []byte(strconv.Itoa(writer.Process.Pid)), 0))
	fmt.Fprintln(stdin, "go")
	lcWait(t, "the writer blocked in D state", func() bool {
		st, ok := readStat(writer.Process.Pid)
		return ok && st.state == 'D'
	})
	start = time.Now()
	u.refused(binA, nil, http.StatusInternalServerError, "handover aborted: freeze workload: workload was not frozen before the handover")
	if d := time.Since(start); d < 2*time.Second {
		t.Fatalf("gave up on the freeze after %v, before the 2 s settle budget", d)
	}
	if cgOwn(t, user) || cgOwn(t, filepath.Join(u.root, "ptys")) {
		t.Fatal("the rollback did not thaw the static groups")
	}
	must(t, fsIoctl(mnt, false))
	done := make(chan error, 1)
	go func() { done <- writer.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the writer: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the writer never finished after the thaw")
	}
	// Nothing of the two rollbacks stays in the way.
	u.swap(binA, "")
	if _, h := u.initOK(nil); h.Failed {
		t.Fatal("the upgrade after the rollbacks failed")
	}
}

// A record the new image cannot decode (the test-only
// ENVD_TEST_HANDOVER_CORRUPT makes the outgoing side write garbage) fails
// the handover as a whole (§8.16): the new image serves anyway, on a port
// it binds anew, thaws the workload at once, closes every inherited
// descriptor, reports "failed":true, and gates like after any handover.
func TestUpgrade_CorruptRecordFailsSafely(t *testing.T) {
	a, b := upBinaries(t)
	u := startUpgradable(t, upOptions{Options: envdtest.Options{Bin: a, Env: []string{"ENVD_TEST_HANDOVER_CORRUPT=1"}}})
	const tok = "corrupt-token"
	u.initOK(map[string]any{"accessToken": tok})
	busy := busyInGroup(t, filepath.Join(u.root, "user"))
	if r := u.postUpgrade(readFile(t, b), tokenHdr(tok)); !r.closed {
		t.Fatalf("/upgrade answered %d %q", r.status, r.body)
	}
	// Without the record the listener is not adopted: the new image binds
	// anew, and what waited in the old socket's backlog is lost (the
	// orchestrator retries).
	lcWait(t, "the new image serving", func() bool {
		resp, err := http.Get(u.URL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if v := u.health(); v != upVersionB {
		t.Fatalf("the new image does not serve: /health %s", v)
	}
	if !strings.Contains(u.Log(), "envd resumed after handover") || !strings.Contains(u.Log(), "failed=true") {
		t.Fatalf("no failed-handover line:\n%s", u.Log())
	}
	running(t, busy, "after a failed handover, before any /init")
	u.gated(nil)
	// The token was lost with the record: first-time setup rules apply.
	resp, h := u.initOK(nil)
	if !h.Failed || h != (handover{Failed: true}) {
		t.Fatalf("X-Envd-Handover %q", resp.Header.Get("X-Envd-Handover"))
	}
	onlyStdio(t, "after a failed handover", childFDs(t, u, ""))
	// Nothing inherited stays open in envd either: its descriptors are its
	// own (standard streams, listener, poller, cgroup and runtime files).
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", u.pid))
	must(t, err)
	for _, e := range entries {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", u.pid, e.Name()))
		if strings.Contains(link, "memfd:envd-handover") {
			t.Fatalf("the memory file is still open in envd: fd %s", e.Name())
		}
	}
}

// A → B → A with an /init between, then a re-exec with an empty body:
// each new image hands over again (§8.17); descriptors keep their numbers
// and nothing piles up. With the no-op cgroup manager (--no-cgroups) the
// freeze is unobservable, which the strict freeze accepts.
func TestUpgrade_ChainedAndReExec(t *testing.T) {
	a, b := upBinaries(t)
	binA, binB := readFile(t, a), readFile(t, b)
	u := startUpgradable(t, upOptions{Options: envdtest.Options{Bin: a}, NoCgroups: true})
	const tok = "chain-token"
	u.initOK(map[string]any{"accessToken": tok, "envVars": map[string]string{"CHAIN": "1"}})
	versionA := u.health()
	for i, step := range []struct {
		body    []byte
		version string
	}{{binB, upVersionB}, {binA, versionA}, {nil, versionA}, {binB, upVersionB}} {
		// Before the /init of the previous step the next upgrade waits.
		u.swap(step.body, tok)
		u.refused(binA, tokenHdr(tok), http.StatusUnauthorized, `{"code":401,"message":"envd not initialized"}`)
		if v := u.health(); v != step.version {
			t.Fatalf("step %d: /health %s, want %s", i, v, step.version)
		}
		resp, h := u.initOK(map[string]any{"accessToken": tok})
		if h.Failed || resp.Header.Get("X-Envd-Version") != step.version {
			t.Fatalf("step %d: %+v, X-Envd-Version %q", i, h, resp.Header.Get("X-Envd-Version"))
		}
		_, body := do(t, "GET", u.URL+"/envs", nil, tokenHdr(tok))
		if !strings.Contains(string(body), `"CHAIN":"1"`) {
			t.Fatalf("step %d: /envs %s", i, body)
		}
	}
	if n := strings.Count(u.Log(), "envd resumed after handover"); n != 4 {
		t.Fatalf("%d handovers logged, want 4", n)
	}
}

// orphans makes n orphans in envd's PID namespace: short-lived processes
// whose parent exits at once, so that envd (its init) inherits them; each
// exits after up to half a second.
func (u *upEnvd) orphans(n int) {
	u.t.Helper()
	script := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do ( sleep 0.$(( i %% 5 ))$(( i %% 9 )); exit $(( i %% 7 )) ) </dev/null >/dev/null 2>&1 & i=$((i+1)); done`, n)
	if out, err := exec.Command("nsenter", "-t", strconv.Itoa(u.pid), "-p", "--", "sh", "-c", script).CombinedOutput(); err != nil {
		u.t.Fatalf("nsenter: %v %s", err, out)
	}
}

// Orphans that exit while envd replaces itself are reaped by the new image
// (its first pass runs at once; the old one stopped reaping at its spawn
// lock), and helper programs keep their exact exit codes around them.
func TestUpgrade_OrphansReapedAcrossTheExec(t *testing.T) {
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Fatalf("nsenter is required for this test (util-linux): %v", err)
	}
	a, b := upBinaries(t)
	binA, binB := readFile(t, a), readFile(t, b)
	u := startUpgradable(t, upOptions{Options: envdtest.Options{Bin: a, Args: []string{"--verbose"}}})
	u.initOK(nil)
	dir := lcScratch(t)
	exit3 := filepath.Join(dir, "exit3")
	writeScript(t, exit3, "exit 3")
	for round, body := range [][]byte{binB, binA, nil} {
		u.orphans(40)
		if len(children(u.pid)) == 0 {
			t.Fatal("no orphan was reparented to envd")
		}
		// A probe among exiting orphans reports its own status.
		u.refused(readFile(t, exit3), nil, http.StatusInternalServerError, "incompatible upgrade binary: exit status 3")
		u.orphans(40)
		u.swap(body, "")
		u.initOK(nil)
		lcWait(t, fmt.Sprintf("round %d: every orphan reaped", round), func() bool {
			return len(zombies(u.pid)) == 0 && len(children(u.pid)) == 0
		})
	}
	if !strings.Contains(u.Log(), "reaped orphan") {
		t.Fatal("no orphan was reaped by envd")
	}
}

// lastInt is the value of key=N in the last log line containing msg.
func lastInt(t *testing.T, log, msg, key string) int {
	t.Helper()
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if !strings.Contains(lines[i], msg) {
			continue
		}
		for _, f := range strings.Fields(lines[i]) {
			if v, ok := strings.CutPrefix(f, key+"="); ok {
				n, err := strconv.Atoi(v)
				if err == nil {
					return n
				}
			}
		}
	}
	t.Fatalf("no %s= in a %q line", key, msg)
	return 0
}

// Twenty upgrades in a row (A, B and re-execs) and twenty rolled-back ones
// leave envd's memory, descriptors, threads and goroutines flat (generous
// ceilings: a fresh image starts at its own baseline, and the old one
// must not keep anything of an upgrade that did not happen).
func TestUpgrade_TwentyCyclesFlat(t *testing.T) {
	a, b := upBinaries(t)
	bodies := [][]byte{readFile(t, b), readFile(t, a), nil}
	u := startUpgradable(t, upOptions{Options: envdtest.Options{Bin: a}})
	const tok = "cycles-token"
	u.initOK(map[string]any{"accessToken": tok})
	type sample struct{ rss, fds, threads, goroutines int64 }
	measure := func(msg string) sample {
		return sample{rss: u.statusField("VmRSS"), fds: int64(u.fds()), threads: u.statusField("Threads"),
			goroutines: int64(lastInt(t, u.Log(), msg, "goroutines"))}
	}
	var swaps []sample
	for i := 0; i < 20; i++ {
		u.swap(bodies[i%3], tok)
		if _, h := u.initOK(map[string]any{"accessToken": tok}); h.Failed {
			t.Fatalf("cycle %d failed", i)
		}
		swaps = append(swaps, measure("envd resumed after handover"))
	}
	// Rollbacks in one image: a live process refuses each upgrade at the
	// export, after the freeze.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	proc := newProcReader[pb.StartResponse, *pb.StartResponse](lcStart(t, ctx, u.Envd, &pb.StartRequest{Process: procSh("sleep 300")}, "X-Access-Token", tok))
	if !proc.next() {
		t.Fatal("no start event")
	}
	var rollbacks []sample
	for i := 0; i < 20; i++ {
		u.refused(bodies[i%2], tokenHdr(tok), http.StatusInternalServerError, "handover aborted: processes:")
		rollbacks = append(rollbacks, measure("upgrade rolled back"))
	}
	t.Logf("after each upgrade: %+v", swaps)
	t.Logf("after each rollback: %+v", rollbacks)
	for name, ss := range map[string][]sample{"upgrades": swaps, "rollbacks": rollbacks} {
		first := ss[0]
		for i, s := range ss {
			if s.rss > first.rss*3/2+32<<10 || s.fds > first.fds+4 || s.threads > max(first.threads*2, first.threads+8) || s.goroutines > first.goroutines+10 {
				t.Fatalf("%s: sample %d %+v grew from %+v", name, i, s, first)
			}
		}
	}
	if z := zombies(u.pid); len(z) > 0 {
		t.Fatalf("zombies left: %v", z)
	}
}

// In Firecracker mode (a network namespace, a fake MMDS): an upgrade from
// inside the guest is refused and stages nothing; the root filesystem
// frozen by /fsfreeze refuses it (409) until /fsthaw; the MMDS ids and the
// finished boot poll are carried (the new image does not poll before its
// /init); forwarding stops for the swap and the new image forwards the
// loopback service again.
func TestUpgrade_FirecrackerMode(t *testing.T) {
	a, b := upBinaries(t)
	mnt := scratchExt4(t)
	ns, u := startUpgradableFC(t, upOptions{Options: envdtest.Options{Bin: a, Env: []string{"ENVD_TEST_FSFREEZE_TARGET=" + mnt}}})
	t.Cleanup(func() { _ = fsIoctl(mnt, false) })
	u.initOK(nil)
	lcWait(t, "the MMDS ids", func() bool {
		_, body := do(t, "GET", u.URL+"/envs", nil, nil)
		return strings.Contains(string(body), `"WRENN_SANDBOX_ID":"sbx-cp"`)
	})
	ln := ns.listen(t, "tcp4", "127.0.0.1:0")
	greet(ln, "forwarded")
	addr := ns.nsIP + ":" + lnPort(ln)
	reach(t, addr, "forwarded")

	resp, body := ns.guestDo(t, "127.0.0.1:"+strconv.Itoa(u.Port), "POST", "/upgrade", map[string]string{"Content-Length": "0"}, "")
	jsonError(t, resp, body, http.StatusForbidden, "not allowed from inside the sandbox")

	binB := readFile(t, b)
	cpStatus(t, u.Envd, "/fsfreeze", http.StatusNoContent)
	u.refused(binB, nil, http.StatusConflict, "root filesystem is frozen")
	cpStatus(t, u.Envd, "/fsthaw", http.StatusNoContent)
	u.nothingStaged("after the refusals", false)
	u.frozenNeverFC("after the refusals")

	polls := strings.Count(u.Log(), "metadata read")
	u.swap(binB, "")
	time.Sleep(500 * time.Millisecond)
	if n := strings.Count(u.Log(), "metadata read"); n != polls {
		t.Fatalf("the new image polled MMDS before its /init (%d → %d reads)", polls, n)
	}
	u.gated(nil)
	_, h := u.initOK(nil)
	if h.Failed {
		t.Fatal("the handover failed")
	}
	_, body = do(t, "GET", u.URL+"/envs", nil, nil)
	if !strings.Contains(string(body), `"WRENN_SANDBOX_ID":"sbx-cp"`) || !strings.Contains(string(body), `"WRENN_SANDBOX":"true"`) {
		t.Fatalf("/envs after the upgrade: %s", body)
	}
	reach(t, addr, "forwarded")
}

// frozenNeverFC is frozenNever for JSON logs.
func (u *upEnvd) frozenNeverFC(what string) {
	u.t.Helper()
	if cgOwn(u.t, filepath.Join(u.root, "user")) || logRecord(u.Log(), "freeze", map[string]any{"logger": "freezer"}) {
		u.t.Fatalf("%s: the workload was frozen", what)
	}
}

var (
	ctlOnce sync.Once
	ctlPath string
	ctlErr  error
)

// envdctlBin builds the operator's CLI once per test process.
func envdctlBin(t *testing.T) string {
	t.Helper()
	ctlOnce.Do(func() {
		root, err := envdtest.RepoRoot()
		if err != nil {
			ctlErr = err
			return
		}
		dir, err := os.MkdirTemp("", "envdctl-e2e-")
		if err != nil {
			ctlErr = err
			return
		}
		ctlPath = filepath.Join(dir, "envdctl")
		cmd := exec.Command("go", "build", "-o", ctlPath, "./cmd/envdctl")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			ctlErr = fmt.Errorf("go build envdctl: %v\n%s", err, out)
		}
	})
	if ctlErr != nil {
		t.Fatal(ctlErr)
	}
	return ctlPath
}

// envdctl upgrade BINARY against a real envd: the upload's progress bar
// on a terminal, the /init with the operator's token, the handover
// reported; an incompatible binary refused with envd's reason.
func TestUpgrade_Envdctl(t *testing.T) {
	a, b := upBinaries(t)
	u := startUpgradable(t, upOptions{Options: envdtest.Options{Bin: a}})
	const tok = "ctl-e2e-token"
	u.initOK(map[string]any{"accessToken": tok})
	ctl := envdctlBin(t)

	cmd := exec.Command(ctl, "--addr", u.URL, "--token", tok, "upgrade", b)
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: 120, Rows: 24})
	must(t, err)
	defer tty.Close()
	var out bytes.Buffer
	copied := make(chan struct{})
	go func() { io.Copy(&out, tty); close(copied) }()
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	select {
	case err := <-waitErr:
		if err != nil {
			t.Fatalf("envdctl upgrade: %v\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatal("envdctl upgrade did not finish")
	}
	tty.Close()
	<-copied
	text := out.String()
	want := "upgraded " + envdtest.Version(t) + " → " + upVersionB + ": 0 processes (0 failed), 0 retained exits (0 failed), 0 polling watchers (0 failed) carried"
	if !strings.Contains(text, "100%") || !strings.Contains(text, "] ") || !strings.Contains(text, want) {
		t.Fatalf("envdctl output %q, want a progress bar and %q", text, want)
	}
	// The gate is lifted (envdctl sent the /init), the token kept.
	if resp, body := do(t, "GET", u.URL+"/envs", nil, tokenHdr(tok)); resp.StatusCode != http.StatusOK {
		t.Fatalf("/envs after envdctl upgrade: %d %q", resp.StatusCode, body)
	}

	res := exec.Command(ctl, "--addr", u.URL, "--token", tok, "upgrade", "/bin/true")
	var stderr bytes.Buffer
	res.Stderr = &stderr
	err = res.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.HasPrefix(stderr.String(), "envdctl: upgrade refused, the running envd keeps serving: POST /upgrade: incompatible upgrade binary: ") {
		t.Fatalf("an incompatible binary: %v %q", err, stderr.String())
	}
	if v := u.health(); v != upVersionB {
		t.Fatalf("/health %s after the refusal", v)
	}
}

// An upload cut off by the exec leaves nothing behind: its staging file is
// in the record and the new image removes it (D9); the target never
// appears. An envd started with --cmd does not run it again.
func TestUpgrade_CutOffUploadAndCmd(t *testing.T) {
	a, _ := upBinaries(t)
	dir := lcScratch(t)
	cmdLog := filepath.Join(dir, "cmd.log")
	u := startUpgradable(t, upOptions{Options: envdtest.Options{Bin: a, Args: []string{"--cmd", "echo ran >> " + cmdLog}}})
	u.initOK(nil)
	lcWait(t, "the --cmd process", func() bool { return strings.Count(string(readFileMaybe(cmdLog)), "ran\n") == 1 })

	target := filepath.Join(dir, "upload.bin")
	c := dialRaw(t, u.URL)
	fmt.Fprintf(c, "POST /files?path=%s HTTP/1.1\r\nHost: envd\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", target, 1<<20)
	_, err := c.Write(make([]byte, 64<<10))
	must(t, err)
	staged := func() []string {
		m, _ := filepath.Glob(filepath.Join(dir, ".envd-tmp-*"))
		return m
	}
	lcWait(t, "the upload's staging file", func() bool { return len(staged()) == 1 })

	// The --cmd process ended, but its exit is retained for 30 s, which an
	// upgrade cannot carry yet: wait it out.
	binA := readFile(t, a)
	deadline := time.Now().Add(45 * time.Second)
	for {
		r := u.postUpgrade(binA, nil)
		if r.closed {
			break
		}
		if !strings.Contains(r.body, "retained exits are not carried") || time.Now().After(deadline) {
			t.Fatalf("/upgrade → %d %q", r.status, r.body)
		}
		time.Sleep(time.Second)
	}
	u.health()
	if m := staged(); len(m) != 0 {
		t.Fatalf("the cut-off upload's staging file is still there: %v", m)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the cut-off upload's target exists: %v", err)
	}
	u.initOK(nil)
	time.Sleep(500 * time.Millisecond)
	if n := strings.Count(string(readFileMaybe(cmdLog)), "ran\n"); n != 1 {
		t.Fatalf("--cmd ran %d times", n)
	}
}

func readFileMaybe(path string) []byte {
	b, _ := os.ReadFile(path)
	return b
}
