package process

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/identity"
	"github.com/envd/envd/internal/reaper"
)

// These tests start real processes. The test binary's one reaper collects
// their statuses, as envd's does; nothing here uses os/exec.
var testReaper *reaper.Reaper

func TestMain(m *testing.M) {
	testReaper = reaper.New(slog.New(slog.DiscardHandler))
	testReaper.Start()
	code := m.Run()
	testReaper.Stop()
	os.Exit(code)
}

func newManager(t *testing.T, p Placement) *Manager {
	t.Helper()
	m := New(Options{Spawner: testReaper, Defaults: defaults.New("root"), Placement: p})
	t.Cleanup(func() { checkBuffers(t, m) })
	return m
}

// checkBuffers fails the test if a read buffer's references were ever
// dropped below zero (a buffer reused while a holder still had it).
func checkBuffers(t *testing.T, m *Manager) {
	t.Helper()
	if n := m.pipeBufs.overReleased.Load() + m.ptyBufs.overReleased.Load(); n != 0 {
		t.Errorf("read buffers released %d times too often", n)
	}
}

func root(t *testing.T) *identity.User {
	t.Helper()
	u, err := identity.LookupUser("root")
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func sh(script string) Config { return Config{Cmd: "/bin/sh", Args: []string{"-c", script}} }

type result struct {
	out [numStreams]bytes.Buffer
	end *End
	err error
}

// collect reads a subscription to its end (or fails the test after 20 s).
func collect(t *testing.T, s *Subscription) *result {
	t.Helper()
	r := &result{}
	deadline := time.After(20 * time.Second)
	for {
		for {
			it, ok := s.Next()
			if !ok {
				break
			}
			switch {
			case it.Err != nil:
				r.err = it.Err
				return r
			case it.End != nil:
				r.end = it.End
				return r
			}
			r.out[it.Chunk.Stream].Write(it.Chunk.Data)
		}
		select {
		case <-s.Ready():
		case <-deadline:
			t.Fatal("subscription did not end within 20 s")
		}
	}
}

func start(t *testing.T, m *Manager, o StartOptions) (*Process, *Subscription) {
	t.Helper()
	if o.User == nil {
		o.User = root(t)
	}
	p, s, err := m.Start(o)
	if err != nil {
		t.Fatalf("start %q: %v", commandLine(o.Config), err)
	}
	// Never leave a process behind, whatever the test did.
	t.Cleanup(func() { _ = syscall.Kill(-int(p.PID()), syscall.SIGKILL) })
	return p, s
}

// waitFor reads a subscription until its output of stream st contains
// want, returning everything read.
func waitFor(t *testing.T, s *Subscription, st Stream, want string) string {
	t.Helper()
	var b strings.Builder
	deadline := time.After(10 * time.Second)
	for !strings.Contains(b.String(), want) {
		if it, ok := s.Next(); ok {
			if it.End != nil || it.Err != nil {
				t.Fatalf("ended before %q: %+v %v (got %q)", want, it.End, it.Err, b.String())
			}
			if it.Chunk.Stream == st {
				b.Write(it.Chunk.Data)
			}
			continue
		}
		select {
		case <-s.Ready():
		case <-deadline:
			t.Fatalf("no %q within 10 s (got %q)", want, b.String())
		}
	}
	return b.String()
}

func TestManager_StartStreamsOutputThenEnd(t *testing.T) {
	m := newManager(t, nil)
	p, s := start(t, m, StartOptions{Config: sh("echo out; echo err >&2; exit 3")})
	defer s.Close()
	r := collect(t, s)
	if r.out[Stdout].String() != "out\n" || r.out[Stderr].String() != "err\n" {
		t.Fatalf("output %q %q", r.out[Stdout].String(), r.out[Stderr].String())
	}
	if *r.end != (End{ExitCode: 3, Exited: true, Status: "exit status 3", Error: "exit status 3", HasError: true}) {
		t.Fatalf("end %+v", r.end)
	}
	<-p.Done()
	if len(m.List()) != 0 {
		t.Fatal("ended process still listed")
	}
}

func TestManager_UnclaimedOutputDeliveredOnceThenRetention(t *testing.T) {
	m := newManager(t, nil)
	p, _ := start(t, m, StartOptions{Config: sh("echo hello"), detached: true})
	<-p.Done()
	a, err := m.Connect(ByPID(p.PID()), nil)
	if err != nil {
		t.Fatal(err)
	}
	r := collect(t, a.Sub)
	a.Sub.Close()
	if r.out[Stdout].String() != "hello\n" || r.end == nil || r.end.Status != "exit status 0" {
		t.Fatalf("first connect: %q %+v", r.out[Stdout].String(), r.end)
	}
	a, err = m.Connect(ByPID(p.PID()), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := collect(t, a.Sub); r.out[Stdout].Len() != 0 || r.end == nil {
		t.Fatalf("second connect got output again: %q", r.out[Stdout].String())
	}
	// Replay still has it, from any offset.
	a, err = m.Connect(ByPID(p.PID()), &Offsets{Stdout: 2})
	if err != nil {
		t.Fatal(err)
	}
	if r := collect(t, a.Sub); r.out[Stdout].String() != "llo\n" || a.Start[Stdout] != 2 {
		t.Fatalf("replay: %q from %v", r.out[Stdout].String(), a.Start)
	}
	if _, err := m.Connect(ByPID(p.PID()), &Offsets{Stdout: 7}); KindOf(err) != KindInvalidArgument {
		t.Fatalf("offset beyond the output: %v", err)
	}
}

func TestManager_LastSubscriberLeavingKeepsUnseenOutput(t *testing.T) {
	m := newManager(t, nil)
	// The client reads only the start, as the Wrenn host does for
	// background processes; what it never took is kept for Connect.
	p, s := start(t, m, StartOptions{Config: sh("echo early; read x; echo late"), Tag: strp("bg")})
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.mu.Lock()
		n := p.ring.next[Stdout]
		p.mu.Unlock()
		if n == 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no output")
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.Close()
	if err := p.WriteStdin(t.Context(), []byte("\n")); err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	a, err := m.Connect(ByTag("bg"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := collect(t, a.Sub); r.out[Stdout].String() != "early\nlate\n" {
		t.Fatalf("got %q", r.out[Stdout].String())
	}
}

func TestManager_ConnectNeverMissesTheEnd(t *testing.T) {
	m := newManager(t, nil)
	for i := 0; i < 100; i++ {
		p, s := start(t, m, StartOptions{Config: Config{Cmd: "true"}})
		s.Close()
		var wg sync.WaitGroup
		for j := 0; j < 4; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a, err := m.Connect(ByPID(p.PID()), nil)
				if err != nil {
					t.Errorf("connect: %v", err)
					return
				}
				defer a.Sub.Close()
				if r := collect(t, a.Sub); r.end == nil {
					t.Errorf("no end: %v", r.err)
				}
			}()
		}
		wg.Wait()
	}
}

func TestManager_TagSelectsMostRecentLive(t *testing.T) {
	m := newManager(t, nil)
	var procs []*Process
	for _, tag := range []string{"a", "b", "a", "", "b", "a"} {
		p, s := start(t, m, StartOptions{Config: sh("read x"), Tag: strp(tag)})
		s.Close()
		procs = append(procs, p)
		_, s2 := start(t, m, StartOptions{Config: sh("read x")}) // untagged in between
		s2.Close()
	}
	defer func() {
		for _, i := range m.List() {
			p, _ := m.Lookup(ByPID(i.PID))
			_ = p.Signal(syscall.SIGKILL)
		}
	}()
	for tag, want := range map[string]*Process{"a": procs[5], "b": procs[4], "": procs[3]} {
		p, err := m.Lookup(ByTag(tag))
		if err != nil || p != want {
			t.Errorf("tag %q: got pid %v (%v), want %d", tag, p, err, want.PID())
		}
	}
	if _, err := m.Lookup(ByTag("c")); err == nil || err.Error() != "process with tag c not found" || KindOf(err) != KindNotFound {
		t.Errorf("unknown tag: %v", err)
	}
	if _, err := m.Lookup(ByPID(1 << 30)); err == nil || err.Error() != fmt.Sprintf("process with pid %d not found", 1<<30) {
		t.Errorf("unknown pid: %v", err)
	}
	// Ending the newest "a" makes the previous one current.
	_ = procs[5].Signal(syscall.SIGKILL)
	<-procs[5].Done()
	if p, _ := m.Lookup(ByTag("a")); p != procs[2] {
		t.Errorf("after the newest ended: %v", p)
	}
}

// A subscriber that never reads is cut off as soon as its queue is full
// while the other one has room: at once, not after the stall grace (an
// hour here); the process and the other subscriber do not notice.
func TestManager_StalledSubscriberDoesNotStallOthers(t *testing.T) {
	m := New(Options{Spawner: testReaper, Defaults: defaults.New("root"), StallGrace: time.Hour})
	t.Cleanup(func() { checkBuffers(t, m) })
	// 16 MiB at a pace a reader keeps up with, even under the race
	// detector; the stalled subscriber's queue overflows at 8 MiB.
	p, s := start(t, m, StartOptions{Config: sh("for i in $(seq 64); do head -c 262144 /dev/zero; sleep 0.01; done")})
	defer s.Close()
	stalled, err := m.Connect(ByPID(p.PID()), nil)
	if err != nil {
		t.Fatal(err)
	}
	r := collect(t, s)
	if r.end == nil || r.out[Stdout].Len() != 16<<20 {
		t.Fatalf("reader got %d bytes, end %+v, err %v", r.out[Stdout].Len(), r.end, r.err)
	}
	it, ok := stalled.Sub.Next()
	if !ok || !errors.Is(it.Err, ErrSlowSubscriber) || it.Received != (Offsets{}) {
		t.Fatalf("stalled subscriber: %+v %v", it, ok)
	}
	stalled.Sub.Close()
}

func TestManager_ConcurrentSubscribersChurn(t *testing.T) {
	m := newManager(t, nil)
	before := runtime.NumGoroutine()
	p, s := start(t, m, StartOptions{Config: sh("i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done")})
	s.Close()
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for {
				a, err := m.Connect(ByPID(p.PID()), nil)
				if err != nil {
					t.Errorf("connect: %v", err)
					return
				}
				if g%2 == 0 {
					r := collect(t, a.Sub)
					a.Sub.Close()
					if r.end != nil {
						return
					}
					continue
				}
				// Take a little, then leave.
				for i := 0; i < g; i++ {
					a.Sub.Next()
				}
				a.Sub.Close()
				select {
				case <-p.Done():
					return
				default:
				}
			}
		}(g)
	}
	wg.Wait()
	<-p.Done()
	waitGoroutines(t, before)
}

func waitGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d, want <= %d\n%s", runtime.NumGoroutine(), want, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestManager_StdinPipeNullAndClose(t *testing.T) {
	m := newManager(t, nil)
	p, s := start(t, m, StartOptions{Config: Config{Cmd: "cat"}})
	if err := p.WriteStdin(t.Context(), []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if err := p.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	if err := p.CloseStdin(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := p.WriteStdin(t.Context(), []byte("x")); err == nil || err.Error() != "error writing to stdin: stdin not enabled or closed" {
		t.Fatalf("write after close: %v", err)
	}
	if r := collect(t, s); r.out[Stdout].String() != "abc" || r.end.ExitCode != 0 {
		t.Fatalf("%q %+v", r.out[Stdout].String(), r.end)
	}
	s.Close()

	no := false
	p, s = start(t, m, StartOptions{Config: Config{Cmd: "cat"}, Stdin: &no})
	defer s.Close()
	if err := p.WriteStdin(t.Context(), []byte("x")); err == nil || err.Error() != "error writing to stdin: stdin not enabled or closed" {
		t.Fatalf("stdin=false: %v", err)
	}
	if err := p.WritePTY(t.Context(), []byte("x")); err == nil || !strings.HasPrefix(err.Error(), "error writing to tty: tty not assigned") {
		t.Fatalf("pty input to a pipe process: %v", err)
	}
	if err := p.Resize(Size{Cols: 1, Rows: 1}); err == nil || err.Error() != "error resizing tty: tty not assigned to process" {
		t.Fatalf("resize: %v", err)
	}
	if r := collect(t, s); r.end.ExitCode != 0 || r.out[Stdout].Len() != 0 {
		t.Fatalf("cat of /dev/null: %+v", r.end)
	}
}

func TestManager_PTYSizeResizeInput(t *testing.T) {
	m := newManager(t, nil)
	p, s := start(t, m, StartOptions{
		Config: Config{Cmd: "/bin/sh", Args: []string{"-c", "stty size; read x; stty size; echo got:$x"}},
		PTY:    &Size{Cols: 80, Rows: 24},
	})
	defer s.Close()
	first := waitFor(t, s, PTY, "24 80\r\n")
	if err := p.Resize(Size{Cols: 132, Rows: 50}); err != nil {
		t.Fatal(err)
	}
	if err := p.WritePTY(t.Context(), []byte("typed\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteStdin(t.Context(), []byte("x")); err == nil || !strings.HasPrefix(err.Error(), "error writing to stdin: tty assigned") {
		t.Fatalf("stdin on a PTY: %v", err)
	}
	if err := p.CloseStdin(); KindOf(err) != KindUnknown {
		t.Fatalf("close stdin on a PTY: %v", err)
	}
	r := collect(t, s)
	out := strings.ReplaceAll(first+r.out[PTY].String(), "\r", "")
	// The terminal echoes what was typed.
	if out != "24 80\ntyped\n50 132\ngot:typed\n" {
		t.Fatalf("terminal output %q", out)
	}
	if r.out[Stdout].Len() != 0 || r.end.ExitCode != 0 {
		t.Fatalf("%+v", r.end)
	}
}

// pgidMembers lists the pids whose process group is pgid.
func pgidMembers(t *testing.T, pgid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the parenthesised command: state ppid pgrp ...
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 2 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			out = append(out, pid)
		}
	}
	return out
}

