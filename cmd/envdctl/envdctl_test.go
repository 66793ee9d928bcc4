package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/envd/envd/internal/envdtest"
)

var (
	buildOnce sync.Once
	buildDir  string
	ctlPath   string
	buildErr  error
)

// TestMain removes the envdctl binary built for the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// envdctl builds the envdctl binary once per test process.
func envdctl(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := envdtest.RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "envdctl-test-")
		if err != nil {
			buildErr = err
			return
		}
		buildDir = dir
		ctlPath = filepath.Join(dir, "envdctl")
		cmd := exec.Command("go", "build", "-o", ctlPath, "./cmd/envdctl")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build envdctl: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return ctlPath
}

// result of one envdctl run.
type result struct {
	stdout, stderr string
	code           int
}

// ctl runs envdctl against e with args, feeding stdin (may be nil).
func ctl(t *testing.T, e *envdtest.Envd, stdin io.Reader, args ...string) result {
	t.Helper()
	return ctlEnv(t, e, stdin, nil, args...)
}

func ctlEnv(t *testing.T, e *envdtest.Envd, stdin io.Reader, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, envdctl(t), args...)
	cmd.Env = append(filteredEnv(), "ENVD_ADDR="+e.URL)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("envdctl %v: %v", args, err)
	}
	return r
}

// filteredEnv is the test's environment without envdctl's variables.
func filteredEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ENVD_ADDR=") && !strings.HasPrefix(kv, "ENVD_TOKEN=") && !strings.HasPrefix(kv, "ENVD_USER=") {
			env = append(env, kv)
		}
	}
	return env
}

// ok fails unless r is a success.
func (r result) ok(t *testing.T) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	return r
}

// failed checks an error exit: the code, and one "envdctl: " line
// containing msg on stderr.
func (r result) failed(t *testing.T, code int, msg string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d (stdout %q, stderr %q)", r.code, code, r.stdout, r.stderr)
	}
	first, _, _ := strings.Cut(r.stderr, "\n")
	if !strings.HasPrefix(first, "envdctl: ") || !strings.Contains(first, msg) {
		t.Fatalf("stderr %q, want a line \"envdctl: ...%s...\"", r.stderr, msg)
	}
	if code == 1 && strings.Count(r.stderr, "\n") != 1 {
		t.Fatalf("error is not one line: %q", r.stderr)
	}
}

