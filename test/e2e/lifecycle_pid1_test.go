package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// envd as PID 1 of a new PID and mount namespace (spec lifecycle.md §3).
// Files the tests share with envd live under /var/tmp: envd mounts fresh
// tmpfs over /tmp and /run in its namespace.

var pid1Wrap = []string{"unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private"}

// startPID1 runs envd as PID 1 and returns it with its pid as seen from
// the host.
func startPID1(t *testing.T, opts envdtest.Options) (*envdtest.Envd, int) {
	t.Helper()
	opts.Wrap = append(append([]string{}, pid1Wrap...), opts.Wrap...)
	e := envdtest.Start(t, opts)
	pid := nsChild(t, e.Pid())
	// unshare does not pass SIGTERM on: stop envd itself at the end.
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGTERM) })
	if st, ok := readStat(pid); !ok || !strings.HasPrefix(st.comm, "envd") {
		t.Fatalf("namespace init is %+v, want envd", st)
	}
	if !strings.Contains(e.Log(), "pid1=true") {
		t.Fatalf("envd does not know it is PID 1:\n%s", e.Log())
	}
	return e, pid
}

// mountEntry is one line of a mountinfo file.
type mountEntry struct{ fstype, opts, superOpts string }

func mountTable(t *testing.T, pid int) map[string]mountEntry {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]mountEntry{}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 6 || len(g) < 3 {
			continue
		}
		out[f[4]] = mountEntry{fstype: g[0], opts: f[5], superOpts: g[2]} // the last mount on a path wins
	}
	return out
}

func TestPID1_MountsMissingFilesystems(t *testing.T) {
	e, pid := startPID1(t, envdtest.Options{})
	mounts := mountTable(t, pid)
	for path, mode := range map[string]os.FileMode{"/tmp": 0o777 | os.ModeSticky, "/run": 0o755} {
		m, ok := mounts[path]
		if !ok || m.fstype != "tmpfs" || !strings.Contains(m.opts, "nosuid") || !strings.Contains(m.opts, "nodev") {
			t.Errorf("%s in envd's namespace: %+v, want tmpfs nosuid,nodev", path, m)
		}
		st, err := os.Stat(fmt.Sprintf("/proc/%d/root%s", pid, path))
		if err != nil || st.Mode()&(os.ModePerm|os.ModeSticky) != mode {
			t.Errorf("%s mode %v (%v), want %v", path, st.Mode(), err, mode)
		}
	}
	if m := mounts["/proc"]; m.fstype != "proc" {
		t.Errorf("/proc: %+v", m)
	}
	if !strings.Contains(e.Log(), "mounted kernel filesystems") {
		t.Fatalf("mounts not logged:\n%s", e.Log())
	}
	// envd's own state lives in its namespace's /run.
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/run/wrenn/.WRENN_SANDBOX", pid)); err != nil || string(b) != "false" {
		t.Fatalf("/run/wrenn/.WRENN_SANDBOX in envd's namespace: %q %v", b, err)
	}
}

// orphanScript makes a storm of orphans: each round double-forks one
// process that exits at once and one that outlives the script.
const orphanScript = `i=0; while [ $i -lt 20 ]; do ( sh -c 'exit 9' </dev/null >/dev/null 2>&1 & ); ( sleep 0.3 </dev/null >/dev/null 2>&1 & ); i=$((i+1)); done`

