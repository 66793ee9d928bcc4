package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// The wrapper's effects (spec rpc.md §4.2 step 5) are the contract; envd
// produces them in-process and execs the command itself. These tests check
// each effect on the command's own process, through the real binary.

const (
	ioprioWhoProcess  = 1
	ioprioBestEffort4 = 2<<13 | 4
)

func ioprioOf(t *testing.T, tid int) int {
	t.Helper()
	r, _, errno := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(tid), 0)
	if errno != 0 {
		t.Fatalf("ioprio_get(%d): %v", tid, errno)
	}
	return int(r)
}

func niceOf(t *testing.T, tid int) int {
	t.Helper()
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		t.Fatalf("getpriority(%d): %v", tid, err)
	}
	return 20 - prio // the raw system call returns 20 - nice
}

func procFile(t *testing.T, pid int, name string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// envdThreads lists envd's threads.
func envdThreads(t *testing.T, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, tid)
		}
	}
	return out
}

// envd runs at nice 5 in the idle I/O class here, so every effect differs
// from what the child would inherit: the child must still get nice 0,
// best-effort level 4 and OOM score 100 — as a user and as root, with
// pipes and with a terminal — and envd's threads must be set back.
func TestSpawn_EffectsOnTheCommandItself(t *testing.T) {
	procTestUser(t)
	e := procEnvd(t, envdtest.Options{Wrap: []string{"nice", "-n", "5", "ionice", "-c", "3"}})
	envdOOM := procFile(t, e.Pid(), "oom_score_adj")
	envdIO := ioprioOf(t, e.Pid())
	if envdIO>>13 != 3 || niceOf(t, e.Pid()) != 5 {
		t.Fatalf("envd started with I/O priority %#x, nice %d; want the idle class and 5", envdIO, niceOf(t, e.Pid()))
	}
	c := e.Process()
	pty := &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}}
	for _, tc := range []struct {
		name string
		pty  *pb.PTY
		hdr  []string
	}{
		{"root pipes", nil, nil},
		{"root pty", pty, nil},
		{"user pipes", nil, []string{"Authorization", basicAuth(procUser)}},
		{"user pty", pty, []string{"Authorization", basicAuth(procUser)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := procCtx(t)
			r := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "sleep", Args: []string{"30"}}, Pty: tc.pty, Stdin: ptr(false)}, tc.hdr...))
			pid := int(r.ev.pid)
			// The reported pid is the command's, not a wrapper's.
			if got := procFile(t, pid, "cmdline"); got != "sleep\x0030\x00" {
				t.Fatalf("pid %d runs %q", pid, got)
			}
			if got := strings.TrimSpace(procFile(t, pid, "oom_score_adj")); got != "100" {
				t.Errorf("oom_score_adj %s, want 100", got)
			}
			if got := ioprioOf(t, pid); got != ioprioBestEffort4 {
				t.Errorf("I/O priority %#x, want best-effort level 4 (%#x)", got, ioprioBestEffort4)
			}
			if got := niceOf(t, pid); got != 0 {
				t.Errorf("nice %d, want 0", got)
			}
			if _, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: procPID(r.ev.pid), Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
				t.Fatal(err)
			}
			if ev := r.drain(); ev.end == nil || ev.end.GetStatus() != "signal: killed" {
				t.Fatalf("end %v (%v)", ev.end, ev.err)
			}
		})
	}
	// envd itself: its OOM score as before, every thread back at nice 5 in
	// the idle class.
	if got := procFile(t, e.Pid(), "oom_score_adj"); got != envdOOM {
		t.Errorf("envd's oom_score_adj %q after the spawns, was %q", got, envdOOM)
	}
	for _, tid := range envdThreads(t, e.Pid()) {
		if n, p := niceOf(t, tid), ioprioOf(t, tid); n != 5 || p != envdIO {
			t.Errorf("envd thread %d: nice %d, I/O priority %#x; want 5 and %#x", tid, n, p, envdIO)
		}
	}
}