func TestManager_DeadlineKillsTheWholeGroup(t *testing.T) {
	m := newManager(t, nil)
	p, s := start(t, m, StartOptions{Config: sh("sleep 1000 & sleep 1000"), Deadline: time.Now().Add(300 * time.Millisecond)})
	defer s.Close()
	r := collect(t, s)
	if r.end.Status != "signal: killed" || r.end.ExitCode != -1 || r.end.Exited {
		t.Fatalf("end %+v", r.end)
	}
	waitGone(t, int(p.PID()))
}

func waitGone(t *testing.T, pgid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(pgidMembers(t, pgid)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("group %d still has %v", pgid, pgidMembers(t, pgid))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestManager_SignalEndsWithoutWaitingForForeignPipeHolders(t *testing.T) {
	m := newManager(t, nil)
	// A process in another session keeps stdout open; it prints its pid.
	p, s := start(t, m, StartOptions{Config: sh("setsid sh -c 'echo $$; exec sleep 1000' & sleep 1000")})
	defer s.Close()
	var holder int
	for holder == 0 {
		select {
		case <-s.Ready():
		case <-time.After(10 * time.Second):
			t.Fatal("no pid from the holder")
		}
		if it, ok := s.Next(); ok && it.Chunk.Stream == Stdout {
			holder, _ = strconv.Atoi(strings.TrimSpace(string(it.Chunk.Data)))
		}
	}
	defer syscall.Kill(holder, syscall.SIGKILL)
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	r := collect(t, s)
	if r.end.Status != "signal: terminated" {
		t.Fatalf("end %+v", r.end)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("end took %v: it waited for the foreign holder", d)
	}
	// Signalling a process that is gone is not an error.
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

func TestManager_TerminateAll(t *testing.T) {
	t.Parallel() // mostly waiting
	m := newManager(t, nil)
	p1, s1 := start(t, m, StartOptions{Config: sh("sleep 1000")})
	p2, s2 := start(t, m, StartOptions{Config: sh("trap '' TERM; echo ready; sleep 1000 & wait; sleep 1000")})
	waitFor(t, s2, Stdout, "ready")
	s1.Close()
	s2.Close()
	began := time.Now()
	m.TerminateAll(t.Context())
	for _, p := range []*Process{p1, p2} {
		select {
		case <-p.Done():
		default:
			t.Fatalf("process %d survived TerminateAll", p.PID())
		}
	}
	if d := time.Since(began); d < termWait || d > termWait+killWait+2*time.Second {
		t.Fatalf("took %v; the TERM-immune one should need the SIGKILL after 5 s", d)
	}
	a, _ := m.Connect(ByPID(p1.PID()), nil)
	if r := collect(t, a.Sub); r.end.Status != "signal: terminated" {
		t.Fatalf("p1 %+v", r.end)
	}
	if _, _, err := m.Start(StartOptions{Config: sh("true"), User: root(t)}); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("start after TerminateAll: %v", err)
	}
}

func TestManager_CwdRules(t *testing.T) {
	m := newManager(t, nil)
	u := root(t)
	missing := filepath.Join(t.TempDir(), "nope")
	if _, _, err := m.Start(StartOptions{Config: Config{Cmd: "true", Cwd: &missing}, User: u}); err == nil ||
		err.Error() != "cwd '"+missing+"' does not exist" || KindOf(err) != KindInvalidArgument {
		t.Fatalf("missing cwd: %v", err)
	}
	tilde := "~bob/x"
	if _, _, err := m.Start(StartOptions{Config: Config{Cmd: "true", Cwd: &tilde}, User: u}); KindOf(err) != KindInvalidArgument ||
		err.Error() != "failed to expand path '~bob/x' for user 'root': cannot expand user-specific home dir" {
		t.Fatalf("tilde: %v", err)
	}
	dir := t.TempDir()
	m.env.SetDefaultWorkdir(dir)
	_, s := start(t, m, StartOptions{Config: Config{Cmd: "pwd"}})
	defer s.Close()
	if r := collect(t, s); strings.TrimSpace(r.out[Stdout].String()) != dir {
		t.Fatalf("default workdir: %q", r.out[Stdout].String())
	}
}

func TestManager_SpawnFailureMessages(t *testing.T) {
	m := newManager(t, nil)
	u := root(t)
	bad := "/"
	_, _, err := m.Start(StartOptions{Config: Config{Cmd: "echo", Args: []string{"a\x00b"}, Cwd: &bad}, User: u})
	if KindOf(err) != KindInvalidArgument || err.Error() != "error starting process 'echo a\x00b': fork/exec /bin/sh: invalid argument" {
		t.Fatalf("pipes: %v", err)
	}
	_, _, err = m.Start(StartOptions{Config: Config{Cmd: "echo", Args: []string{"a\x00b"}}, User: u, PTY: &Size{Cols: 10, Rows: 5}})
	if KindOf(err) != KindInvalidArgument || err.Error() != "error starting pty with command 'echo a\x00b' in dir '/root' with '10' cols and '5' rows: fork/exec /bin/sh: invalid argument" {
		t.Fatalf("pty: %v", err)
	}
	// Unprivileged envd: itself only.
	m.euid = 4242
	if _, _, err := m.Start(StartOptions{Config: Config{Cmd: "true"}, User: u}); KindOf(err) != KindPermissionDenied || !strings.Contains(err.Error(), "'root'") {
		t.Fatalf("unprivileged: %v", err)
	}
}

func TestManager_InitCmd(t *testing.T) {
	m := newManager(t, nil)
	if err := m.StartInitCmd("echo from-init; echo $0"); err != nil {
		t.Fatal(err)
	}
	l := m.List()
	if len(l) == 1 {
		if *l[0].Tag != "init-cmd" || l[0].Config.Cmd != "/bin/bash" || strings.Join(l[0].Config.Args, " ") != "-l -c echo from-init; echo $0" {
			t.Fatalf("listed as %+v", l[0])
		}
	}
	a, err := m.Connect(ByTag("init-cmd"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Sub.Close()
	if r := collect(t, a.Sub); r.out[Stdout].String() != "from-init\n/bin/bash\n" || r.end.ExitCode != 0 {
		t.Fatalf("%q %+v", r.out[Stdout].String(), r.end)
	}
}

type fakePlacement struct {
	fd     int
	calls  atomic.Int32
	failed atomic.Int32
	err    atomic.Value
}

func (f *fakePlacement) CgroupFD(pty bool, tag string) int {
	f.calls.Add(1)
	if tag == "_system" {
		return -1
	}
	return f.fd
}

func (f *fakePlacement) PlacementFailed(err error) {
	f.failed.Add(1)
	f.err.Store(err)
}

func TestManager_PlacementFallbackDisablesPlacementForGood(t *testing.T) {
	devnull, err := os.Open(os.DevNull) // not a cgroup: clone3 says EBADF
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	fp := &fakePlacement{fd: int(devnull.Fd())}
	m := newManager(t, fp)
	for i := 0; i < 3; i++ {
		_, s := start(t, m, StartOptions{Config: sh("echo placed")})
		if r := collect(t, s); r.out[Stdout].String() != "placed\n" {
			t.Fatalf("spawn %d after fallback: %q %+v", i, r.out[Stdout].String(), r.end)
		}
		s.Close()
	}
	if fp.failed.Load() != 1 || fp.calls.Load() != 1 {
		t.Fatalf("PlacementFailed %d times, CgroupFD %d times; want 1 and 1", fp.failed.Load(), fp.calls.Load())
	}
	if err, _ := fp.err.Load().(error); !errors.Is(err, syscall.EBADF) {
		t.Fatalf("reported %v", err)
	}
}

// cgroup2Mount finds a mounted cgroup v2 hierarchy.
func cgroup2Mount(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, x := range fields {
			if x == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" {
				return fields[4]
			}
		}
	}
	t.Fatal("no cgroup2 hierarchy mounted: this test needs one (CI hosts have /sys/fs/cgroup/unified)")
	return ""
}

func TestManager_PlacementIntoCgroup(t *testing.T) {
	dir := filepath.Join(cgroup2Mount(t), fmt.Sprintf("envd-process-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	defer os.Remove(dir)
	cg, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	fp := &fakePlacement{fd: int(cg.Fd())}
	m := newManager(t, fp)
	_, s := start(t, m, StartOptions{Config: Config{Cmd: "cat", Args: []string{"/proc/self/cgroup"}}})
	r := collect(t, s)
	s.Close()
	if !strings.Contains(r.out[Stdout].String(), "/"+filepath.Base(dir)+"\n") || fp.failed.Load() != 0 {
		t.Fatalf("not placed: %q (failed %d)", r.out[Stdout].String(), fp.failed.Load())
	}
	// Tag _system stays in envd's cgroup.
	_, s = start(t, m, StartOptions{Config: Config{Cmd: "cat", Args: []string{"/proc/self/cgroup"}}, Tag: strp("_system")})
	r = collect(t, s)
	s.Close()
	if strings.Contains(r.out[Stdout].String(), filepath.Base(dir)) {
		t.Fatalf("_system placed: %q", r.out[Stdout].String())
	}
}

// cat closes its terminal descriptors before it exits; the master must
// stay open until the reap, or closing it hangs up the session and cat
// dies of SIGHUP instead of exiting 0.
func TestManager_PTYMasterOutlivesTheProgram(t *testing.T) {
	m := newManager(t, nil)
	for i := 0; i < 50; i++ {
		p, s := start(t, m, StartOptions{Config: Config{Cmd: "cat"}, PTY: &Size{Cols: 20, Rows: 5}})
		if err := p.WritePTY(t.Context(), []byte("abc\n\x04")); err != nil {
			t.Fatal(err)
		}
		r := collect(t, s)
		s.Close()
		if r.end.ExitCode != 0 || r.end.Status != "exit status 0" {
			t.Fatalf("run %d: %+v", i, r.end)
		}
	}
}

// A producer far faster than its reader loses nothing: while the reader
// keeps taking events, output waits for it (flow control, docs/processes.md).
func TestManager_FastProducerSlowReaderGetsEverything(t *testing.T) {
	m := newManager(t, nil)
	const total = 48 << 20
	_, s := start(t, m, StartOptions{Config: sh("exec head -c " + strconv.Itoa(total) + " /dev/zero")})
	defer s.Close()
	var got int
	deadline := time.After(60 * time.Second)
	for {
		it, ok := s.Next()
		if !ok {
			select {
			case <-s.Ready():
			case <-deadline:
				t.Fatalf("no end within 60 s after %d bytes", got)
			}
			continue
		}
		if it.Err != nil {
			t.Fatalf("slow but steady reader was cut off after %d bytes: %v", got, it.Err)
		}
		if it.End != nil {
			if it.End.ExitCode != 0 || got != total {
				t.Fatalf("end %+v after %d of %d bytes", it.End, got, total)
			}
			return
		}
		got += len(it.Chunk.Data)
		if got%(4<<20) < len(it.Chunk.Data) {
			time.Sleep(20 * time.Millisecond) // a reader much slower than head(1)
		}
	}
}

// A subscriber that takes nothing is cut off; the other subscriber and the
// process carry on and finish. With the stall grace of the specification
// (10 s): the stalled subscriber is cut as soon as its queue is full while
// the reader, which joined first, has room — no grace is involved — and a
// reader that the CPU load keeps from running for a while is not cut
// (with the 1 s grace of the earlier rule, and with 300 ms here before, it
// was, on a loaded machine). Were the stall grace what cut the stalled
// subscriber, it would have cut the reader too (both queues full).
func TestManager_StalledSubscriberCutOffAfterGrace(t *testing.T) {
	m := New(Options{Spawner: testReaper, Defaults: defaults.New("root")})
	t.Cleanup(func() { checkBuffers(t, m) })
	const total = 32 << 20
	p, s := start(t, m, StartOptions{Config: sh("read go; exec head -c " + strconv.Itoa(total) + " /dev/zero")})
	defer s.Close()
	stalled, err := m.Connect(ByPID(p.PID()), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WriteStdin(t.Context(), []byte("\n")); err != nil {
		t.Fatal(err)
	}
	r := collect(t, s)
	if r.end == nil || r.out[Stdout].Len() != total {
		t.Fatalf("reader got %d bytes, end %+v, err %v", r.out[Stdout].Len(), r.end, r.err)
	}
	var it Item
	for {
		var ok bool
		if it, ok = stalled.Sub.Next(); !ok || it.Err != nil || it.End != nil {
			break
		}
	}
	if !errors.Is(it.Err, ErrSlowSubscriber) {
		t.Fatalf("stalled subscriber ended with %+v", it)
	}
	stalled.Sub.Close()
}
