package watch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/logging"
)

// events polls watcher id and gives the events' room back at once.
func events(m *Manager, id string) ([]Event, error) {
	evs, release, err := m.Events(id)
	release()
	return evs, err
}

// fakeClock is a manual clock for expiry tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestManager_IdlePollersExpireLazily(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	m := NewManager(logging.Discard(), Limits{IdleExpiry: time.Minute, Now: clock.Now})
	defer m.Close()
	idle, err := m.Create(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	polled, err := m.Create(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	clock.advance(40 * time.Second)
	if _, err := events(m, polled); err != nil {
		t.Fatal(err)
	}
	if left, ok := m.ExpiresIn(idle); !ok || left != 20*time.Second {
		t.Fatalf("idle watcher expires in %v %v", left, ok)
	}
	if left, ok := m.ExpiresIn(polled); !ok || left != time.Minute {
		t.Fatalf("polled watcher expires in %v %v", left, ok)
	}
	clock.advance(30 * time.Second)
	if _, err := events(m, idle); fsops.KindOf(err) != fsops.KindNotFound || err.Error() != "watcher with id "+idle+" not found" {
		t.Fatalf("expired watcher: %v", err)
	}
	if _, err := events(m, polled); err != nil {
		t.Fatalf("polled watcher expired: %v", err)
	}
	if p, _ := m.Len(); p != 1 {
		t.Fatalf("%d pollers", p)
	}
}

func TestManager_CapsPollersAndStreamsSeparately(t *testing.T) {
	m := NewManager(logging.Discard(), Limits{MaxPollers: 2, MaxStreams: 1})
	defer m.Close()
	dir := t.TempDir()
	for range 2 {
		if _, err := m.Create(dir, Options{}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := m.Create(dir, Options{})
	if !errors.Is(err, ErrTooManyWatchers) || err.Error() != "too many polling watchers (2); remove unused ones with RemoveWatcher" {
		t.Fatalf("third poller: %v", err)
	}
	// Pollers at their cap leave streams their room.
	s, err := m.Stream(dir, Options{}, 8)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Stream(dir, Options{}, 8); !errors.Is(err, ErrTooManyWatchers) || !strings.Contains(err.Error(), "too many directory watch streams (1)") {
		t.Fatalf("second stream: %v", err)
	}
	s.Close()
	s2, err := m.Stream(dir, Options{}, 8)
	if err != nil {
		t.Fatalf("after close: %v", err)
	}
	s2.Close()
}

// Waiting events share one budget: a watcher whose event finds it full
// overflows (a poller reports data_loss, a stream ends), and what is taken
// or removed gives its room back.
func TestManager_EventBudgetShared(t *testing.T) {
	m := NewManager(logging.Discard(), Limits{EventBudget: 40 * 100})
	defer m.Close()
	dir := t.TempDir()
	id, err := m.Create(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", i)), nil, 0o644)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := m.pollers[id]
		p.mu.Lock()
		done := p.overflowed
		held := p.bytes
		p.mu.Unlock()
		if held > 40*100 {
			t.Fatalf("poller holds %d bytes, budget 4000", held)
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the shared budget never overflowed the watcher")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := events(m, id); !errors.Is(err, ErrOverflow) {
		t.Fatalf("want overflow, got %v", err)
	}
	// A stream whose event finds no room ends.
	s, err := m.Stream(dir, Options{}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 100 {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("g%03d", i)), nil, 0o644)
	}
	select {
	case <-s.Done():
		if !errors.Is(s.Err(), ErrEventBudget) && !errors.Is(s.Err(), ErrQueueFull) {
			t.Fatalf("stream ended with %v", s.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stream outgrew the budget")
	}
	s.Close()
	if err := m.Remove(id); err != nil {
		t.Fatal(err)
	}
	if n := m.EventBytes(); n != 0 {
		t.Fatalf("%d bytes still held", n)
	}
}

// Taken events hold their room until the caller releases them.
func TestManager_EventsHoldRoomUntilReleased(t *testing.T) {
	m := NewManager(logging.Discard(), Limits{})
	defer m.Close()
	dir := t.TempDir()
	id, err := m.Create(dir, Options{IncludeEntry: true})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "a"), nil, 0o644)
	deadline := time.Now().Add(10 * time.Second)
	for m.EventBytes() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no event")
		}
		time.Sleep(5 * time.Millisecond)
	}
	evs, release, err := m.Events(id)
	if err != nil || len(evs) == 0 {
		t.Fatalf("%v %v", evs, err)
	}
	if m.EventBytes() == 0 {
		t.Fatal("taken events released before their response was sent")
	}
	release()
	release()
	if n := m.EventBytes(); n != 0 {
		t.Fatalf("%d bytes held after release", n)
	}
}
