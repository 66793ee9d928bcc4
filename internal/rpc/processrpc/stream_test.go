package processrpc

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/identity"
	"github.com/envd/envd/internal/keepalive"
	"github.com/envd/envd/internal/process"
	"github.com/envd/envd/internal/reaper"
)

var testReaper *reaper.Reaper

func TestMain(m *testing.M) {
	testReaper = reaper.New(slog.New(slog.DiscardHandler))
	testReaper.Start()
	code := m.Run()
	testReaper.Stop()
	os.Exit(code)
}

// testService is the service with a connection closer that unblocks the
// fake stream's stuck write, as closing a real connection does.
func testService(t *testing.T, stall time.Duration) (*Service, *process.Manager, chan struct{}, *atomic.Int32) {
	t.Helper()
	env := defaults.New("root")
	m := process.New(process.Options{Spawner: testReaper, Defaults: env})
	s := New(Options{Processes: m, Defaults: env, Gate: keepalive.NewGate(), StallTimeout: stall})
	unblock := make(chan struct{})
	var closes atomic.Int32
	s.closeConn = func(context.Context) bool {
		if closes.Add(1) == 1 {
			close(unblock)
		}
		return true
	}
	return s, m, unblock, &closes
}

func startSub(t *testing.T, m *process.Manager, script string) (*process.Process, *process.Subscription) {
	t.Helper()
	u, err := identity.LookupUser("root")
	if err != nil {
		t.Fatal(err)
	}
	p, sub, err := m.Start(process.StartOptions{Config: process.Config{Cmd: "/bin/sh", Args: []string{"-c", script}}, User: u})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Signal(9) })
	return p, sub
}

func wantAborted(t *testing.T, err error) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeAborted || ce.Message() != "subscriber too slow: output queue overflow; reconnect with Connect" {
		t.Fatalf("stream ended with %v, want aborted", err)
	}
}

// A write that a client never takes is given up after the stall timeout:
// the connection is closed and the stream ends aborted.
func TestPump_StalledWriteDropsConnection(t *testing.T) {
	s, m, unblock, closes := testService(t, 200*time.Millisecond)
	p, sub := startSub(t, m, "echo hello; sleep 1000")
	defer sub.Close()
	var sent atomic.Int32
	began := time.Now()
	err := s.pump(t.Context(), nil, sub, startEvent(p.PID()), func(ev *pb.ProcessEvent) error {
		if sent.Add(1) == 1 {
			return nil // the start goes out
		}
		<-unblock // the data event never does
		return errors.New("connection closed")
	})
	wantAborted(t, err)
	if closes.Load() != 1 || time.Since(began) < 200*time.Millisecond {
		t.Fatalf("closed %d times after %v", closes.Load(), time.Since(began))
	}
}

// Output overflowing the queue of a subscriber whose write is stuck drops
// the connection at once, without waiting for the stall timeout.
func TestPump_OverflowDuringStuckWriteDropsConnection(t *testing.T) {
	s, m, unblock, closes := testService(t, time.Hour)
	p, sub := startSub(t, m, "head -c 16777216 /dev/zero; sleep 1000")
	defer sub.Close()
	var sent atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- s.pump(t.Context(), nil, sub, startEvent(p.PID()), func(ev *pb.ProcessEvent) error {
			if sent.Add(1) <= 2 {
				return nil
			}
			<-unblock
			return errors.New("connection closed")
		})
	}()
	select {
	case err := <-done:
		wantAborted(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("stream not ended by the overflow")
	}
	if closes.Load() != 1 {
		t.Fatalf("closed %d times", closes.Load())
	}
	// The process did not notice.
	if _, err := m.Lookup(process.ByPID(p.PID())); err != nil {
		t.Fatal(err)
	}
}

// The keepalive timer restarts after each data event and fires when
// nothing was sent for the interval.
func TestPump_KeepalivesAndEnd(t *testing.T) {
	s, m, _, _ := testService(t, time.Hour)
	p, sub := startSub(t, m, "sleep 2.5; echo x")
	defer sub.Close()
	var kinds []string
	hdr := map[string][]string{"Keepalive-Ping-Interval": {"1"}}
	err := s.pump(t.Context(), hdr, sub, startEvent(p.PID()), func(ev *pb.ProcessEvent) error {
		switch ev.GetEvent().(type) {
		case *pb.ProcessEvent_Start:
			kinds = append(kinds, "start")
		case *pb.ProcessEvent_Keepalive:
			kinds = append(kinds, "keepalive")
		case *pb.ProcessEvent_Data:
			kinds = append(kinds, "data")
		case *pb.ProcessEvent_End:
			kinds = append(kinds, "end")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(kinds) < 5 || kinds[0] != "start" || kinds[1] != "keepalive" || kinds[2] != "keepalive" || kinds[len(kinds)-2] != "data" || kinds[len(kinds)-1] != "end" {
		t.Fatalf("events %v", kinds)
	}
	if s.gate.Len() != 0 {
		t.Fatal("keepalive timer leaked")
	}
}
