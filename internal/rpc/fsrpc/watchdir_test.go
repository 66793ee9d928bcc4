package fsrpc

import (
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
)

func TestSender_StalledSendIsAborted(t *testing.T) {
	unblock := make(chan struct{})
	closed := make(chan struct{})
	blocking := func(*filesystem.WatchDirResponse) error {
		<-unblock
		return errors.New("use of closed network connection")
	}
	s := newSender(blocking, 50*time.Millisecond, func() {
		close(closed)
		close(unblock) // closing the connection fails the blocked write
	})
	defer s.stop()
	done := make(chan error, 1)
	go func() { done <- s.send(&filesystem.WatchDirResponse{}) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("stall not detected")
	}
	err := <-done
	if connect.CodeOf(err) != connect.CodeAborted {
		t.Fatalf("want aborted, got %v", err)
	}
}

func TestSender_FastSendsNeverStall(t *testing.T) {
	s := newSender(func(*filesystem.WatchDirResponse) error { return nil }, 20*time.Millisecond, func() { t.Error("stall fired") })
	defer s.stop()
	for range 50 {
		if err := s.send(&filesystem.WatchDirResponse{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // the stopped timer must not fire later
	failing := newSender(func(*filesystem.WatchDirResponse) error { return errors.New("broken pipe") }, time.Second, func() {})
	if err := failing.send(&filesystem.WatchDirResponse{}); connect.CodeOf(err) != connect.CodeUnknown {
		t.Fatalf("send failure: %v", err)
	}
}
