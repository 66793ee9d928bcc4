package fsrpc

import (
	"errors"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
)

// deadlines records the write deadlines a sender sets; a write blocks
// until the deadline set before it passes, like a write to a client that
// stopped reading.
type deadlines struct {
	mu  sync.Mutex
	set []time.Time
}

func (d *deadlines) setDeadline(t time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.set = append(d.set, t)
	return nil
}

func (d *deadlines) last() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.set[len(d.set)-1]
}

func TestSender_StalledSendIsAborted(t *testing.T) {
	d := &deadlines{}
	blocking := func(*filesystem.WatchDirResponse) error {
		time.Sleep(time.Until(d.last()))
		return errors.New("i/o timeout")
	}
	s := newSender(blocking, 50*time.Millisecond, d.setDeadline)
	err := s.send(&filesystem.WatchDirResponse{})
	if connect.CodeOf(err) != connect.CodeAborted {
		t.Fatalf("want aborted, got %v", err)
	}
	if !d.last().IsZero() {
		t.Fatal("the deadline was not cleared after the write")
	}
}

func TestSender_DeadlinePerMessageClearedAfter(t *testing.T) {
	d := &deadlines{}
	s := newSender(func(*filesystem.WatchDirResponse) error { return nil }, time.Second, d.setDeadline)
	for range 3 {
		before := time.Now()
		if err := s.send(&filesystem.WatchDirResponse{}); err != nil {
			t.Fatal(err)
		}
		d.mu.Lock()
		set, cleared := d.set[len(d.set)-2], d.set[len(d.set)-1]
		d.mu.Unlock()
		if set.Before(before.Add(time.Second)) || !cleared.IsZero() {
			t.Fatalf("deadlines %v then %v", set, cleared)
		}
	}
	failing := newSender(func(*filesystem.WatchDirResponse) error { return errors.New("broken pipe") }, time.Second, d.setDeadline)
	if err := failing.send(&filesystem.WatchDirResponse{}); connect.CodeOf(err) != connect.CodeUnknown {
		t.Fatalf("send failure: %v", err)
	}
}
