package e2e

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// SendSignal reaches the whole process group: no sleep survives (D10).
func TestProcess_SendSignalKillsWholeGroup(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := e.Process()
	ctx := procCtx(t)
	for _, tc := range []struct {
		sig    pb.Signal
		sel    func(pid uint32) *pb.ProcessSelector
		status string
	}{
		{pb.Signal_SIGNAL_SIGKILL, procPID, "signal: killed"},
		{pb.Signal_SIGNAL_SIGTERM, func(uint32) *pb.ProcessSelector { return procTag("tree") }, "signal: terminated"},
	} {
		r := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "bash", Args: []string{"-c", "sleep 1000 & sleep 1000 & echo up; sleep 1000"}}, Tag: ptr("tree")}))
		r.until(t, "stdout", "up")
		if n := len(groupMembers(t, r.ev.pid)); n < 3 {
			t.Fatalf("group %d has %d members", r.ev.pid, n)
		}
		if _, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: tc.sel(r.ev.pid), Signal: tc.sig})); err != nil {
			t.Fatal(err)
		}
		wantEnd(t, r.drain(), -1, false, tc.status)
		waitGroupGone(t, r.ev.pid)
	}
}

// The Start deadline is the process lifetime: the whole group is killed
// and the stream ends deadline_exceeded; the exit is retained.
func TestProcess_StartDeadlineKillsWholeGroup(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for _, codec := range procCodecs {
		t.Run(codec.name, func(t *testing.T) {
			t.Parallel()
			c := e.Process(codec.opts...)
			ctx, cancel := context.WithTimeout(procCtx(t), 1500*time.Millisecond)
			defer cancel()
			r := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: procSh("sleep 1000 & sleep 1000")}))
			ev := r.drain()
			if connect.CodeOf(ev.err) != connect.CodeDeadlineExceeded {
				t.Fatalf("stream ended with %v after %v", ev.err, ev.kinds)
			}
			waitGroupGone(t, r.ev.pid)
			ev = procConnect(t, procCtx(t), c, procReq(&pb.ConnectRequest{Process: procPID(r.ev.pid)})).drain()
			wantEnd(t, ev, -1, false, "signal: killed")
		})
	}
	// A cancelled Start stream with a deadline still ends the process at
	// the deadline (E2B's semantics: the deadline, not the stream, bounds it).
	c := e.Process()
	ctx, cancel := context.WithTimeout(procCtx(t), 1000*time.Millisecond)
	r := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: procSh("sleep 1000 & sleep 1000"), Tag: ptr("bounded")}))
	cancel()
	ev := procConnect(t, procCtx(t), c, procReq(&pb.ConnectRequest{Process: procTag("bounded")})).drain()
	wantEnd(t, ev, -1, false, "signal: killed")
	waitGroupGone(t, r.ev.pid)
}

// A Connect deadline bounds only that stream.
func TestProcess_ConnectDeadlineLeavesProcessRunning(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := e.Process()
	r := procStart(t, procCtx(t), c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "sleep", Args: []string{"1000"}}}))
	ctx, cancel := context.WithTimeout(procCtx(t), 500*time.Millisecond)
	defer cancel()
	ev := procConnect(t, ctx, c, procReq(&pb.ConnectRequest{Process: procPID(r.ev.pid)})).drain()
	if connect.CodeOf(ev.err) != connect.CodeDeadlineExceeded {
		t.Fatalf("connect ended with %v", ev.err)
	}
	time.Sleep(100 * time.Millisecond)
	if len(groupMembers(t, r.ev.pid)) == 0 {
		t.Fatal("the process died with the Connect deadline")
	}
}

// After SendSignal, the end does not wait for a pipe held by a process
// outside the group (spec rpc.md §4.9); without a signal it does (§4.3).
func TestProcess_EndWaitsForPipesUnlessSignalled(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := e.Process()
	ctx := procCtx(t)
	r := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: procSh("setsid sh -c 'echo $$; sleep 1; echo late-from-holder; exec sleep 1000' & sleep 0.2; exit 4")}))
	r.until(t, "stdout", "\n")
	holder, err := strconv.Atoi(strings.TrimSpace(r.ev.stdout()))
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(holder, syscall.SIGKILL)
	// The leader exits after 0.2 s, but the end waits for the holder's
	// output (it still holds stdout).
	r.until(t, "stdout", "late-from-holder")
	for _, k := range r.ev.kinds {
		if k == "end" {
			t.Fatalf("end before the pipes closed: %v", r.ev.kinds)
		}
	}
	if _, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: procPID(r.ev.pid), Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatalf("signal to a group that is gone: %v", err)
	}
	ev := r.drain()
	wantEnd(t, ev, 4, true, "exit status 4")
}

