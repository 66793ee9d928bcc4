package reaper

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/envd/envd/internal/logging"
)

func startReaper(t *testing.T) *Reaper {
	t.Helper()
	r := New(logging.Discard())
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

func TestRun_ExitCodeAndOutput(t *testing.T) {
	r := startReaper(t)
	ws, out, err := r.Run(context.Background(), []string{"sh", "-c", "echo out; echo err >&2; exit 7"}, os.Environ())
	if err != nil {
		t.Fatal(err)
	}
	if !ws.Exited() || ws.ExitStatus() != 7 {
		t.Fatalf("status %v", ws)
	}
	if string(out) != "out\nerr\n" {
		t.Fatalf("output %q", out)
	}
}

func TestRun_ContextKillsHelper(t *testing.T) {
	r := startReaper(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	ws, _, err := r.Run(ctx, []string{"sleep", "30"}, os.Environ())
	if !errors.Is(err, context.DeadlineExceeded) || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("err %v status %v", err, ws)
	}
}

func TestRun_MissingProgram(t *testing.T) {
	r := startReaper(t)
	if _, _, err := r.Run(context.Background(), []string{"definitely-not-a-program-xyz"}, nil); err == nil || !strings.Contains(err.Error(), "definitely-not-a-program-xyz") {
		t.Fatalf("got %v", err)
	}
}

// Many managed children exiting at once, with unmanaged grandchildren
// around them, must each deliver their own exit code.
func TestSpawn_ExitCodesExactUnderLoad(t *testing.T) {
	r := startReaper(t)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(code int) {
			defer wg.Done()
			script := "(sleep 0.05 &) ; exit " + itoa(code)
			ws, _, err := r.Run(context.Background(), []string{"sh", "-c", script}, os.Environ())
			if err != nil {
				errs <- err
				return
			}
			if ws.ExitStatus() != code {
				errs <- errors.New("wrong exit code " + itoa(ws.ExitStatus()) + " want " + itoa(code))
			}
		}(i % 250)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if r.Managed() != 0 {
		t.Fatalf("%d children still registered", r.Managed())
	}
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

// ReapUntilNone waits for every child, managed or not, and gives up when
// its context ends while children are still running.
func TestReapUntilNone(t *testing.T) {
	r := startReaper(t)
	sleeper := func(secs string) int {
		pid, _, err := r.Spawn(func() (int, error) {
			return syscall.ForkExec("/bin/sleep", []string{"sleep", secs}, &syscall.ProcAttr{Sys: &syscall.SysProcAttr{Setpgid: true}})
		})
		if err != nil {
			t.Fatal(err)
		}
		return pid
	}
	sleeper("0.1")
	// An unmanaged child (as an orphan would be for PID 1).
	if _, err := syscall.ForkExec("/bin/sleep", []string{"sleep", "0.2"}, &syscall.ProcAttr{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !r.ReapUntilNone(ctx) {
		t.Fatal("children left after they all exited")
	}
	if r.Managed() != 0 {
		t.Fatalf("%d managed children not delivered", r.Managed())
	}
	long := sleeper("30")
	defer syscall.Kill(long, syscall.SIGKILL)
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if r.ReapUntilNone(short) {
		t.Fatal("reported no children while one is running")
	}
	syscall.Kill(long, syscall.SIGKILL)
	if !r.ReapUntilNone(ctx) {
		t.Fatal("killed child not reaped")
	}
}

// A child this image did not spawn (one carried across a live upgrade) is
// registered before Start, and the first pass, which does not wait for a
// SIGCHLD, delivers its exact status even though it exited before the
// reaper ran.
func TestAdopt_BeforeStartDeliversAnExitThatAlreadyHappened(t *testing.T) {
	r := New(logging.Discard())
	pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "exit 42"}, &syscall.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	// Let it become a zombie before anything reaps.
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile("/proc/" + itoa(pid) + "/stat")
		if strings.Contains(string(b), ") Z ") || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	ch, err := r.Adopt(pid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Adopt(pid); err == nil {
		t.Fatal("the same pid adopted twice")
	}
	r.Start()
	t.Cleanup(r.Stop)
	select {
	case ws := <-ch:
		if !ws.Exited() || ws.ExitStatus() != 42 {
			t.Fatalf("status %v", ws)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the adopted child's status never came")
	}
	if _, err := r.Adopt(12345); !errors.Is(err, ErrStarted) {
		t.Fatalf("adopt after Start: %v", err)
	}
}

// While a live upgrade holds the spawn lock nothing is spawned and nothing
// is reaped; a child that exits meanwhile is collected after the release.
func TestHoldSpawnLock_StopsSpawnsAndReaping(t *testing.T) {
	r := startReaper(t)
	pid, status, err := r.Spawn(func() (int, error) {
		return syscall.ForkExec("/bin/sh", []string{"sh", "-c", "sleep 0.2; exit 5"}, &syscall.ProcAttr{})
	})
	if err != nil {
		t.Fatal(err)
	}
	release, err := r.HoldSpawnLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	spawned := make(chan struct{})
	go func() {
		_, st, err := r.Spawn(func() (int, error) {
			return syscall.ForkExec("/bin/true", []string{"true"}, &syscall.ProcAttr{})
		})
		if err == nil {
			<-st
		}
		close(spawned)
	}()
	time.Sleep(600 * time.Millisecond)
	select {
	case <-status:
		t.Fatal("a status was collected while the spawn lock was held")
	case <-spawned:
		t.Fatal("a spawn ran while the spawn lock was held")
	default:
	}
	b, _ := os.ReadFile("/proc/" + itoa(pid) + "/stat")
	if !strings.Contains(string(b), ") Z ") {
		t.Fatalf("the exited child is not a zombie kept for the next image: %q", b)
	}
	// A second holder gives up at its deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := r.HoldSpawnLock(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second holder: %v", err)
	}
	release()
	release() // idempotent
	select {
	case ws := <-status:
		if ws.ExitStatus() != 5 {
			t.Fatalf("status %v", ws)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the status never came after the release")
	}
	<-spawned
}