// A child that forks at once: its child inherits 100 too (no window in
// which the command still has envd's -1000).
func TestSpawn_ForkingChildSeesOOMScore100(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for i := 0; i < 20; i++ {
		ev := procRun(t, e.Process(), procReq(&pb.StartRequest{Process: procSh("cat /proc/self/oom_score_adj & wait"), Stdin: ptr(false)}))
		wantEnd(t, ev, 0, true, "exit status 0")
		if ev.stdout() != "100\n" {
			t.Fatalf("run %d: %q", i, ev.stdout())
		}
	}
}

// The command is looked up in the child's PATH (the request's envs may
// replace it), from the child's working directory for relative elements.
func TestSpawn_CommandFoundThroughTheRequestPATH(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "envd-test-cmd"), []byte("#!/bin/sh\necho \"found $0 $1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A non-executable and a directory of the same name earlier in PATH
	// are skipped, as execvp skips them.
	skip1, skip2 := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(skip1, "envd-test-cmd"), []byte("#!/bin/sh\necho wrong\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(skip2, "envd-test-cmd"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := e.Process()
	for _, tc := range []struct {
		name, path, cwd, want string
	}{
		// $0 of the script is the path exec was given, built as execvp
		// builds it.
		{"absolute element", "/nonexistent:" + skip1 + ":" + skip2 + ":" + dir + ":/usr/bin:/bin", "/", "found " + dir + "/envd-test-cmd a\n"},
		{"trailing slash kept", dir + "/:/usr/bin:/bin", "/", "found " + dir + "//envd-test-cmd a\n"},
		{"empty element is the cwd", "/nonexistent::/usr/bin:/bin", dir, "found envd-test-cmd a\n"},
		{"relative element", "/nonexistent:./" + ":/usr/bin:/bin", dir, "found .//envd-test-cmd a\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := procRun(t, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "envd-test-cmd", Args: []string{"a"}, Envs: map[string]string{"PATH": tc.path}, Cwd: ptr(tc.cwd)}, Stdin: ptr(false)}))
			wantEnd(t, ev, 0, true, "exit status 0")
			if ev.stdout() != tc.want {
				t.Fatalf("stdout %q, want %q (stderr %q)", ev.stdout(), tc.want, ev.stderr())
			}
		})
	}
	// envd's own PATH does not have it.
	ev := procRun(t, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "envd-test-cmd"}, Stdin: ptr(false)}))
	wantEnd(t, ev, 127, true, "exit status 127")
}