// Exit retention: a late Connect by pid or tag gets start and end; among
// many tagged processes the right one is chosen.
func TestProcess_ExitRetentionAndTags(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := e.Process()
	ctx := procCtx(t)
	// Three live processes share a tag; they end in the order B, C, A.
	var rs []*procReader[pb.StartResponse, *pb.StartResponse]
	for i := 1; i <= 3; i++ {
		rs = append(rs, procStart(t, ctx, c, procReq(&pb.StartRequest{Process: procSh("read x; exit " + strconv.Itoa(i)), Tag: ptr("job")})))
	}
	for _, i := range []int{1, 2, 0} {
		procStdin(t, ctx, c, procPID(rs[i].ev.pid), "\n")
		wantEnd(t, rs[i].drain(), int32(i+1), true, "exit status "+strconv.Itoa(i+1))
	}
	// By pid: each its own exit.
	for i, r := range rs {
		ev := procConnect(t, ctx, c, procReq(&pb.ConnectRequest{Process: procPID(r.ev.pid)})).drain()
		wantEnd(t, ev, int32(i+1), true, "exit status "+strconv.Itoa(i+1))
		if ev.pid != r.ev.pid || len(ev.kinds) != 2 {
			t.Fatalf("pid %d: %v", r.ev.pid, ev.kinds)
		}
	}
	// By tag: the most recently ended (A, exit 1).
	ev := procConnect(t, ctx, c, procReq(&pb.ConnectRequest{Process: procTag("job")})).drain()
	wantEnd(t, ev, 1, true, "exit status 1")
	if ev.pid != rs[0].ev.pid {
		t.Fatalf("tag job → pid %d, want %d", ev.pid, rs[0].ev.pid)
	}
	// Many live tagged and untagged processes: the most recently started
	// live one with exactly the tag wins over retained exits.
	type started struct {
		tag *string
		r   *procReader[pb.StartResponse, *pb.StartResponse]
	}
	var procs []started
	for _, tag := range []*string{ptr("job"), nil, ptr("other"), ptr("job"), ptr(""), nil, ptr("jo")} {
		procs = append(procs, started{tag, procStart(t, ctx, c, procReq(&pb.StartRequest{Process: procSh("read x; echo got-$x"), Tag: tag}))})
	}
	for _, tag := range []string{"job", "other", "", "jo"} {
		procStdin(t, ctx, c, procTag(tag), "["+tag+"]\n")
	}
	want := map[int]string{3: "got-[job]\n", 2: "got-[other]\n", 4: "got-[]\n", 6: "got-[jo]\n"}
	for i, p := range procs {
		if w, ok := want[i]; ok {
			if ev := p.r.drain(); ev.stdout() != w {
				t.Fatalf("process %d (tag %v) got %q, want %q", i, p.tag, ev.stdout(), w)
			}
		}
	}
	// The first "job" and the untagged ones got nothing.
	for _, i := range []int{0, 1, 5} {
		if procs[i].r.ev.stdout() != "" {
			t.Fatalf("process %d got input meant for another", i)
		}
	}
	// Starting "job" again evicted the retained exits with that tag: the
	// Connect now attaches to the live one (index 0), not to exit 3.
	cr := procConnect(t, ctx, c, procReq(&pb.ConnectRequest{Process: procTag("job")}))
	if cr.ev.pid != procs[0].r.ev.pid {
		t.Fatalf("tag job → pid %d, want the live %d", cr.ev.pid, procs[0].r.ev.pid)
	}
}

// --cmd starts a process tagged init-cmd, listed and connectable, whose
// output waits for the first Connect.
func TestProcess_InitCmd(t *testing.T) {
	e := procEnvd(t, envdtest.Options{Args: []string{"--cmd", "echo init-output; echo $0; read x"}})
	c := e.Process()
	ctx := procCtx(t)
	var info *pb.ProcessInfo
	deadline := time.Now().Add(10 * time.Second)
	for info == nil {
		l, err := c.List(ctx, connect.NewRequest(&pb.ListRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range l.Msg.GetProcesses() {
			if p.GetTag() == "init-cmd" {
				info = p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("init-cmd not listed: %v", l.Msg)
		}
	}
	if info.GetConfig().GetCmd() != "/bin/bash" || strings.Join(info.GetConfig().GetArgs(), "|") != "-l|-c|echo init-output; echo $0; read x" || info.GetConfig().Cwd != nil {
		t.Fatalf("config %v", info.GetConfig())
	}
	cr := procConnect(t, ctx, c, procReq(&pb.ConnectRequest{Process: procTag("init-cmd")}))
	cr.until(t, "stdout", "init-output\n/bin/bash\n")
	// stdin is /dev/null: `read` already returned, the process ends.
	ev := cr.drain()
	wantEnd(t, ev, 1, true, "exit status 1")
	if !strings.Contains(e.Log(), `tag=init-cmd`) {
		t.Fatal("init-cmd start not logged")
	}
}

// The process log lines carry pid, command, tag and byte counts, and never
// the output, the input or environment values.
func TestProcess_LoggingWithoutSecrets(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := e.Process()
	ctx := procCtx(t)
	r := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "sh", Args: []string{"-c", "cat; echo out-secret-1; echo $SECRET"}, Envs: map[string]string{"SECRET": "env-secret-2"}}, Tag: ptr("logged")}))
	procStdin(t, ctx, c, procPID(r.ev.pid), "stdin-secret-3\n")
	if _, err := c.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: procPID(r.ev.pid)})); err != nil {
		t.Fatal(err)
	}
	wantEnd(t, r.drain(), 0, true, "exit status 0")
	pid := strconv.FormatUint(uint64(r.ev.pid), 10)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := e.WaitLog(wctx, "process ended pid="+pid); err != nil {
		t.Fatal(err)
	}
	log := e.Log()
	// The command line is logged (it holds out-secret-1 once); nothing else.
	if strings.Contains(log, "env-secret-2") || strings.Contains(log, "stdin-secret-3") || strings.Count(log, "out-secret-1") != 1 {
		t.Fatalf("process data in the log:\n%s", log)
	}
	if !strings.Contains(log, "process started pid="+pid+` cmd="sh -c cat; echo out-secret-1; echo $SECRET" tag=logged`) ||
		!strings.Contains(log, "process ended pid="+pid+` exit_code=0 status="exit status 0" stdout_bytes=41 stderr_bytes=0`) {
		t.Fatalf("start/end lines missing:\n%s", log)
	}
}