func fileHash(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func TestExec_ExitCodeAndStreams(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	r := ctl(t, e, nil, "exec", "--", "sh", "-c", "exit 3")
	if r.code != 3 || r.stdout != "" || r.stderr != "" {
		t.Fatalf("exit 3: %+v", r)
	}
	r = ctl(t, e, nil, "exec", "-e", "A=x", "--cwd", "/usr", "--", "sh", "-c", "echo out $A $(pwd); echo err >&2")
	if r.ok(t).stdout != "out x /usr\n" || r.stderr != "err\n" {
		t.Fatalf("streams: %+v", r)
	}
	r = ctl(t, e, nil, "exec", "--", "sh", "-c", "kill -9 $$")
	if r.code != 128+9 {
		t.Fatalf("killed by SIGKILL: exit %d", r.code)
	}
	r = ctl(t, e, strings.NewReader("piped input"), "exec", "-i", "--", "cat")
	if r.ok(t).stdout != "piped input" {
		t.Fatalf("stdin: %+v", r)
	}
	// Without -i the command's stdin is empty.
	r = ctl(t, e, strings.NewReader("ignored"), "exec", "--", "cat")
	if r.ok(t).stdout != "" {
		t.Fatalf("stdin leaked without -i: %+v", r)
	}
	r = ctl(t, e, nil, "exec", "--timeout", "500ms", "--", "sleep", "30")
	if r.code != 124 && r.code != 128+9 {
		t.Fatalf("timeout: %+v", r)
	}
	if r := ctl(t, e, nil, "exec", "--", "no-such-command-here"); r.code != 127 {
		t.Fatalf("missing command: %+v", r)
	}
	ctl(t, e, nil, "exec", "--cwd", "/no/such", "--", "true").failed(t, 1, "cwd '/no/such' does not exist")
	ctl(t, e, nil, "exec").failed(t, 2, "usage: envdctl exec")
}

func TestExec_TTYPromptInputResize(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	cmd := exec.Command(envdctl(t), "exec", "-t", "-e", "PS1=PROMPT> ", "--", "/bin/bash", "--norc", "--noprofile", "-i")
	cmd.Env = append(filteredEnv(), "ENVD_ADDR="+e.URL, "TERM=xterm")
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: 80, Rows: 24})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	var mu sync.Mutex
	var screen bytes.Buffer
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := tty.Read(buf)
			mu.Lock()
			screen.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	waitScreen := func(what string, retry func()) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		next := time.Now()
		for {
			mu.Lock()
			s := screen.String()
			mu.Unlock()
			if strings.Contains(s, what) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("terminal never showed %q; it shows %q", what, s)
			}
			if retry != nil && time.Now().After(next) {
				retry()
				next = time.Now().Add(time.Second)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitScreen("PROMPT> ", nil)
	// Input reaches the remote shell, whose output comes back.
	if _, err := tty.Write([]byte("echo $((6*7)) $TERM\r")); err != nil {
		t.Fatal(err)
	}
	waitScreen("42 xterm", nil)
	if _, err := tty.Write([]byte("stty size\r")); err != nil {
		t.Fatal(err)
	}
	waitScreen("24 80", nil)
	// A local resize is forwarded (SIGWINCH → Update).
	if err := pty.Setsize(tty, &pty.Winsize{Cols: 120, Rows: 40}); err != nil {
		t.Fatal(err)
	}
	waitScreen("40 120", func() { _, _ = tty.Write([]byte("stty size\r")) })
	// ^C goes to the remote terminal, not to envdctl.
	if _, err := tty.Write([]byte("sleep 100\r")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := tty.Write([]byte{3}); err != nil {
		t.Fatal(err)
	}
	if _, err := tty.Write([]byte("echo still $((1+1))\r")); err != nil {
		t.Fatal(err)
	}
	waitScreen("still 2", nil)
	if _, err := tty.Write([]byte("exit 5\r")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 5 {
			t.Fatalf("envdctl exec -t ended with %v, want exit 5", err)
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("envdctl exec -t did not end after the shell exited")
	}
}

func TestCp_100MiBBothWays(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	src := filepath.Join(dir, "big.bin")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, 100<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	want := fileHash(t, src)
	remote := filepath.Join(dir, "remote", "big.bin")
	ctl(t, e, nil, "cp", src, ":"+remote).ok(t)
	if got := fileHash(t, remote); got != want {
		t.Fatalf("uploaded copy differs: %s != %s", got, want)
	}
	back := filepath.Join(dir, "back.bin")
	ctl(t, e, nil, "cp", ":"+remote, back).ok(t)
	if got := fileHash(t, back); got != want {
		t.Fatalf("downloaded copy differs: %s != %s", got, want)
	}
	// The same with gzip on the wire.
	ctl(t, e, nil, "cp", "-z", src, ":"+remote+".gz-wire").ok(t)
	ctl(t, e, nil, "cp", "-z", ":"+remote+".gz-wire", back+".gz-wire").ok(t)
	if got := fileHash(t, back+".gz-wire"); got != want {
		t.Fatal("gzip round trip differs")
	}
	// Into an existing directory: keeps the name.
	ctl(t, e, nil, "cp", ":"+remote, dir+"/").ok(t)
	if fileHash(t, filepath.Join(dir, "big.bin")) != want {
		t.Fatal("copy into a directory differs")
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, ".envdctl-tmp-*")); len(matches) != 0 {
		t.Fatalf("temporary files left: %v", matches)
	}
}

func TestCp_DirectoriesBothWays(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	src := filepath.Join(dir, "tree")
	files := map[string]string{
		"a.txt":           "A",
		"sub/b.txt":       "BB",
		"sub/deep/c.bin":  string(bytes.Repeat([]byte{0, 1, 2}, 50_000)),
		"with space/d.sh": "#!/bin/sh\n",
	}
	for name, content := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.Chmod(filepath.Join(src, "with space/d.sh"), 0o755)
	if err := os.MkdirAll(filepath.Join(src, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a.txt", filepath.Join(src, "link-to-file")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub", filepath.Join(src, "link-to-dir")); err != nil {
		t.Fatal(err)
	}

	// Up: into a directory that does not exist yet → becomes the copy.
	remote := filepath.Join(dir, "remote")
	r := ctl(t, e, nil, "--json", "cp", src, ":"+remote).ok(t)
	var st cpStats
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("cp --json: %v: %q", err, r.stdout)
	}
	if st.Files != 5 || len(st.Skipped) != 1 || !strings.HasSuffix(st.Skipped[0], "link-to-dir") {
		t.Fatalf("stats %+v", st)
	}
	for name, content := range files {
		b, err := os.ReadFile(filepath.Join(remote, name))
		if err != nil || string(b) != content {
			t.Fatalf("remote %s: %d bytes, %v", name, len(b), err)
		}
	}
	if fi, err := os.Stat(filepath.Join(remote, "with space/d.sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("mode of the uploaded d.sh: %v %v", fi.Mode(), err)
	}
	if b, _ := os.ReadFile(filepath.Join(remote, "link-to-file")); string(b) != "A" {
		t.Fatalf("link to a file copied as %q", b)
	}
	if fi, err := os.Stat(filepath.Join(remote, "empty")); err != nil || !fi.IsDir() {
		t.Fatalf("empty directory not copied: %v", err)
	}
	// Up again into the now existing directory: lands inside it.
	ctl(t, e, nil, "cp", src, ":"+remote).ok(t)
	if b, _ := os.ReadFile(filepath.Join(remote, "tree", "sub", "b.txt")); string(b) != "BB" {
		t.Fatal("copy into an existing directory")
	}

	// Down.
	back := filepath.Join(dir, "back")
	ctl(t, e, nil, "-q", "cp", ":"+remote, back).failed(t, 2, "") // -q is a cp flag, not global
	ctl(t, e, nil, "cp", "-q", ":"+remote, back).ok(t)
	for name, content := range files {
		b, err := os.ReadFile(filepath.Join(back, name))
		if err != nil || string(b) != content {
			t.Fatalf("local %s: %d bytes, %v", name, len(b), err)
		}
	}
	if fi, err := os.Stat(filepath.Join(back, "with space/d.sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("mode of d.sh not kept: %v %v", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Join(back, "empty")); err != nil || !fi.IsDir() {
		t.Fatalf("empty directory not copied back: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(back, "tree", "a.txt")); string(b) != "A" {
		t.Fatal("nested copy not copied back")
	}
}

func TestCp_StdinStdoutAndErrors(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	ctl(t, e, strings.NewReader("from stdin"), "cp", "-", ":"+dir+"/s.txt").ok(t)
	if r := ctl(t, e, nil, "cp", ":"+dir+"/s.txt", "-").ok(t); r.stdout != "from stdin" {
		t.Fatalf("to stdout: %q", r.stdout)
	}
	ctl(t, e, nil, "cp", "a", "b").failed(t, 2, "exactly one of SOURCE and DESTINATION")
	ctl(t, e, nil, "cp", ":/x", ":/y").failed(t, 2, "exactly one of SOURCE and DESTINATION")
	ctl(t, e, nil, "cp", ":"+dir+"/missing", dir+"/x").failed(t, 1, "not found")
	ctl(t, e, nil, "cp", dir+"/missing", ":"+dir+"/x").failed(t, 1, "no such file")
	ctl(t, e, nil, "cp", dir+"/s.txt", ":/proc/no-such-dir/x").failed(t, 1, "")
}

func TestCp_ProgressBarOnTerminal(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	src := filepath.Join(dir, "p.bin")
	if err := os.WriteFile(src, bytes.Repeat([]byte("x"), 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(envdctl(t), "cp", src, ":"+dir+"/remote.bin")
	cmd.Env = append(filteredEnv(), "ENVD_ADDR="+e.URL)
	tty, err := pty.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	out, _ := io.ReadAll(tty) // EIO once the child is gone
	if err := cmd.Wait(); err != nil {
		t.Fatalf("cp on a terminal: %v: %q", err, out)
	}
	if !strings.Contains(string(out), "100%") || !strings.Contains(string(out), "8.0 MiB / 8.0 MiB") {
		t.Fatalf("no progress bar: %q", out)
	}
	// Not on a pipe.
	if r := ctl(t, e, nil, "cp", src, ":"+dir+"/remote2.bin").ok(t); r.stdout != "" {
		t.Fatalf("progress on a pipe: %q", r.stdout)
	}
}

func TestAttachKillPs(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	r := ctl(t, e, nil, "exec", "-d", "--tag", "late", "--", "sh", "-c", "sleep 0.5; echo late output; exit 6").ok(t)
	pid := strings.TrimSpace(r.stdout)
	if r := ctl(t, e, nil, "ps").ok(t); !strings.Contains(r.stdout, pid+"  late  sh -c 'sleep 0.5; echo late output; exit 6'") {
		t.Fatalf("ps: %q", r.stdout)
	}
	r = ctl(t, e, nil, "attach", "late")
	if r.code != 6 || r.stdout != "late output\n" {
		t.Fatalf("attach by tag: %+v", r)
	}
	// Attach by pid to a process that keeps running until killed.
	r = ctl(t, e, nil, "exec", "-d", "--", "sleep", "100").ok(t)
	pid = strings.TrimSpace(r.stdout)
	done := make(chan result, 1)
	go func() { done <- ctl(t, e, nil, "attach", pid) }()
	time.Sleep(300 * time.Millisecond)
	ctl(t, e, nil, "kill", "-s", "KILL", pid).ok(t)
	select {
	case r := <-done:
		if r.code != 128+9 {
			t.Fatalf("attach of a killed process: %+v", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("attach did not end after kill")
	}
	if r := ctl(t, e, nil, "ps").ok(t); strings.Contains(r.stdout, pid) {
		t.Fatalf("killed process still listed: %q", r.stdout)
	}
	ctl(t, e, nil, "kill", pid).failed(t, 1, "not found")
	ctl(t, e, nil, "kill", "-s", "HUP", "1").failed(t, 2, "unsupported signal")
	ctl(t, e, nil, "attach", "--tag", "123").failed(t, 1, "process with tag 123 not found")
}

func TestFilesystemCommands(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	ctl(t, e, nil, "mkdir", dir+"/a/b").ok(t)
	ctl(t, e, nil, "mkdir", dir+"/a").failed(t, 1, "directory already exists")
	ctl(t, e, nil, "mkdir", "-p", dir+"/a").ok(t)
	if err := os.WriteFile(dir+"/a/f.txt", []byte("12345"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := ctl(t, e, nil, "ls", "-d", "2", dir).ok(t)
	for _, want := range []string{"drwxr-xr-x root root", " a\n", " a/b\n", "-rw------- root root 5", " a/f.txt\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("ls output lacks %q:\n%s", want, r.stdout)
		}
	}
	r = ctl(t, e, nil, "stat", dir+"/a/f.txt").ok(t)
	if !strings.Contains(r.stdout, "size      5") || !strings.Contains(r.stdout, "type      file") {
		t.Fatalf("stat:\n%s", r.stdout)
	}
	ctl(t, e, nil, "mv", dir+"/a/f.txt", dir+"/g.txt").ok(t)
	if _, err := os.Stat(dir + "/g.txt"); err != nil {
		t.Fatal(err)
	}
	ctl(t, e, nil, "rm", dir+"/a", dir+"/g.txt", dir+"/never-existed").ok(t)
	if _, err := os.Stat(dir + "/a"); !os.IsNotExist(err) {
		t.Fatal("rm left the tree")
	}
	ctl(t, e, nil, "stat", dir+"/a").failed(t, 1, "file not found")
	ctl(t, e, nil, "ls", dir+"/nope").failed(t, 1, "not found")
	ctl(t, e, nil, "mv", dir).failed(t, 2, "usage: envdctl mv")
}

func TestWatchCommand(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	cmd := exec.Command(envdctl(t), "--json", "watch", "-n", "2", dir)
	cmd.Env = append(filteredEnv(), "ENVD_ADDR="+e.URL)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// Write until the watch (which starts asynchronously) has seen two
	// events.
	deadline := time.After(30 * time.Second)
	for i := 0; ; i++ {
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("watch: %v: %s", err, out.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if len(lines) != 2 {
				t.Fatalf("watch -n 2 printed %q", out.String())
			}
			for _, l := range lines {
				var ev struct{ Name, Type string }
				if err := json.Unmarshal([]byte(l), &ev); err != nil || !strings.HasPrefix(ev.Name, "f") || ev.Type == "" {
					t.Fatalf("event line %q: %v", l, err)
				}
			}
			return
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatalf("watch did not report two events: %q", out.String())
		case <-time.After(100 * time.Millisecond):
			_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), []byte("x"), 0o644)
		}
	}
}

func TestJSONOutputParses(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	check := func(v any, args ...string) {
		t.Helper()
		r := ctl(t, e, nil, append([]string{"--json"}, args...)...)
		if r.code != 0 {
			t.Fatalf("envdctl --json %v: exit %d: %s", args, r.code, r.stderr)
		}
		if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
			t.Fatalf("envdctl --json %v: %v in %q", args, err, r.stdout)
		}
	}
	var health struct{ Version string }
	check(&health, "health")
	if health.Version != envdtest.Version(t) {
		t.Fatalf("health %+v", health)
	}
	var metrics struct {
		MemTotal int64 `json:"mem_total"`
		CPUCount int   `json:"cpu_count"`
	}
	check(&metrics, "metrics")
	if metrics.MemTotal <= 0 || metrics.CPUCount <= 0 {
		t.Fatalf("metrics %+v", metrics)
	}
	var initOut struct{ Version string }
	check(&initOut, "init", "-e", "JSONVAR=1")
	var env map[string]string
	check(&env, "env")
	if env["JSONVAR"] != "1" {
		t.Fatalf("env %v", env)
	}
	var started struct{ PID uint32 }
	check(&started, "exec", "-d", "--tag", "j", "--", "sleep", "100")
	var ps []struct {
		PID    uint32
		Tag    string
		Tagged bool
		Cmd    string
		Args   []string
	}
	check(&ps, "ps")
	if len(ps) != 1 || ps[0].PID != started.PID || ps[0].Tag != "j" || ps[0].Cmd != "sleep" {
		t.Fatalf("ps %+v (started %d)", ps, started.PID)
	}
	var killed []struct{ Target, Signal string }
	check(&killed, "kill", "j")
	if len(killed) != 1 || killed[0].Signal != "SIGTERM" {
		t.Fatalf("kill %+v", killed)
	}
	var ran struct {
		PID      uint32
		ExitCode int
		Exited   bool
		Status   string
		Stdout   string
		Stderr   string
	}
	r := ctl(t, e, nil, "--json", "exec", "--", "sh", "-c", "echo o; echo e >&2; exit 2")
	if r.code != 2 {
		t.Fatalf("exec --json exit %d", r.code)
	}
	if err := json.Unmarshal([]byte(r.stdout), &ran); err != nil || ran.ExitCode != 2 || ran.Stdout != "o\n" || ran.Stderr != "e\n" || ran.Status != "exit status 2" {
		t.Fatalf("exec --json %+v %v", ran, err)
	}
	var made []struct{ Path, Type string }
	check(&made, "mkdir", dir+"/j")
	if len(made) != 1 || made[0].Path != dir+"/j" || made[0].Type != "dir" {
		t.Fatalf("mkdir %+v", made)
	}
	var cp cpStats
	check(&cp, "cp", "/etc/hostname", ":"+dir+"/j/h")
	if cp.Files != 1 {
		t.Fatalf("cp %+v", cp)
	}
	var ls []struct {
		Name string
		Size int64
		Mode uint32
	}
	check(&ls, "ls", dir+"/j")
	if len(ls) != 1 || ls[0].Name != "h" {
		t.Fatalf("ls %+v", ls)
	}
	var stat struct {
		Path, Owner string
		ModTime     time.Time
	}
	check(&stat, "stat", dir+"/j/h")
	if stat.Owner != "root" || stat.ModTime.IsZero() {
		t.Fatalf("stat %+v", stat)
	}
	var moved struct{ Path string }
	check(&moved, "mv", dir+"/j/h", dir+"/j/h2")
	if moved.Path != dir+"/j/h2" {
		t.Fatalf("mv %+v", moved)
	}
	var removed struct{ Removed []string }
	check(&removed, "rm", dir+"/j")
	if len(removed.Removed) != 1 {
		t.Fatalf("rm %+v", removed)
	}
}

func TestGlobalFlagsEnvAndErrors(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	u := envdtest.EnsureUser(t, "envdctl-user")
	// --user after the command, and ENVD_USER.
	if r := ctl(t, e, nil, "exec", "--user", u.Name, "--", "id", "-un").ok(t); r.stdout != u.Name+"\n" {
		t.Fatalf("--user: %q", r.stdout)
	}
	if r := ctlEnv(t, e, nil, []string{"ENVD_USER=" + u.Name}, "exec", "--", "sh", "-c", "echo $HOME").ok(t); r.stdout != u.Home+"\n" {
		t.Fatalf("ENVD_USER: %q", r.stdout)
	}
	script := filepath.Join(t.TempDir(), "script.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho ran as $(id -un)\n"), 0o750); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Join(u.Home, "bin")) })
	ctl(t, e, nil, "--user", u.Name, "cp", script, ":~/bin/").ok(t)
	if r := ctl(t, e, nil, "stat", u.Home+"/bin/script.sh").ok(t); !strings.Contains(r.stdout, "owner     "+u.Name+":") || !strings.Contains(r.stdout, "(0750)") {
		t.Fatalf("uploaded script not owned by %s with mode 0750:\n%s", u.Name, r.stdout)
	}
	if r := ctl(t, e, nil, "--user", u.Name, "exec", "--", "bin/script.sh").ok(t); r.stdout != "ran as "+u.Name+"\n" {
		t.Fatalf("running the uploaded script: %q", r.stdout)
	}
	// Where the user cannot reach the file, the mode stays envd's default
	// and cp warns.
	locked := t.TempDir() // its parent is 0700 root
	r := ctl(t, e, nil, "--user", u.Name, "cp", script, ":"+locked+"/s.sh").ok(t)
	if !strings.HasPrefix(r.stderr, "envdctl: warning: cp: setting file modes") {
		t.Fatalf("no warning: %q", r.stderr)
	}
	ctl(t, e, nil, "--user", "no-such-user-x", "ls", "/").failed(t, 1, "invalid username: 'no-such-user-x'")

	// Tokens: set one, then every protected command needs it.
	ctl(t, e, nil, "init", "--new-token", "tok-123").ok(t)
	ctl(t, e, nil, "env").failed(t, 1, "unauthorized access")
	ctl(t, e, nil, "--token", "tok-123", "env").ok(t)
	ctlEnv(t, e, nil, []string{"ENVD_TOKEN=tok-123"}, "ps").ok(t)
	ctl(t, e, nil, "--token", "wrong", "cp", ":/etc/hostname", "-").failed(t, 1, "unauthorized access")
	// An init with --token keeps the token.
	ctl(t, e, nil, "--token", "tok-123", "init", "-e", "X=1").ok(t)
	ctl(t, e, nil, "--token", "tok-123", "health").ok(t)
	ctl(t, e, nil, "health").ok(t) // /health needs no token

	ctl(t, e, nil, "frobnicate").failed(t, 2, `unknown command "frobnicate"`)
	ctl(t, e, nil, "ls", "--no-such-flag").failed(t, 2, "flag provided but not defined")
	ctl(t, e, nil).failed(t, 2, "no command given")
	ctlEnv(t, e, nil, []string{"ENVD_ADDR=127.0.0.1:" + fmt.Sprint(envdtest.FreePort(t))}, "health").failed(t, 1, "connection refused")
	if r := ctl(t, e, nil, "help").ok(t); !strings.Contains(r.stdout, "Commands:") {
		t.Fatalf("help: %q", r.stdout)
	}
	if r := ctl(t, e, nil, "help", "exec").ok(t); !strings.Contains(r.stdout, "-timeout duration") {
		t.Fatalf("help exec: %q", r.stdout)
	}
}

// upgrade: a refusal says why and that the old envd keeps serving; a
// re-exec (the only upgrade safe outside a namespace of the test's own: it
// stages nothing in /usr/bin) is followed by an /init with the same token,
// which lifts the post-upgrade gate, and the handover is reported. Uploads
// of real binaries are driven by test/e2e (TestUpgrade_Envdctl).
func TestUpgrade_ReExecInitsWithTheSameToken(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	ctl(t, e, nil, "upgrade").failed(t, 2, "usage: envdctl upgrade BINARY | --reexec")
	ctl(t, e, nil, "upgrade", "--reexec", "/bin/true").failed(t, 2, "usage: envdctl upgrade")
	ctl(t, e, nil, "upgrade", "--reexec").failed(t, 1, "upgrade refused, the running envd keeps serving: POST /upgrade: envd not initialized")
	ctl(t, e, nil, "init", "--new-token", "ctl-upgrade").ok(t)
	ctl(t, e, nil, "upgrade", "--reexec").failed(t, 1, "unauthorized access")
	r := ctl(t, e, nil, "--token", "ctl-upgrade", "upgrade", "--reexec").ok(t)
	if !strings.HasPrefix(r.stdout, "upgraded ") || !strings.Contains(r.stdout, "0 processes (0 failed), 0 retained exits (0 failed), 0 polling watchers (0 failed) carried") {
		t.Fatalf("stdout %q", r.stdout)
	}
	ctl(t, e, nil, "--token", "ctl-upgrade", "env").ok(t)
	ctl(t, e, nil, "env").failed(t, 1, "unauthorized access")
	r = ctl(t, e, nil, "--token", "ctl-upgrade", "--json", "upgrade", "--reexec", "--no-init").ok(t)
	var out struct {
		From, To string
		Handover *struct{ Failed bool }
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.From == "" || out.To != out.From || out.Handover != nil {
		t.Fatalf("--json --no-init: %q %v", r.stdout, err)
	}
	// Without the /init the gate stays closed.
	ctl(t, e, nil, "--token", "ctl-upgrade", "env").failed(t, 1, "envd not initialized")
	ctl(t, e, nil, "--token", "ctl-upgrade", "init").ok(t)
	ctl(t, e, nil, "--token", "ctl-upgrade", "env").ok(t)
}
