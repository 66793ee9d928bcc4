package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// journal records the shutdown's actions in order.
type journal struct {
	mu     sync.Mutex
	events []string
}

func (j *journal) add(format string, args ...any) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.events = append(j.events, fmt.Sprintf(format, args...))
}

func (j *journal) String() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return strings.Join(j.events, "\n")
}

type fakeServer struct {
	j *journal
	// block makes Shutdown wait for its context, like a server with an
	// open stream.
	block bool
	err   error // ctx.Err() seen when Shutdown returned
}

func (f *fakeServer) Shutdown(ctx context.Context) {
	f.j.add("server: stop accepting")
	if f.block {
		<-ctx.Done()
		f.err = ctx.Err()
	}
	f.j.add("server: closed")
}

type fakeProcesses struct {
	j     *journal
	block bool
	err   error
}

func (f *fakeProcesses) TerminateAll(ctx context.Context) {
	f.j.add("processes: terminate")
	if f.block {
		<-ctx.Done()
		f.err = ctx.Err()
	}
	f.j.add("processes: done")
}

type fakeReaper struct {
	j *journal
	// remaining is how many ReapUntilNone calls report children left.
	remaining int
	errs      []error
}

func (f *fakeReaper) ReapUntilNone(ctx context.Context) bool {
	f.j.add("reap")
	if f.remaining > 0 {
		f.remaining--
		<-ctx.Done()
		f.errs = append(f.errs, ctx.Err())
		return false
	}
	return true
}

func (f *fakeReaper) Stop() { f.j.add("reaper: stop") }

type fakeSystem struct {
	j         *journal
	rebootErr error
	exited    chan int
}

func (f *fakeSystem) killAll(sig syscall.Signal) error {
	f.j.add("kill(-1, %s)", sig)
	return nil
}
func (f *fakeSystem) sync()         { f.j.add("sync") }
func (f *fakeSystem) reboot() error { f.j.add("reboot"); return f.rebootErr }
func (f *fakeSystem) exit(code int) { f.j.add("exit %d", code); f.exited <- code }

type shutdownFixture struct {
	j    *journal
	srv  *fakeServer
	proc *fakeProcesses
	rp   *fakeReaper
	sys  *fakeSystem
	sd   *Shutdown
	logs *syncBuffer
}

func newShutdown(pid1, fc bool) *shutdownFixture {
	j := &journal{}
	log, logs := testLog()
	f := &shutdownFixture{
		j: j, srv: &fakeServer{j: j}, proc: &fakeProcesses{j: j}, rp: &fakeReaper{j: j},
		sys: &fakeSystem{j: j, exited: make(chan int, 1)}, logs: logs,
	}
	f.sd = &Shutdown{
		Log: log, PID1: pid1, FC: fc, Server: f.srv, Processes: f.proc, Reaper: f.rp,
		Quiesce: []Step{{"ports", func() { j.add("ports: stop") }}, {"mmds", func() { j.add("mmds: stop") }}},
		Release: []Step{{"watchers", func() { j.add("watchers: close") }}},
		sys:     f.sys,
	}
	return f
}

// run runs the shutdown in the background (the real one never returns)
// and waits for its exit.
func (f *shutdownFixture) run(t *testing.T, reason Reason, hurry <-chan struct{}) int {
	t.Helper()
	go f.sd.Run(reason, hurry)
	select {
	case code := <-f.sys.exited:
		return code
	case <-time.After(30 * time.Second):
		t.Fatalf("shutdown hangs; so far:\n%s", f.j)
		return -1
	}
}

func TestShutdown_PID1InFirecrackerMode(t *testing.T) {
	f := newShutdown(true, true)
	f.rp.remaining = 1 // one process ignores SIGTERM
	code := f.run(t, Reason{Signal: syscall.SIGTERM}, nil)
	want := strings.Join([]string{
		"ports: stop",
		"mmds: stop",
		"processes: terminate",
		"processes: done",
		"watchers: close",
		"kill(-1, terminated)",
		"reap",
		"kill(-1, killed)",
		"reap",
		"sync",
		"reaper: stop",
		"reboot",
		"exit 0",
	}, "\n")
	// The server's shutdown runs beside the other steps (it waits for
	// open requests): compare it separately.
	var steps, server []string
	for _, e := range strings.Split(f.j.String(), "\n") {
		if strings.HasPrefix(e, "server: ") {
			server = append(server, e)
			continue
		}
		steps = append(steps, e)
	}
	if code != 0 || strings.Join(steps, "\n") != want || strings.Join(server, ",") != "server: stop accepting,server: closed" {
		t.Fatalf("exit %d, steps:\n%s\nwant:\n%s", code, f.j, want)
	}
	if strings.Index(f.j.String(), "server: closed") > strings.Index(f.j.String(), "watchers: close") {
		t.Fatalf("watchers closed before the server:\n%s", f.j)
	}
	if !errors.Is(f.rp.errs[0], context.DeadlineExceeded) {
		t.Fatalf("SIGTERM grace ended by %v, want its deadline", f.rp.errs[0])
	}
	for _, line := range []string{`msg="shutting down" signal=terminated`, `msg="terminating remaining processes"`, `msg="killing remaining processes"`, `msg=stopped`} {
		if !strings.Contains(f.logs.String(), line) {
			t.Errorf("log lacks %s:\n%s", line, f.logs)
		}
	}
}

