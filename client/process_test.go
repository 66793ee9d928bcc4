package client_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/client"
	"github.com/envd/envd/internal/envdtest"
)

func TestRun_OutputAndExitCode(t *testing.T) {
	for _, codec := range []string{"binary", "json"} {
		t.Run(codec, func(t *testing.T) {
			var opts []client.Option
			if codec == "json" {
				opts = append(opts, client.WithJSONCodec())
			}
			_, c := start(t, opts...)
			res, err := c.Run(ctx(t), "/bin/sh", []string{"-c", "echo out; echo err >&2; exit 3"})
			if err != nil {
				t.Fatal(err)
			}
			if string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" {
				t.Fatalf("stdout %q stderr %q", res.Stdout, res.Stderr)
			}
			want := client.ExitStatus{Code: 3, Exited: true, Status: "exit status 3", Error: "exit status 3"}
			if res.ExitStatus != want || res.Success() || res.Signaled() || res.PID == 0 {
				t.Fatalf("result %+v, want %+v", res, want)
			}
			var ee *client.ExitError
			if !errors.As(res.Err(), &ee) || ee.Status.Code != 3 {
				t.Fatalf("Err() = %v", res.Err())
			}
			res, err = c.Run(ctx(t), "true", nil)
			if err != nil || !res.Success() || res.Err() != nil || res.Status != "exit status 0" {
				t.Fatalf("true: %+v %v", res, err)
			}
		})
	}
}

