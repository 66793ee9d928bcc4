package processrpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
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

// testService is the service with a write aborter that unblocks the fake
// stream's stuck write, as moving a real response's write deadline to the
// past does.
func testService(t *testing.T, stall time.Duration) (*Service, *process.Manager, chan struct{}, *atomic.Int32) {
	t.Helper()
	env := defaults.New("root")
	m := process.New(process.Options{Spawner: testReaper, Defaults: env})
	s := New(Options{Processes: m, Defaults: env, Gate: keepalive.NewGate(), StallTimeout: stall})
	unblock := make(chan struct{})
	var aborts atomic.Int32
	s.abortWrite = func(context.Context) {
		if aborts.Add(1) == 1 {
			close(unblock)
		}
	}
	return s, m, unblock, &aborts
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

const slowMsg = "subscriber too slow: output queue overflow; reconnect with Connect"

func wantAborted(t *testing.T, err error, msg string) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeAborted || ce.Message() != msg {
		t.Fatalf("stream ended with %v, want aborted %q", err, msg)
	}
}

// A write that a client never takes is given up after the stall timeout:
// the write is aborted (only this stream's) and the stream ends aborted.
func TestPump_StalledWriteIsAborted(t *testing.T) {
	s, m, unblock, aborts := testService(t, 200*time.Millisecond)
	p, sub := startSub(t, m, "echo hello; sleep 1000")
	defer sub.Close()
	var sent atomic.Int32
	began := time.Now()
	err := s.pump(t.Context(), nil, nil, false, sub, startEvent(p.PID()), func(ev *pb.ProcessEvent) error {
		if sent.Add(1) == 1 {
			return nil // the start goes out
		}
		<-unblock // the data event never does
		return errors.New("stream reset")
	})
	if err != errStalled {
		t.Fatalf("ended with %v", err)
	}
	if aborts.Load() != 1 || time.Since(began) < 200*time.Millisecond {
		t.Fatalf("aborted %d times after %v", aborts.Load(), time.Since(began))
	}
}

// A stream that is idle (no output) for longer than the stall timeout is
// not touched: the timeout bounds writes, not silence.
func TestPump_IdleStreamIsNotAborted(t *testing.T) {
	s, m, _, aborts := testService(t, 100*time.Millisecond)
	p, sub := startSub(t, m, "sleep 0.5; echo late")
	defer sub.Close()
	var data atomic.Int32
	err := s.pump(t.Context(), nil, nil, false, sub, startEvent(p.PID()), func(ev *pb.ProcessEvent) error {
		if ev.GetData() != nil {
			data.Add(1)
		}
		return nil
	})
	if err != nil || aborts.Load() != 0 || data.Load() == 0 {
		t.Fatalf("err %v, aborts %d, data events %d", err, aborts.Load(), data.Load())
	}
}

// A subscriber cut off for overflow while its write is stuck is not torn
// off mid-message: once the write completes, the stream ends aborted with
// the offsets of what was written, in the message and in the trailer.
func TestPump_OverflowEndsAfterTheWholeMessageWithOffsets(t *testing.T) {
	s, m, _, aborts := testService(t, time.Hour)
	p, sub := startSub(t, m, "read go; head -c 16777216 /dev/zero; sleep 1000")
	defer sub.Close()
	// A second subscriber that reads keeps the output going, so the stuck
	// one falls a whole queue behind and is cut.
	reader, err := m.Connect(process.ByPID(p.PID()), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Sub.Close()
	var read atomic.Int64
	go func() {
		for {
			it, ok := reader.Sub.Next()
			if !ok {
				select {
				case <-reader.Sub.Ready():
				case <-p.Done():
					return
				}
				continue
			}
			if it.End != nil || it.Err != nil {
				return
			}
			read.Add(int64(len(it.Chunk.Data)))
		}
	}()
	if err := p.WriteStdin(t.Context(), []byte("\n")); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var sent atomic.Int32
	var written atomic.Uint64
	trailer := http.Header{}
	done := make(chan error, 1)
	go func() {
		done <- s.pump(t.Context(), nil, trailer, false, sub, startEvent(p.PID()), func(ev *pb.ProcessEvent) error {
			if sent.Add(1) == 4 {
				<-release // the client stops reading during the 4th message
			}
			written.Add(uint64(len(ev.GetData().GetStdout())))
			return nil
		})
	}()
	// Wait until the reader is more than a whole queue (8 MiB) past the
	// stuck subscriber, which must have been cut by then.
	deadline := time.Now().Add(20 * time.Second)
	for read.Load() < 12<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("the reader got only %d bytes", read.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("stream ended during a stuck write: %v", err)
	default:
	}
	close(release)
	err = <-done
	want := fmt.Sprintf("%s (received stdout=%d,stderr=0)", slowMsg, written.Load())
	wantAborted(t, err, want)
	if got := trailer.Get(OutputOffsetHeader); got != fmt.Sprintf("stdout=%d,stderr=0", written.Load()) {
		t.Fatalf("trailer %q after %d bytes", got, written.Load())
	}
	if aborts.Load() != 0 {
		t.Fatal("the write was aborted")
	}
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
	err := s.pump(t.Context(), hdr, nil, false, sub, startEvent(p.PID()), func(ev *pb.ProcessEvent) error {
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