func TestShutdown_PID1WithIsNotFCExitsZero(t *testing.T) {
	f := newShutdown(true, false)
	code := f.run(t, Reason{Signal: syscall.SIGINT}, nil)
	got := f.j.String()
	if code != 0 || strings.Contains(got, "reboot") || !strings.Contains(got, "kill(-1, terminated)\nreap\nsync") || strings.Contains(got, "killed") {
		t.Fatalf("exit %d, steps:\n%s", code, got)
	}
}

func TestShutdown_NotPID1NeverSignalsOthers(t *testing.T) {
	f := newShutdown(false, true)
	code := f.run(t, Reason{Signal: syscall.SIGPWR}, nil)
	got := f.j.String()
	if code != 0 || strings.Contains(got, "kill(-1") || strings.Contains(got, "reboot") || strings.Contains(got, "sync") {
		t.Fatalf("exit %d, steps:\n%s", code, got)
	}
	if !strings.HasSuffix(got, "watchers: close\nreaper: stop\nexit 0") {
		t.Fatalf("steps:\n%s", got)
	}
}

func TestShutdown_StreamsGetGraceThenAreClosed(t *testing.T) {
	f := newShutdown(false, false)
	f.srv.block = true // an open stream keeps the server busy
	f.run(t, Reason{Signal: syscall.SIGTERM}, nil)
	if !errors.Is(f.srv.err, context.Canceled) {
		t.Fatalf("server context ended with %v", f.srv.err)
	}
	got := f.j.String()
	if !strings.Contains(got, "server: stop accepting") || strings.Index(got, "server: closed") < strings.Index(got, "processes: done") ||
		!strings.Contains(got, "server: closed\nwatchers: close") {
		t.Fatalf("the server must be closed after the processes ended:\n%s", f.j)
	}
}

func TestShutdown_SecondSignalSkipsWaits(t *testing.T) {
	f := newShutdown(true, true)
	f.srv.block = true
	f.proc.block = true
	f.rp.remaining = 2
	hurry := make(chan struct{})
	close(hurry) // the second signal arrived right away
	code := f.run(t, Reason{Signal: syscall.SIGTERM}, hurry)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !errors.Is(f.proc.err, context.Canceled) || !errors.Is(f.srv.err, context.Canceled) {
		t.Fatalf("waits not cut short: processes %v, server %v", f.proc.err, f.srv.err)
	}
	for _, err := range f.rp.errs {
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("reap wait ended by %v, want the second signal", err)
		}
	}
	// Skipping waits still kills everything.
	if !strings.Contains(f.j.String(), "kill(-1, killed)") || !strings.HasSuffix(f.j.String(), "sync\nreaper: stop\nreboot\nexit 0") {
		t.Fatalf("steps:\n%s", f.j)
	}
}

func TestShutdown_ServerFailureExitsOne(t *testing.T) {
	f := newShutdown(false, false)
	if code := f.run(t, Reason{Err: errors.New("accept: too many open files")}, nil); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
}

func TestShutdown_PanickingStepDoesNotStopIt(t *testing.T) {
	f := newShutdown(true, true)
	f.sd.Quiesce = append([]Step{{"broken", func() { panic("boom") }}}, f.sd.Quiesce...)
	f.sys.rebootErr = errors.New("operation not permitted")
	code := f.run(t, Reason{Signal: syscall.SIGTERM}, nil)
	if code != 0 || !strings.Contains(f.j.String(), "ports: stop") {
		t.Fatalf("exit %d, steps:\n%s", code, f.j)
	}
	if !strings.Contains(f.logs.String(), `msg="panic during shutdown" step=broken panic=boom`) || !strings.Contains(f.logs.String(), "reboot failed; exiting") {
		t.Fatalf("log:\n%s", f.logs)
	}
}

func TestShutdown_WithoutProcessManager(t *testing.T) {
	f := newShutdown(false, false)
	f.sd.Processes = nil
	if code := f.run(t, Reason{Signal: syscall.SIGTERM}, nil); code != 0 || strings.Contains(f.j.String(), "processes") {
		t.Fatalf("exit %d, steps:\n%s", code, f.j)
	}
}

func TestKillAll_RefusedUnlessPID1(t *testing.T) {
	if os.Getpid() == 1 {
		t.Fatal("the test process must not be PID 1")
	}
	if err := (linuxShutdownSystem{}).killAll(syscall.Signal(0)); !errors.Is(err, errNotInit) {
		t.Fatalf("kill(-1) from a process that is not init: %v", err)
	}
}
