package lifecycle

import (
	"errors"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSignals_Routing sends real signals to the test process; they are all
// caught while the router is installed.
func TestSignals_Routing(t *testing.T) {
	log, logs := testLog()
	s := NewSignals(log)
	s.Start()
	s.Start() // idempotent
	defer s.Stop()

	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGQUIT} {
		syscall.Kill(syscall.Getpid(), sig)
		name := sig.String()
		waitFor(t, name+" logged", func() bool {
			return strings.Contains(logs.String(), `msg="ignoring signal" signal=`+name+"\n") ||
				strings.Contains(logs.String(), `msg="ignoring signal" signal="`+name+`"`)
		})
	}
	select {
	case sig := <-s.Shutdown():
		t.Fatalf("ignored signals triggered a shutdown (%v)", sig)
	default:
	}

	syscall.Kill(syscall.Getpid(), syscall.SIGPWR)
	select {
	case sig := <-s.Shutdown():
		if sig != syscall.SIGPWR {
			t.Fatalf("shutdown by %v", sig)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("SIGPWR did not start a shutdown")
	}
	select {
	case <-s.Hurry():
		t.Fatal("hurry before a second signal")
	default:
	}
	syscall.Kill(syscall.Getpid(), syscall.SIGINT)
	select {
	case <-s.Hurry():
	case <-time.After(10 * time.Second):
		t.Fatal("second shutdown signal did not hurry")
	}
	syscall.Kill(syscall.Getpid(), syscall.SIGTERM) // a third one is harmless
	waitFor(t, "third signal handled", func() bool { return len(s.in) == 0 })
	if n := strings.Count(logs.String(), "second shutdown signal"); n != 1 {
		t.Fatalf("hurry logged %d times", n)
	}
}

func TestAwait_ServerFailure(t *testing.T) {
	log, logs := testLog()
	s := NewSignals(log)
	served := make(chan error, 1)
	served <- errors.New("accept failed")
	r := s.Await(served, false)
	if r.Err == nil || r.ExitCode() != 1 || !strings.Contains(r.String(), "accept failed") {
		t.Fatalf("reason %+v", r)
	}

	// As PID 1 a failed server is logged and envd waits for a signal.
	served <- errors.New("accept failed again")
	got := make(chan Reason, 1)
	go func() { got <- s.Await(served, true) }()
	waitFor(t, "failure logged", func() bool { return strings.Contains(logs.String(), "accept failed again") })
	select {
	case r := <-got:
		t.Fatalf("PID 1 gave up after a server failure: %+v", r)
	case <-time.After(50 * time.Millisecond):
	}
	s.shutdown <- syscall.SIGTERM
	select {
	case r := <-got:
		if r.Signal != syscall.SIGTERM || r.ExitCode() != 0 || r.String() != "terminated" {
			t.Fatalf("reason %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("signal not delivered")
	}
}

func TestSignals_StopWithoutStart(t *testing.T) {
	log, _ := testLog()
	s := NewSignals(log)
	s.Stop() // must not block
	s.Start()
	s.Stop()
}

// TestSignals_FaultSignals: fault signals sent with kill() are caught and
// logged; a real fault in the process still panics as Go code expects.
func TestSignals_FaultSignals(t *testing.T) {
	log, logs := testLog()
	s := NewSignals(log)
	s.Start()
	defer s.Stop()
	for _, sig := range []syscall.Signal{syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGFPE, syscall.SIGILL, syscall.SIGABRT, syscall.SIGTRAP, syscall.SIGSYS, syscall.SIGSTKFLT} {
		if err := syscall.Kill(syscall.Getpid(), sig); err != nil {
			t.Fatal(err)
		}
		waitFor(t, sig.String()+" logged", func() bool {
			return strings.Contains(logs.String(), `msg="ignoring fault signal sent by another process" signal="`+sig.String()+`"`) ||
				strings.Contains(logs.String(), `msg="ignoring fault signal sent by another process" signal=`+sig.String()+"\n")
		})
	}
	// A nil dereference is still a runtime panic, recoverable as always.
	got := make(chan any, 1)
	go func() {
		defer func() { got <- recover() }()
		var p *int
		_ = *p
	}()
	if _, ok := (<-got).(runtime.Error); !ok {
		t.Fatal("a real fault no longer panics with a runtime error")
	}
}
