package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/envd/envd/internal/envdtest"
)

// Helpers for the live-upgrade tests (spec control-plane.md §8). envd runs
// as PID 1 of a new PID and mount namespace in which /usr/bin is a
// writable overlay of the machine's (so /usr/bin/envd.next is the test's
// own) and the files /init rewrites — /etc/hosts, the CA bundle and its
// local copy — are bind mounts of scratch files.

// Build B of the two builds an upgrade swaps between: it differs from the
// ordinary test build (A) in its stamped version and commit, so that
// /health tells which image serves.
const (
	upVersionB = "0.6.99"
	upCommitB  = "e2e-upgrade-b"
)

// lastPreHandoverCommit is the last commit of this project whose envd has
// no live upgrade: its --version prints no handover-schema line.
const lastPreHandoverCommit = "194b0b135c93d2684ac7e0ab2396dfacfa963ae0"

// upBinaries returns the paths of build A and build B.
func upBinaries(t *testing.T) (a, b string) {
	t.Helper()
	return envdtest.Binary(t), envdtest.BinaryStamped(t, upVersionB, upCommitB)
}

var (
	oldBuildOnce sync.Once
	oldBuildPath string
	oldBuildErr  error
)

// oldEnvd builds the envd of lastPreHandoverCommit from this repository's
// history (once per test process).
func oldEnvd(t *testing.T) string {
	t.Helper()
	oldBuildOnce.Do(func() {
		root, err := envdtest.RepoRoot()
		if err != nil {
			oldBuildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "envd-old-")
		if err != nil {
			oldBuildErr = err
			return
		}
		if err := exec.Command("git", "-C", root, "cat-file", "-e", lastPreHandoverCommit+"^{commit}").Run(); err != nil {
			oldBuildErr = fmt.Errorf("the repository's history lacks commit %s (a pre-handover envd; git and a full clone are needed): %v", lastPreHandoverCommit, err)
			return
		}
		archive := exec.Command("sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3" && test -f "$3/go.mod"`, "sh", root, lastPreHandoverCommit, dir)
		if out, err := archive.CombinedOutput(); err != nil {
			oldBuildErr = fmt.Errorf("git archive: %v\n%s", err, out)
			return
		}
		oldBuildPath = filepath.Join(dir, "envd-old")
		build := exec.Command("go", "build", "-o", oldBuildPath, "-ldflags", "-s -w -X github.com/envd/envd/internal/version.Commit=old", "./cmd/envd")
		build.Dir = dir
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			oldBuildErr = fmt.Errorf("build the pre-handover envd: %v\n%s", err, out)
		}
	})
	if oldBuildErr != nil {
		t.Fatal(oldBuildErr)
	}
	return oldBuildPath
}

// upEnvd is an envd that can be upgraded: PID 1 of its namespaces.
type upEnvd struct {
	*envdtest.Envd
	t   *testing.T
	pid int // envd as the host sees it
	// root is the cgroup root (absolute), "" with --no-cgroups.
	root string
	// dir is the scratch directory: hosts, certs/, local/, upper/.
	dir string
}

// upOptions configure startUpgradable.
type upOptions struct {
	envdtest.Options
	// NoCgroups runs with --no-cgroups instead of a test cgroup root.
	NoCgroups bool
}

// startUpgradable runs envd as PID 1 of new PID and mount namespaces with
// /usr/bin overlaid and /init's files bind-mounted (see above), on a
// fresh test cgroup root unless NoCgroups.
func startUpgradable(t *testing.T, o upOptions) *upEnvd {
	t.Helper()
	plan := startUpgradablePlan(t)
	opts := o.Options
	opts.Wrap = append([]string{"sh", "-c", plan.script, "sh"}, opts.Wrap...)
	u := &upEnvd{t: t, dir: plan.dir}
	if o.NoCgroups {
		opts.Args = append(opts.Args, "--no-cgroups")
	} else {
		u.root, _ = lcCgroupRoot(t)
		opts.Args = append(opts.Args, "--cgroup-root", u.root)
	}
	u.Envd, u.pid = startPID1(t, opts)
	return u
}

// upPlan is the scratch directory and the script that sets up the mounts
// inside the namespace and then execs its arguments.
type upPlan struct{ dir, script string }

func startUpgradablePlan(t *testing.T) upPlan {
	t.Helper()
	dir := lcScratch(t)
	for _, d := range []string{"upper", "work", "certs", "local"} {
		must(t, os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	must(t, os.WriteFile(filepath.Join(dir, "hosts"), []byte("127.0.0.1\tlocalhost\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "certs", "ca-certificates.crt"), []byte("SYSTEM-CA\n"), 0o644))
	mount, err := exec.LookPath("mount")
	if err != nil {
		t.Fatalf("mount is required for this test (util-linux): %v", err)
	}
	q := strconv.Quote
	script := "set -e; M=" + q(mount) + "; D=" + q(dir) + `
$M -t overlay overlay -o "lowerdir=/usr/bin,upperdir=$D/upper,workdir=$D/work" /usr/bin
$M --bind "$D/hosts" /etc/hosts
mkdir -p /etc/ssl/certs /usr/local/share/ca-certificates
$M --bind "$D/certs" /etc/ssl/certs
$M --bind "$D/local" /usr/local/share/ca-certificates
exec "$@"`
	return upPlan{dir: dir, script: script}
}

// startUpgradableFC is startUpgradable in Firecracker mode: in a network
// namespace of its own with a fake MMDS (cpFCEnvdNS), as PID 1 with the
// same mounts.
func startUpgradableFC(t *testing.T, o upOptions) (*lcNetns, *upEnvd) {
	t.Helper()
	probe := startUpgradablePlan(t)
	opts := o.Options
	opts.Wrap = append(append(append([]string{}, pid1Wrap...), "sh", "-c", probe.script, "sh"), opts.Wrap...)
	ns, e, root := cpFCEnvdNS(t, opts)
	u := &upEnvd{Envd: e, t: t, dir: probe.dir, root: root}
	u.pid = nsChild(t, e.Pid())
	t.Cleanup(func() { syscall.Kill(u.pid, syscall.SIGTERM) })
	if st, ok := readStat(u.pid); !ok || !strings.HasPrefix(st.comm, "envd") {
		t.Fatalf("namespace init is %+v, want envd", st)
	}
	return ns, u
}

// usrBin lists the namespace's /usr/bin entries whose names start with
// prefix.
func (u *upEnvd) usrBin(prefix string) []string {
	entries, err := os.ReadDir(filepath.Join(u.dir, "upper"))
	if err != nil {
		u.t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// nothingStaged fails unless /usr/bin holds no staging file and, when
// next is false, no envd.next.
func (u *upEnvd) nothingStaged(what string, next bool) {
	u.t.Helper()
	if tmp := u.usrBin(".envd.next."); len(tmp) > 0 {
		u.t.Fatalf("%s: staging files left in /usr/bin: %v", what, tmp)
	}
	if got := len(u.usrBin("envd.next")) > 0; got != next {
		u.t.Fatalf("%s: /usr/bin/envd.next exists: %v, want %v", what, got, next)
	}
}

// health returns the version /health reports.
func (u *upEnvd) health() string {
	u.t.Helper()
	resp, b := do(u.t, "GET", u.URL+"/health", nil, nil)
	if resp.StatusCode != http.StatusOK {
		u.t.Fatalf("/health → %d %q", resp.StatusCode, b)
	}
	var h struct{ Version string }
	if err := json.Unmarshal(b, &h); err != nil {
		u.t.Fatal(err)
	}
	return h.Version
}

// upgradeResult is what the /upgrade connection saw.
type upgradeResult struct {
	// closed: the connection ended without a response (the swap).
	closed bool
	status int
	body   string
	header http.Header
	// at is when the answer (or the end of the connection) arrived.
	at time.Time
}

// postUpgrade sends POST /upgrade on a connection of its own: body nil
// sends Content-Length: 0 (a re-exec).
func (u *upEnvd) postUpgrade(body []byte, hdr map[string]string) upgradeResult {
	u.t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(u.URL, "http://"))
	if err != nil {
		u.t.Fatal(err)
	}
	defer c.Close()
	h := map[string]string{}
	for k, v := range hdr {
		h[k] = v
	}
	var r io.Reader = bytes.NewReader(body)
	if body == nil {
		h["Content-Length"] = "0"
		r = nil
	}
	resp, b, err := rawExchange(c, "POST", "/upgrade", h, r, int64(len(body)), false, 120*time.Second)
	res := upgradeResult{at: time.Now()}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			u.t.Fatalf("/upgrade: neither an answer nor the end of the connection within 120 s")
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, syscall.ECONNRESET) {
			u.t.Fatalf("/upgrade: %v", err)
		}
		res.closed = true
		return res
	}
	res.status, res.body, res.header = resp.StatusCode, string(b), resp.Header
	return res
}

// refused posts an upgrade that must be answered with status and message
// (plain text, §8.10), and checks that PID 1 still serves.
func (u *upEnvd) refused(body []byte, hdr map[string]string, status int, msg string) {
	u.t.Helper()
	r := u.postUpgrade(body, hdr)
	if r.closed {
		u.t.Fatalf("/upgrade swapped; want %d %q", status, msg)
	}
	if r.status != status || !strings.HasPrefix(r.body, msg) || !strings.HasSuffix(r.body, "\n") {
		u.t.Fatalf("/upgrade → %d %q, want %d %q", r.status, r.body, status, msg)
	}
	if status != http.StatusUnauthorized && status != http.StatusForbidden {
		if ct := r.header.Get("Content-Type"); ct != "text/plain; charset=utf-8" || r.header.Get("X-Content-Type-Options") != "nosniff" {
			u.t.Fatalf("/upgrade %d: Content-Type %q, X-Content-Type-Options %q", status, ct, r.header.Get("X-Content-Type-Options"))
		}
	}
	if r.header.Get("Cache-Control") != "no-store" {
		u.t.Fatalf("/upgrade %d without Cache-Control: no-store", status)
	}
	if st, ok := readStat(u.pid); !ok || st.state == 'Z' {
		u.t.Fatal("PID 1 is gone")
	}
	u.health()
}

// swap upgrades to body (nil: re-exec) with the access token tok (if
// any) and waits until the new image answers /health; it returns when the
// /upgrade connection ended.
func (u *upEnvd) swap(body []byte, tok string) time.Time {
	u.t.Helper()
	hdr := map[string]string{"X-Envd-Upgrade-Bin": "/usr/bin/envd.next"}
	if tok != "" {
		hdr["X-Access-Token"] = tok
	}
	r := u.postUpgrade(body, hdr)
	if !r.closed {
		u.t.Fatalf("/upgrade answered %d %q instead of swapping\n%s", r.status, r.body, u.Log())
	}
	u.health()
	return r.at
}

// handover is X-Envd-Handover.
type handover struct {
	Failed         bool `json:"failed"`
	Procs          int  `json:"procs"`
	ProcsFailed    int  `json:"procs_failed"`
	Retained       int  `json:"retained"`
	RetainedFailed int  `json:"retained_failed"`
	Watchers       int  `json:"watchers"`
	WatchersFailed int  `json:"watchers_failed"`
}

var handoverHeader = regexp.MustCompile(`^\{"failed":(true|false),"procs":\d+,"procs_failed":\d+,"retained":\d+,"retained_failed":\d+,"watchers":\d+,"watchers_failed":\d+\}$`)

// parseHandover checks X-Envd-Handover's exact form (members in the order
// of §8.15) and decodes it.
func parseHandover(t *testing.T, resp *http.Response) handover {
	t.Helper()
	v := resp.Header.Get("X-Envd-Handover")
	if !handoverHeader.MatchString(v) {
		t.Fatalf("X-Envd-Handover %q (status %d)", v, resp.StatusCode)
	}
	var h handover
	must(t, json.Unmarshal([]byte(v), &h))
	return h
}

// init posts /init with body (nil: no body) and returns the response.
func (u *upEnvd) init(body map[string]any) (*http.Response, []byte) {
	u.t.Helper()
	if body == nil {
		return do(u.t, "POST", u.URL+"/init", nil, nil)
	}
	return postJSON(u.t, u.URL+"/init", body, nil)
}

// initOK posts /init, requires 204 and returns the handover header
// (zero when absent).
func (u *upEnvd) initOK(body map[string]any) (*http.Response, handover) {
	u.t.Helper()
	resp, b := u.init(body)
	if resp.StatusCode != http.StatusNoContent {
		u.t.Fatalf("/init → %d %q", resp.StatusCode, b)
	}
	if resp.Header.Get("X-Envd-Handover") == "" {
		return resp, handover{}
	}
	return resp, parseHandover(u.t, resp)
}

// gated checks the post-handover gate on the usual routes.
func (u *upEnvd) gated(hdr map[string]string) {
	u.t.Helper()
	for _, r := range []struct{ method, path string }{
		{"GET", "/files?path=/etc/hostname"}, {"POST", "/files?path=/tmp/x"}, {"GET", "/metrics"}, {"GET", "/envs"},
		{"POST", "/process.Process/List"}, {"POST", "/filesystem.Filesystem/Stat"}, {"POST", "/freeze"},
		{"POST", "/upgrade"}, {"POST", "/snapshot/prepare"}, {"GET", "/nonexistent"},
	} {
		h := map[string]string{"Content-Type": "application/json"}
		for k, v := range hdr {
			h[k] = v
		}
		resp, b := do(u.t, r.method, u.URL+r.path, strings.NewReader("{}"), h)
		jsonError(u.t, resp, b, http.StatusUnauthorized, "envd not initialized")
	}
	for _, m := range []string{"GET", "HEAD"} {
		if resp, _ := do(u.t, m, u.URL+"/health", nil, nil); resp.StatusCode != http.StatusOK {
			u.t.Fatalf("%s /health behind the gate → %d", m, resp.StatusCode)
		}
	}
}

// procStatus reads /proc/<pid>/status of envd.
func (u *upEnvd) statusField(name string) int64 {
	u.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", u.pid))
	if err != nil {
		u.t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+":"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	u.t.Fatalf("no %s in /proc/%d/status", name, u.pid)
	return 0
}

// fds lists envd's open descriptors.
func (u *upEnvd) fds() int {
	u.t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", u.pid))
	if err != nil {
		u.t.Fatal(err)
	}
	return len(entries)
}

// dialStorm keeps opening connections to envd and asking for /health on
// each until stop is called: it shows that no connection is refused while
// envd replaces itself, and which image served connections opened before
// the swap ended.
type dialStorm struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	refused atomic.Int64
	mu      sync.Mutex
	served  []stormResult
}

type stormResult struct {
	connected time.Time
	version   string
	err       error
}

func startDialStorm(url string, workers int) *dialStorm {
	s := &dialStorm{stop: make(chan struct{})}
	addr := strings.TrimPrefix(url, "http://")
	for i := 0; i < workers; i++ {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				select {
				case <-s.stop:
					return
				default:
				}
				c, err := net.Dial("tcp", addr)
				if err != nil {
					if errors.Is(err, syscall.ECONNREFUSED) {
						s.refused.Add(1)
					}
					time.Sleep(time.Millisecond)
					continue
				}
				res := stormResult{connected: time.Now()}
				resp, b, err := rawExchange(c, "GET", "/health", nil, nil, 0, false, 60*time.Second)
				c.Close()
				if err == nil && resp.StatusCode == http.StatusOK {
					var h struct{ Version string }
					_ = json.Unmarshal(b, &h)
					res.version = h.Version
				} else if err == nil {
					res.err = fmt.Errorf("status %d", resp.StatusCode)
				} else {
					res.err = err
				}
				s.mu.Lock()
				s.served = append(s.served, res)
				s.mu.Unlock()
			}
		}()
	}
	return s
}

func (s *dialStorm) end() []stormResult {
	close(s.stop)
	s.wg.Wait()
	return s.served
}

// writeScript writes an executable shell script.
func writeScript(t *testing.T, path, body string) {
	t.Helper()
	must(t, os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755))
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