// TestPID1_ExitCodesExactUnderOrphanStorm: managed helpers (the /init NFS
// mount helper, faked) and RPC processes exit with their own codes while
// hundreds of orphans exit around them; every orphan is reaped.
func TestPID1_ExitCodesExactUnderOrphanStorm(t *testing.T) {
	dir := lcScratch(t)
	bin := filepath.Join(dir, "bin")
	must(t, os.MkdirAll(bin, 0o755))
	// mount -v -t nfs -o <opts> <target> <path>: exit with the number at
	// the end of the target.
	must(t, os.WriteFile(filepath.Join(bin, "mount"), []byte("#!/bin/sh\n"+orphanScript+"\nexit ${6##*-}\n"), 0o755))
	e, pid := startPID1(t, envdtest.Options{Args: []string{"--verbose"}, Env: []string{"PATH=" + bin + ":" + os.Getenv("PATH")}})

	const rounds, volumes = 3, 8
	for r := 0; r < rounds; r++ {
		var vols []map[string]string
		for i := 0; i < volumes; i++ {
			vols = append(vols, map[string]string{"nfs_target": fmt.Sprintf("srv:/code-%d", 11+i), "path": fmt.Sprintf("/tmp/vol-%d-%d", r, i)})
		}
		resp, body := postJSON(t, e.URL+"/init", map[string]any{"volumeMounts": vols}, nil)
		if resp.StatusCode != 400 {
			t.Fatalf("round %d: /init %d %q", r, resp.StatusCode, body)
		}
		for i := 0; i < volumes; i++ {
			want := fmt.Sprintf("mount srv:/code-%d on /tmp/vol-%d-%d: exit status %d", 11+i, r, i, 11+i)
			if !strings.Contains(string(body), want) {
				t.Fatalf("round %d: exit status lost or wrong; want %q in:\n%s", r, want, body)
			}
		}
	}

	// The same through the process service: each process reports its own
	// exit code while its orphans are reaped by envd.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			s, err := e.Process().Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", orphanScript + fmt.Sprintf("; exit %d", 30+i)}}}))
			if err != nil {
				errs <- err
				return
			}
			r := lcDrain(s)
			if r.end == nil || !r.end.GetExited() || r.end.GetExitCode() != int32(30+i) {
				errs <- fmt.Errorf("process %d: end %v (%v), want exit code %d", i, r.end, r.err, 30+i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Every orphan was adopted and reaped: no zombie stays behind.
	lcWait(t, "orphans to exit and be reaped", func() bool {
		for _, c := range children(pid) {
			if c.state == 'Z' || c.comm == "sleep" {
				return false
			}
		}
		return true
	})
	orphans := (rounds*volumes + 8) * 40
	lcWait(t, "reap log lines", func() bool { return strings.Count(e.Log(), "reaped orphan") >= orphans })
	t.Logf("%d orphans reaped, %d expected at least", strings.Count(e.Log(), "reaped orphan"), orphans)
	if z := zombies(pid); len(z) != 0 {
		t.Fatalf("zombies left: %+v", z)
	}
}

// TestPID1_SIGTERMEndsEverything: SIGTERM reaches managed processes (whose
// attached streams see their end), then every other process in the
// namespace, including one that ignores SIGTERM; envd exits 0 (--isnotfc).
func TestPID1_SIGTERMEndsEverything(t *testing.T) {
	dir := lcScratch(t)
	e, pid := startPID1(t, envdtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A managed process with an attached stream.
	managed := lcStart(t, ctx, e, &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c",
		"trap 'echo TERM > " + dir + "/managed; exit 0' TERM; echo ready; while :; do sleep 0.1; done"}}})
	managedEnd := make(chan *lcResult, 1)
	go func() { managedEnd <- lcDrain(managed) }()
	// Processes outside every managed group (own sessions), one polite,
	// one that ignores SIGTERM.
	lcExec(t, e, "setsid sh -c \"trap 'echo TERM > "+dir+"/orphan; exit 0' TERM; touch "+dir+"/orphan-ready; while :; do sleep 0.1; done\" </dev/null >/dev/null 2>&1 &"+
		"setsid sh -c \"trap '' TERM; touch "+dir+"/stubborn-ready; exec sleep 1000\" </dev/null >/dev/null 2>&1 &")
	lcWait(t, "workload ready", func() bool {
		_, e1 := os.Stat(dir + "/orphan-ready")
		_, e2 := os.Stat(dir + "/stubborn-ready")
		return e1 == nil && e2 == nil
	})
	time.Sleep(100 * time.Millisecond) // let the traps be installed

	start := time.Now()
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitExit(t, e, 15*time.Second)
	elapsed := time.Since(start)
	if err := e.Stop(); err != nil {
		t.Fatalf("envd as PID 1 with --isnotfc must exit 0: %v\n%s", err, e.Log())
	}
	t.Logf("shutdown took %v", elapsed.Round(time.Millisecond))

	select {
	case r := <-managedEnd:
		if r.end == nil || r.end.GetExitCode() != 0 || !r.end.GetExited() {
			t.Fatalf("attached stream did not see the process end: %+v %v", r.end, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("managed stream still open")
	}
	for _, f := range []string{"managed", "orphan"} {
		if b, err := os.ReadFile(filepath.Join(dir, f)); err != nil || strings.TrimSpace(string(b)) != "TERM" {
			t.Errorf("%s process did not get SIGTERM: %q %v", f, b, err)
		}
	}
	log := e.Log()
	for _, want := range []string{"shutting down signal=terminated", "terminating remaining processes", "killing remaining processes", "stopped duration_ms="} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		if st, ok := readStat(pid); ok && strings.HasPrefix(st.comm, "envd") && st.state != 'Z' {
			t.Fatal("envd still running")
		}
	}
}

func TestPID1_SecondSignalSkipsWaits(t *testing.T) {
	e, pid := startPID1(t, envdtest.Options{})
	dir := lcScratch(t)
	lcExec(t, e, "setsid sh -c \"trap '' TERM; touch "+dir+"/ready; exec sleep 1000\" </dev/null >/dev/null 2>&1 &")
	lcWait(t, "stubborn process", func() bool { _, err := os.Stat(dir + "/ready"); return err == nil })
	syscall.Kill(pid, syscall.SIGTERM)
	if err := e.WaitLog(context.Background(), "terminating remaining processes"); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(pid, syscall.SIGINT)
	waitExit(t, e, 15*time.Second)
	if err := e.Stop(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if !strings.Contains(e.Log(), "second shutdown signal: skipping the remaining waits") || !strings.Contains(e.Log(), "killing remaining processes") {
		t.Fatalf("log:\n%s", e.Log())
	}
}

// TestPID1_FCModeEndsNamespaceWithReboot: in Firecracker mode PID 1 ends
// with reboot(RESTART); in a PID namespace the kernel turns that into the
// end of the namespace, which its parent sees as death by SIGHUP.
func TestPID1_FCModeEndsNamespaceWithReboot(t *testing.T) {
	ns := newNetns(t)
	e := ns.startFC(t, envdtest.Options{
		Wrap: pid1Wrap,
		Env:  []string{"ENVD_MMDS_ADDRESS=127.0.0.1:1"}, // nothing there: the poll fails quietly
	})
	pid := nsChild(t, e.Pid())
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGTERM) })
	if !regexp.MustCompile(`"pid1":true`).MatchString(e.Log()) {
		t.Fatalf("not PID 1:\n%s", e.Log())
	}
	syscall.Kill(pid, syscall.SIGTERM)
	waitExit(t, e, 15*time.Second)
	err := e.Stop()
	if err == nil || !strings.Contains(err.Error(), "signal: hangup") {
		t.Fatalf("namespace end seen as %v, want death by SIGHUP\n%s", err, e.Log())
	}
	if !strings.Contains(e.Log(), `"message":"stopped"`) {
		t.Fatalf("no clean shutdown before the reboot:\n%s", e.Log())
	}
}

// As PID 1, envd retries a port it cannot bind instead of exiting, and a
// SIGTERM during those retries still shuts it down.
func TestPID1_ListenRetryHearsSIGTERM(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port
	var out bytes.Buffer
	var mu sync.Mutex
	argv := append(append([]string{}, pid1Wrap...), envdtest.Binary(t), "--isnotfc", "--port", strconv.Itoa(port))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = &lockedBuffer{mu: &mu, b: &out}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	logText := func() string { mu.Lock(); defer mu.Unlock(); return out.String() }
	lcWait(t, "two failed binds", func() bool { return strings.Count(logText(), "cannot listen; retrying") >= 2 })
	select {
	case err := <-done:
		t.Fatalf("envd as PID 1 exited on a busy port: %v", err)
	default:
	}
	envd := nsChild(t, cmd.Process.Pid)
	if err := syscall.Kill(envd, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("SIGTERM during listen retries did not end envd")
	}
	if !strings.Contains(logText(), "shutting down") {
		t.Fatalf("no shutdown line:\n%s", logText())
	}
}

type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
