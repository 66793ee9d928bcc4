package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
	"github.com/envd/envd/internal/mmds/mmdstest"
)

// Helpers for the control-plane tests (spec control-plane.md): freezing on
// the machine's real cgroup2 hierarchy below a test cgroup, and freezing a
// filesystem the test creates (never the machine's "/").

// freezeResult is FreezeResult (§3.4).
type freezeResult struct {
	Allowlisted  int    `json:"allowlisted"`
	Failed       int    `json:"failed"`
	Frozen       int    `json:"frozen"`
	Mode         string `json:"mode"`
	NotFrozen    int    `json:"notFrozen"`
	PreFrozen    int    `json:"preFrozen"`
	Requested    int    `json:"requested"`
	SweepMs      int64  `json:"sweepMs"`
	Truncated    bool   `json:"truncated"`
	Unobservable int    `json:"unobservable"`
	Visited      int    `json:"visited"`
	WaitMs       int64  `json:"waitMs"`
}

// cpPost sends a control-plane POST and checks the header every response
// of these routes carries.
func cpPost(t *testing.T, e *envdtest.Envd, pathQuery string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	resp, body := do(t, "POST", e.URL+pathQuery, nil, hdr)
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("POST %s → %d without Cache-Control: no-store", pathQuery, resp.StatusCode)
	}
	return resp, body
}

// cpStatus posts and requires the status (and, for 204, no body).
func cpStatus(t *testing.T, e *envdtest.Envd, pathQuery string, status int) []byte {
	t.Helper()
	resp, body := cpPost(t, e, pathQuery, nil)
	if resp.StatusCode != status {
		t.Fatalf("POST %s → %d %q, want %d", pathQuery, resp.StatusCode, body, status)
	}
	if status == http.StatusNoContent && len(body) != 0 {
		t.Fatalf("POST %s → 204 with a body %q", pathQuery, body)
	}
	return body
}

