package cgroups

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func writeFreeze(t *testing.T, dir, v string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte(v), 0); err != nil {
		t.Fatal(err)
	}
}

// A waiter is woken by a change of the group made by anyone (inotify), by
// envd's own thaw (Thawed), and ends with its context.
func TestWaitThawed(t *testing.T) {
	root := testRoot(t)
	log, _ := newLog()
	m := New(Options{Root: root}, log)
	defer m.Close()
	if !m.Cgroup2() {
		t.Fatal("no cgroup2 manager")
	}
	user := filepath.Join(root, UserGroup)
	if m.GroupFrozen(false) {
		t.Fatal("fresh group reads frozen")
	}
	writeFreeze(t, user, "1")
	if !m.GroupFrozen(false) || m.GroupFrozen(true) {
		t.Fatal("own request not seen")
	}

	// Thawed by someone else: inotify wakes the waiter.
	done := make(chan error, 1)
	go func() { done <- m.WaitThawed(context.Background(), false) }()
	select {
	case err := <-done:
		t.Fatalf("returned while frozen: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	writeFreeze(t, user, "0")
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not woken by the group's change")
	}

	// Frozen through an ancestor: the settled state counts.
	writeFreeze(t, root, "1")
	if !m.GroupFrozen(true) {
		t.Fatal("ancestor freeze not seen")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := m.WaitThawed(ctx, true); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait ended with %v", err)
	}
	writeFreeze(t, root, "0")
	if err := m.WaitThawed(context.Background(), true); err != nil {
		t.Fatal(err)
	}

	// Woken by Thawed without any notification: the next check sees the
	// group thawed.
	m.frozen.close() // no inotify from here on
	writeFreeze(t, user, "1")
	go func() { done <- m.WaitThawed(context.Background(), false) }()
	time.Sleep(50 * time.Millisecond)
	writeFreeze(t, user, "0")
	m.Thawed()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not woken by Thawed")
	}
}

// BenchmarkGroupFrozen is the cost the frozen-group check adds to every
// placed spawn (two cgroupfs reads under the spawn lock).
func BenchmarkGroupFrozen(b *testing.B) {
	root := filepath.Join(cgroup2Mount(b), "envd-cgbench-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(root, 0o755); err != nil {
		b.Fatal(err)
	}
	log, _ := newLog()
	m := New(Options{Root: root}, log)
	defer func() {
		m.Close()
		os.Remove(filepath.Join(root, UserGroup))
		os.Remove(filepath.Join(root, PTYGroup))
		os.Remove(root)
	}()
	for b.Loop() {
		if m.GroupFrozen(false) {
			b.Fatal("frozen")
		}
	}
}