func TestStart_EnvCwdUserTag(t *testing.T) {
	_, c := start(t)
	u := envdtest.EnsureUser(t, "envdclient")
	res, err := c.As(u.Name).Run(ctx(t), "/bin/sh", []string{"-c", `echo "$(id -un) $(pwd) $HOME $FOO"`},
		client.WithEnv(map[string]string{"FOO": "bar"}), client.WithEnv(map[string]string{"X": "y"}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(res.Stdout), u.Name+" "+u.Home+" "+u.Home+" bar\n"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	res, err = c.Run(ctx(t), "pwd", nil, client.WithCwd("/usr"))
	if err != nil || string(res.Stdout) != "/usr\n" {
		t.Fatalf("cwd: %q %v", res.Stdout, err)
	}
	_, err = c.Start(ctx(t), "true", nil, client.WithCwd("/no/such/dir"))
	wantError(t, err, connect.CodeInvalidArgument, 400, "cwd '/no/such/dir' does not exist")

	// A tagged background process is listed with its configuration.
	p, err := c.Start(ctx(t), "sleep", []string{"30"}, client.WithTag("sleeper"), client.WithCwd("/tmp"), client.WithEnv(map[string]string{"K": "V"}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Kill(context.Background(), client.PID(p.PID())) })
	list, err := c.List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(list, func(pi client.ProcessInfo) bool { return pi.PID == p.PID() })
	if i < 0 {
		t.Fatalf("pid %d not in %+v", p.PID(), list)
	}
	if pi := list[i]; pi.Tag != "sleeper" || !pi.Tagged || pi.Cmd != "sleep" || !slices.Equal(pi.Args, []string{"30"}) || pi.Cwd != "/tmp" || pi.Env["K"] != "V" {
		t.Fatalf("listed as %+v", pi)
	}
	if err := c.Kill(ctx(t), client.Tag("sleeper")); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if st.Exited || st.Code != -1 || st.Status != "signal: killed" || st.Signal() != 9 || !st.Signaled() {
		t.Fatalf("killed process: %+v (signal %d)", st, st.Signal())
	}
}

func TestStart_StdinPipe(t *testing.T) {
	_, c := start(t)
	p, err := c.Start(ctx(t), "cat", nil, client.WithStdin())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SendStdin(ctx(t), []byte("hello ")); err != nil {
		t.Fatal(err)
	}
	if err := c.SendStdin(ctx(t), client.PID(p.PID()), []byte("world")); err != nil {
		t.Fatal(err)
	}
	if err := p.CloseStdin(ctx(t)); err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(p.Stdout())
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "hello world" {
		t.Fatalf("cat echoed %q", out)
	}
	if st, err := p.Wait(); err != nil || !st.Success() {
		t.Fatalf("wait: %+v %v", st, err)
	}
	// Without WithStdin the process has /dev/null and no pipe to write to.
	q, err := c.Start(ctx(t), "sleep", []string{"30"})
	if err != nil {
		t.Fatal(err)
	}
	err = q.SendStdin(ctx(t), []byte("x"))
	wantError(t, err, connect.CodeInternal, 500, "error writing to stdin: stdin not enabled or closed")
	err = q.SendPTY(ctx(t), []byte("x"))
	wantError(t, err, connect.CodeInternal, 500, "")
	err = q.Resize(ctx(t), 80, 24)
	wantError(t, err, connect.CodeInternal, 500, "error resizing tty: tty not assigned to process")
	if err := q.Signal(ctx(t), client.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st, _ := q.Wait(); st.Status != "signal: terminated" || st.Signal() != 15 {
		t.Fatalf("after SIGTERM: %+v", st)
	}
}

func TestStart_StdinStream(t *testing.T) {
	_, c := start(t)
	p, err := c.Start(ctx(t), "sha256sum", nil, client.WithStdin())
	if err != nil {
		t.Fatal(err)
	}
	w, err := p.Stdin(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 300_000) // 4.8 MB: several messages
	if n, err := w.Write(data); err != nil || n != len(data) {
		t.Fatalf("write: %d %v", n, err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(p.Stdout())
	want := sha256hex(data)
	if !strings.HasPrefix(string(out), want) {
		t.Fatalf("sha256sum printed %q, want %s", out, want)
	}
	if st, err := p.Wait(); err != nil || !st.Success() {
		t.Fatalf("wait: %+v %v", st, err)
	}
	// Errors of a stream surface by Close at the latest.
	s, err := c.StreamInput(ctx(t), client.PID(p.PID()), client.InputStdin)
	if err == nil {
		_, _ = s.Write([]byte("late"))
		err = s.Close()
	}
	wantError(t, err, connect.CodeNotFound, 404, "process with pid "+strconv.Itoa(int(p.PID()))+" not found")
}

func TestStart_PTY(t *testing.T) {
	_, c := start(t)
	p, err := c.Start(ctx(t), "/bin/bash", []string{"--norc", "--noprofile", "-i"}, client.WithPTY(80, 24),
		client.WithEnv(map[string]string{"PS1": "$ ", "TERM": "dumb"}))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	r := bufio.NewReader(p.PTY())
	readUntil := func(s string) string {
		t.Helper()
		var got strings.Builder
		for !strings.Contains(got.String(), s) {
			b, err := r.ReadByte()
			if err != nil {
				t.Fatalf("reading pty (so far %q): %v", got.String(), err)
			}
			got.WriteByte(b)
		}
		return got.String()
	}
	if err := p.SendPTY(ctx(t), []byte("stty size\n")); err != nil {
		t.Fatal(err)
	}
	readUntil("24 80")
	if err := p.Resize(ctx(t), 100, 30); err != nil {
		t.Fatal(err)
	}
	if err := c.SendPTY(ctx(t), client.PID(p.PID()), []byte("stty size\n")); err != nil {
		t.Fatal(err)
	}
	readUntil("30 100")
	// Streamed terminal input.
	in, err := c.StreamInput(ctx(t), client.PID(p.PID()), client.InputPTY)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Write([]byte("echo streamed $((40+2))\n")); err != nil {
		t.Fatal(err)
	}
	if err := in.Close(); err != nil {
		t.Fatal(err)
	}
	readUntil("streamed 42")
	// A PTY has no stdin pipe to close.
	err = p.CloseStdin(ctx(t))
	wantError(t, err, connect.CodeUnknown, 500, "")
	if err := p.SendPTY(ctx(t), []byte("exit 7\n")); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = io.Copy(io.Discard, r) }()
	st, err := p.Wait()
	if err != nil || st.Code != 7 {
		t.Fatalf("wait: %+v %v", st, err)
	}
	// Run merges PTY output into Stdout.
	res, err := c.Run(ctx(t), "/bin/sh", []string{"-c", "stty size"}, client.WithPTY(50, 10))
	if err != nil || !strings.Contains(string(res.Stdout), "10 50") {
		t.Fatalf("run on a pty: %q %v", res.Stdout, err)
	}
}

func TestConnect_ByTagAndPIDAfterDetach(t *testing.T) {
	_, c := start(t)
	p, err := c.Start(ctx(t), "/bin/sh", []string{"-c", "echo first; read x; echo second $x; exit 4"}, client.WithStdin(), client.WithTag("job"))
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(p.Stdout()).ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first line %q %v", line, err)
	}
	// Detach: the process keeps running, Wait says detached.
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(); !errors.Is(err, client.ErrDetached) {
		t.Fatalf("Wait after Close: %v", err)
	}
	if _, err := p.Stdout().Read(make([]byte, 1)); !errors.Is(err, client.ErrDetached) {
		t.Fatalf("read after Close: %v", err)
	}
	q, err := c.Connect(ctx(t), client.Tag("job"))
	if err != nil {
		t.Fatal(err)
	}
	if q.PID() != p.PID() {
		t.Fatalf("connected to pid %d, want %d", q.PID(), p.PID())
	}
	if err := c.SendStdin(ctx(t), client.Tag("job"), []byte("two\n")); err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(q.Stdout())
	if string(out) != "second two\n" {
		t.Fatalf("connected stream got %q", out)
	}
	if st, err := q.Wait(); err != nil || st.Code != 4 {
		t.Fatalf("wait: %+v %v", st, err)
	}
	// The end is retained for a late Connect by pid.
	r, err := c.Connect(ctx(t), client.PID(p.PID()))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := r.Wait(); err != nil || st.Code != 4 {
		t.Fatalf("late connect: %+v %v", st, err)
	}
	_, err = c.Connect(ctx(t), client.Tag("no-such-tag"))
	wantError(t, err, connect.CodeNotFound, 404, `process with tag no-such-tag not found`)
	err = c.Kill(ctx(t), client.PID(p.PID()))
	if !client.IsNotFound(err) {
		t.Fatalf("kill of an ended process: %v", err)
	}
	live, err := c.Start(ctx(t), "sleep", []string{"30"})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Kill(context.Background())
	err = live.Signal(ctx(t), client.Signal(3))
	wantError(t, err, connect.CodeUnimplemented, 501, "invalid signal: 3")
}

func TestStart_CancelledContextDetaches(t *testing.T) {
	_, c := start(t)
	sctx, cancel := context.WithCancel(ctx(t))
	p, err := c.Start(sctx, "/bin/sh", []string{"-c", "sleep 1; echo done"})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := p.Wait(); err == nil {
		t.Fatal("Wait succeeded on a cancelled stream")
	}
	// The process ran to its end: its exit and output are retained.
	q, err := c.Connect(ctx(t), client.PID(p.PID()))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(q.Stdout())
	st, err := q.Wait()
	if err != nil || !st.Success() || string(out) != "done\n" {
		t.Fatalf("after detach: %q %+v %v", out, st, err)
	}
}

func TestStart_TimeoutKillsProcessGroup(t *testing.T) {
	_, c := start(t)
	// The caller's ctx deadline is not the process lifetime...
	dctx, cancel := context.WithTimeout(ctx(t), time.Hour)
	defer cancel()
	p, err := c.Start(dctx, "/bin/sh", []string{"-c", "sleep 1000 & echo $!; sleep 1000"}, client.WithTimeout(time.Second), client.WithTag("bounded"))
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(p.Stdout()).ReadString('\n')
	if err != nil {
		t.Fatalf("background pid: %q %v", line, err)
	}
	bg := strings.TrimSpace(line)
	// ...WithTimeout is.
	if _, err = p.Wait(); err != nil {
		wantError(t, err, connect.CodeDeadlineExceeded, 504, "")
	}
	q, err := c.Connect(ctx(t), client.PID(p.PID()))
	if err != nil {
		t.Fatal(err)
	}
	st, err := q.Wait()
	if err != nil || st.Status != "signal: killed" {
		t.Fatalf("timed-out process: %+v %v", st, err)
	}
	// The background sleep of the group is gone too (envd runs on this
	// machine, so its /proc is ours).
	deadline := time.Now().Add(10 * time.Second)
	for processAlive(bg) {
		if time.Now().After(deadline) {
			t.Fatalf("background sleep (pid %s) survived the timeout", bg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRun_ContextCancelKills(t *testing.T) {
	_, c := start(t)
	rctx, cancel := context.WithTimeout(ctx(t), 500*time.Millisecond)
	defer cancel()
	_, err := c.Run(rctx, "sleep", []string{"30"}, client.WithTag("run-cancel"))
	wantError(t, err, connect.CodeDeadlineExceeded, 504, "")
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := c.List(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(list, func(p client.ProcessInfo) bool { return p.Tag == "run-cancel" }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process still listed after Run's ctx ended: %+v", list)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProcess_LargeOutputWithOneReaderClosed(t *testing.T) {
	_, c := start(t)
	// 3 MiB on stderr that nobody wants (more than the client buffers),
	// then 3 MiB on stdout that we read. (In total less than envd's
	// per-subscriber queue, so that envd never disconnects us whatever our
	// speed: a producer faster than the reader is disconnected by design.)
	p, err := c.Start(ctx(t), "/bin/sh", []string{"-c", "head -c 3145728 /dev/zero >&2; head -c 3145728 /dev/zero"})
	if err != nil {
		t.Fatal(err)
	}
	p.Stderr().Close()
	n, err := io.Copy(io.Discard, p.Stdout())
	if err != nil || n != 3<<20 {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	if st, err := p.Wait(); err != nil || !st.Success() {
		t.Fatalf("wait: %+v %v", st, err)
	}
}

func TestExitStatus_Signal(t *testing.T) {
	cases := map[string]int{
		"signal: killed":                           9,
		"signal: terminated":                       15,
		"signal: segmentation fault (core dumped)": 11,
		"signal: signal 40":                        40,
		"signal: nonsense":                         0,
	}
	for status, want := range cases {
		if got := (client.ExitStatus{Code: -1, Status: status}).Signal(); got != want {
			t.Errorf("Signal() of %q = %d, want %d", status, got, want)
		}
	}
	if (client.ExitStatus{Exited: true, Status: "exit status 1"}).Signal() != 0 {
		t.Error("exited process has a signal")
	}
	if client.PID(7).String() != "pid 7" || client.Tag("a b").String() != `tag "a b"` {
		t.Error("selector strings")
	}
	if client.SIGKILL.String() != "SIGKILL" || client.SIGTERM.String() != "SIGTERM" || client.Signal(2).String() != "signal 2" {
		t.Error("signal strings")
	}
}