// cpFreeze runs /freeze with a wait and decodes the result, checking the
// exact JSON shape: twelve members in the specification's order, a newline.
func cpFreeze(t *testing.T, e *envdtest.Envd, query string) freezeResult {
	t.Helper()
	resp, body := cpPost(t, e, "/freeze?"+query, nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("/freeze?%s → %d %s %q", query, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	var r freezeResult
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("FreezeResult %q: %v", body, err)
	}
	order := []string{"allowlisted", "failed", "frozen", "mode", "notFrozen", "preFrozen", "requested", "sweepMs", "truncated", "unobservable", "visited", "waitMs"}
	last := -1
	for _, k := range order {
		i := strings.Index(string(body), `"`+k+`":`)
		if i <= last {
			t.Fatalf("FreezeResult %q: member %s missing or out of order", body, k)
		}
		last = i
	}
	if !strings.HasSuffix(string(body), "}\n") {
		t.Fatalf("FreezeResult without a trailing newline: %q", body)
	}
	// The invariant of §3.4 (read failures are failed writes' complement).
	if r.Frozen+r.NotFrozen+r.Unobservable > r.Requested {
		t.Fatalf("FreezeResult counts do not add up: %+v", r)
	}
	return r
}

// cgFile reads a cgroup interface file.
func cgFile(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// cgFrozen is a cgroup's settled state (cgroup.events "frozen").
func cgFrozen(t *testing.T, dir string) bool {
	t.Helper()
	return strings.Contains(cgFile(t, dir, "cgroup.events"), "frozen 1")
}

// cgOwn is a cgroup's own request (cgroup.freeze).
func cgOwn(t *testing.T, dir string) bool {
	t.Helper()
	return strings.TrimSpace(cgFile(t, dir, "cgroup.freeze")) == "1"
}

func cgSetFreeze(t *testing.T, dir string, freeze bool) {
	t.Helper()
	v := "0"
	if freeze {
		v = "1"
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte(v), 0); err != nil {
		t.Fatal(err)
	}
}

// cgWait waits until the settled state is want (10 s at most).
func cgWait(t *testing.T, dir string, want bool) {
	t.Helper()
	lcWait(t, fmt.Sprintf("%s frozen=%v", dir, want), func() bool { return cgFrozen(t, dir) == want })
}

// testCgroup creates a cgroup below root for the test, with a busy loop in
// it when busy is set, and removes it at the end (thawed and emptied
// first). It returns the directory and the loop's pid (0 without one).
func testCgroup(t *testing.T, root, rel string, busy bool) (string, int) {
	t.Helper()
	dir := filepath.Join(root, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pid := 0
	var cmd *exec.Cmd
	if busy {
		cmd = exec.Command("sh", "-c", "while :; do :; done")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid = cmd.Process.Pid
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0)
		if cmd != nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := unix.Rmdir(dir)
			if err == nil || errors.Is(err, unix.ENOENT) || time.Now().After(deadline) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return dir, pid
}

// cpuTicks is a process's utime + stime (clock ticks) from /proc/<pid>/stat.
func cpuTicks(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	rest := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(rest[11], 10, 64)
	k, _ := strconv.ParseInt(rest[12], 10, 64)
	return u + k
}

// stopped asserts that pid accrues no CPU time over a while (it is frozen).
func stopped(t *testing.T, pid int, what string) {
	t.Helper()
	// A task that was on its way to the freezer when the group settled may
	// still book the tick it was in.
	time.Sleep(50 * time.Millisecond)
	a := cpuTicks(t, pid)
	time.Sleep(600 * time.Millisecond)
	if b := cpuTicks(t, pid); b != a {
		t.Fatalf("%s: the busy loop accrued %d ticks while frozen", what, b-a)
	}
}

// running asserts that pid accrues CPU time again (within 10 s: the machine
// may be loaded).
func running(t *testing.T, pid int, what string) {
	t.Helper()
	a := cpuTicks(t, pid)
	lcWait(t, what+": the busy loop running again", func() bool { return cpuTicks(t, pid) > a+2 })
}

// busyInUser starts a busy loop through the API (so it lands in the user
// group) and returns its pid.
func busyInUser(t *testing.T, e *envdtest.Envd) int {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r := procStart(t, ctx, e.Process(), connect.NewRequest(&pb.StartRequest{Process: procSh("while :; do :; done"), Tag: ptr("busy")}))
	pid := int(r.ev.pid)
	t.Cleanup(func() { unix.Kill(-pid, unix.SIGKILL) })
	return pid
}

// cpEnvd starts envd (not in FC mode) on a fresh test cgroup root.
func cpEnvd(t *testing.T, opts envdtest.Options) (*envdtest.Envd, string) {
	t.Helper()
	abs, _ := lcCgroupRoot(t)
	opts.Args = append(opts.Args, "--cgroup-root", abs)
	e := procEnvd(t, opts)
	return e, abs
}

// cpFCEnvd starts envd in Firecracker mode in a network namespace (with a
// fake MMDS, so /init's hash read is immediate) on a fresh test cgroup root.
func cpFCEnvd(t *testing.T, opts envdtest.Options) (*envdtest.Envd, string) {
	t.Helper()
	_, e, root := cpFCEnvdNS(t, opts)
	return e, root
}

// cpFCEnvdNS is cpFCEnvd that also returns the namespace.
func cpFCEnvdNS(t *testing.T, opts envdtest.Options) (*lcNetns, *envdtest.Envd, string) {
	t.Helper()
	abs, _ := lcCgroupRoot(t)
	opts.Args = append(opts.Args, "--cgroup-root", abs)
	// ip netns exec mounts a fresh sysfs over /sys, which hides the cgroup
	// mounts: mount the (one, global) cgroup2 hierarchy again at its path.
	mount := lcCgroup2Mount(t)
	script := `mount -t cgroup2 cgroup2 "$M" && exec "$@"`
	if mount != "/sys/fs/cgroup" {
		script = `mount -t tmpfs -o mode=0755 tmpfs /sys/fs/cgroup && mkdir -p "$M" && ` + script
	}
	opts.Wrap = append([]string{"env", "M=" + mount, "sh", "-c", script, "sh"}, opts.Wrap...)
	ns := newNetns(t)
	ln, err := net.Listen("tcp", ns.hostIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	fake := mmdstest.NewOn(ln, map[string]any{"instanceID": "sbx-cp", "envID": "tpl-cp"})
	t.Cleanup(fake.Close)
	opts.Env = append(opts.Env, "ENVD_MMDS_ADDRESS="+fake.HostPort())
	e := ns.startFC(t, opts)
	t.Cleanup(func() { procKillAll(e) })
	return ns, e, abs
}

// scratchExt4 creates an ext4 filesystem on a loop device, mounted at the
// returned directory, for the filesystem-freeze tests (tmpfs does not
// support FIFREEZE, and the machine's own "/" must never be frozen). At the
// end it is thawed first — a write blocked on it would otherwise stay
// blocked — then unmounted.
func scratchExt4(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required for this test (e2fsprogs / util-linux): %v", tool, err)
		}
	}
	dir := lcScratch(t)
	img := filepath.Join(dir, "fs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	lcRun(t, "mkfs.ext4", "-q", "-F", img)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	lcRun(t, "mount", "-o", "loop", img, mnt)
	t.Cleanup(func() {
		_ = fsIoctl(mnt, false)
		deadline := time.Now().Add(10 * time.Second)
		for {
			out, err := exec.Command("umount", mnt).CombinedOutput()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("umount %s: %v %s", mnt, err, out)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	if err := os.Chmod(mnt, 0o777); err != nil {
		t.Fatal(err)
	}
	return mnt
}

// fsIoctl freezes or thaws the filesystem at dir from the test itself.
func fsIoctl(dir string, freeze bool) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	req := uintptr(0xC0045878) // FITHAW
	if freeze {
		req = 0xC0045877 // FIFREEZE
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, 0); errno != 0 && errno != unix.EINVAL {
		return errno
	}
	return nil
}

// blockedWrite starts a write of a file in a child process and reports
// when it has finished.
func blockedWrite(t *testing.T, path string) <-chan error {
	t.Helper()
	cmd := exec.Command("sh", "-c", `echo written > "$1"`, "sh", path)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	return done
}