// What exec refuses is reported as the wrapper always reported it: an
// exit code and a message on stderr, not an RPC error.
func TestSpawn_CommandsExecRefuses(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	dir := t.TempDir()
	noShebang := filepath.Join(dir, "no-shebang")
	if err := os.WriteFile(noShebang, []byte("echo \"script ran: $0 $1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	notExec := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\necho never\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := e.Process()
	for _, tc := range []struct {
		name   string
		cfg    *pb.ProcessConfig
		code   int32
		stdout string
		stderr []string
	}{
		{"missing command", &pb.ProcessConfig{Cmd: "envd-no-such-command"}, 127, "", []string{"envd-no-such-command", "No such file or directory"}},
		{"missing path", &pb.ProcessConfig{Cmd: dir + "/missing"}, 127, "", []string{dir + "/missing", "No such file or directory"}},
		{"script without #!", &pb.ProcessConfig{Cmd: noShebang, Args: []string{"x"}}, 0, "script ran: " + noShebang + " x\n", nil},
		{"script without #! found in PATH", &pb.ProcessConfig{Cmd: "no-shebang", Args: []string{"y"}, Envs: map[string]string{"PATH": dir + ":/usr/bin:/bin"}}, 0, "script ran: " + noShebang + " y\n", nil},
		{"not executable", &pb.ProcessConfig{Cmd: notExec}, 126, "", []string{notExec, "Permission denied"}},
		{"directory", &pb.ProcessConfig{Cmd: dir}, 126, "", []string{dir, "Permission denied"}},
		{"empty command", &pb.ProcessConfig{Cmd: ""}, 127, "", []string{"No such file or directory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := procRun(t, c, procReq(&pb.StartRequest{Process: tc.cfg, Stdin: ptr(false)}))
			status := "exit status " + strconv.Itoa(int(tc.code))
			wantEnd(t, ev, tc.code, true, status)
			if ev.stdout() != tc.stdout {
				t.Errorf("stdout %q, want %q", ev.stdout(), tc.stdout)
			}
			for _, s := range tc.stderr {
				if !strings.Contains(ev.stderr(), s) {
					t.Errorf("stderr %q lacks %q", ev.stderr(), s)
				}
			}
			if len(tc.stderr) == 0 && ev.stderr() != "" {
				t.Errorf("stderr %q", ev.stderr())
			}
		})
	}
}

// The command sees the environment the wrapper shell passed on: PWD is
// the working directory (physical, unless the request's PWD names it),
// names that are not shell names are dropped.
func TestSpawn_EnvironmentAsTheWrapperPassedIt(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	c := e.Process()
	for _, tc := range []struct {
		name string
		envs map[string]string
		want string
	}{
		{"physical cwd", nil, "PWD=" + real},
		{"request PWD naming the cwd", map[string]string{"PWD": link}, "PWD=" + link},
		{"request PWD naming another directory", map[string]string{"PWD": "/tmp"}, "PWD=" + real},
	} {
		t.Run(tc.name, func(t *testing.T) {
			envs := map[string]string{"BAD-NAME": "x", "GOOD_NAME": "y"}
			for k, v := range tc.envs {
				envs[k] = v
			}
			ev := procRun(t, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "env", Envs: envs, Cwd: ptr(link)}, Stdin: ptr(false)}))
			wantEnd(t, ev, 0, true, "exit status 0")
			lines := strings.Split(strings.TrimSpace(ev.stdout()), "\n")
			has := func(s string) bool {
				for _, l := range lines {
					if l == s {
						return true
					}
				}
				return false
			}
			if !has(tc.want) || !has("GOOD_NAME=y") || strings.Contains(ev.stdout(), "BAD-NAME") {
				t.Fatalf("environment %q; want %s and GOOD_NAME=y, no BAD-NAME", ev.stdout(), tc.want)
			}
		})
	}
}

// Spawning many processes leaves envd's OOM score where it was, also while
// spawns run concurrently (the value is process-wide).
func TestSpawn_ConcurrentSpawnsKeepEnvdOOMScore(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	before := procFile(t, e.Pid(), "oom_score_adj")
	c := e.Process()
	done := make(chan error, 4)
	for w := 0; w < 4; w++ {
		go func() {
			for i := 0; i < 25; i++ {
				s, err := c.Start(procCtx(t), procReq(&pb.StartRequest{Process: procSh("cat /proc/self/oom_score_adj"), Stdin: ptr(false)}))
				if err != nil {
					done <- err
					return
				}
				ev := newProcReader[pb.StartResponse, *pb.StartResponse](s).drain()
				if ev.err != nil || ev.stdout() != "100\n" {
					done <- &spawnMismatch{ev.stdout(), ev.err}
					return
				}
			}
			done <- nil
		}()
	}
	deadline := time.After(2 * time.Minute)
	for w := 0; w < 4; w++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatal("spawns did not finish within 2 minutes")
		}
	}
	if got := procFile(t, e.Pid(), "oom_score_adj"); got != before {
		t.Fatalf("envd's oom_score_adj %q after the spawns, was %q", got, before)
	}
}

type spawnMismatch struct {
	out string
	err error
}

func (m *spawnMismatch) Error() string {
	return "child's oom_score_adj " + strconv.Quote(m.out) + ", stream error " + errString(m.err)
}

func errString(err error) string {
	if err == nil {
		return "none"
	}
	return err.Error()
}
