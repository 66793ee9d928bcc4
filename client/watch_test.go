package client_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/client"
)

// waitFor reads events until one matches, failing after a generous bound.
func waitFor(t *testing.T, events <-chan client.Event, name string, typ client.EventType) client.Event {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("watch ended before %s %s", typ, name)
			}
			if ev.Name == name && ev.Type == typ {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s %s event", typ, name)
		}
	}
}

func TestWatchDir_Channel(t *testing.T) {
	_, c := start(t, client.WithKeepaliveInterval(time.Second))
	dir := t.TempDir()
	w, err := c.WatchDir(ctx(t), dir, &client.WatchOptions{Recursive: true, IncludeEntry: true})
	if err != nil {
		t.Fatal(err)
	}
	// A directory created under a recursive watch is watched once its
	// CREATE is handled; writes inside it are reported from then on.
	if _, err := c.MakeDir(ctx(t), filepath.Join(dir, "sub")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w.Events(), "sub", client.EventCreate)
	if _, err := c.WriteFile(ctx(t), filepath.Join(dir, "sub", "f.txt"), []byte("hi")); err != nil {
		t.Fatal(err)
	}
	ev := waitFor(t, w.Events(), "sub/f.txt", client.EventWrite)
	if ev.Entry == nil || ev.Entry.Size != 2 || ev.Entry.Path != filepath.Join(dir, "sub", "f.txt") {
		t.Fatalf("write event entry %+v", ev.Entry)
	}
	// Keepalives (every second here) are not events; the watch lives on.
	time.Sleep(2500 * time.Millisecond)
	if err := os.Remove(filepath.Join(dir, "sub", "f.txt")); err != nil {
		t.Fatal(err)
	}
	ev = waitFor(t, w.Events(), "sub/f.txt", client.EventRemove)
	if ev.Entry != nil {
		t.Fatalf("remove event carries an entry: %+v", ev.Entry)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Err(); err != nil {
		t.Fatalf("Err after Close: %v", err)
	}
	for range w.Events() {
	}
	_, err = c.WatchDir(ctx(t), filepath.Join(dir, "missing"), nil)
	wantError(t, err, connect.CodeNotFound, 404, "")
}

func TestWatch_Iterator(t *testing.T) {
	_, c := start(t)
	dir := t.TempDir()
	go func() {
		// The watch is in place once the first write is reported; keep
		// writing until then.
		for i := 0; i < 200; i++ {
			if err := os.WriteFile(filepath.Join(dir, "it.txt"), []byte("x"), 0o644); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
			if _, err := os.Stat(filepath.Join(dir, "stop")); err == nil {
				return
			}
		}
	}()
	n := 0
	for ev, err := range c.Watch(ctx(t), dir, nil) {
		if err != nil {
			t.Fatal(err)
		}
		if ev.Name == "it.txt" {
			n++
		}
		if n == 2 {
			break
		}
	}
	_ = os.WriteFile(filepath.Join(dir, "stop"), nil, 0o644)
	// Errors are yielded once.
	errs := 0
	for _, err := range c.Watch(ctx(t), filepath.Join(dir, "it.txt"), nil) {
		if err == nil {
			t.Fatal("event from a watch of a file")
		}
		wantError(t, err, connect.CodeInvalidArgument, 400, "")
		errs++
	}
	if errs != 1 {
		t.Fatalf("%d errors yielded", errs)
	}
}

func TestPollingWatcher(t *testing.T) {
	_, c := start(t)
	dir := t.TempDir()
	w, err := c.CreateWatcher(ctx(t), dir, &client.WatchOptions{IncludeEntry: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.ID) != 21 || w.ID[0] != 'w' {
		t.Fatalf("watcher id %q", w.ID)
	}
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	var got []client.Event
	deadline := time.Now().Add(30 * time.Second)
	for len(got) == 0 && time.Now().Before(deadline) {
		evs, err := c.Watcher(w.ID).Events(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, evs...)
		time.Sleep(20 * time.Millisecond)
	}
	if len(got) == 0 || got[0].Name != "d" || got[0].Type != client.EventCreate || got[0].Entry == nil || !got[0].Entry.IsDir() {
		t.Fatalf("events %+v", got)
	}
	if evs, err := w.Events(ctx(t)); err != nil || len(evs) != 0 {
		t.Fatalf("second poll: %+v %v", evs, err)
	}
	if err := w.Remove(ctx(t)); err != nil {
		t.Fatal(err)
	}
	_, err = w.Events(ctx(t))
	wantError(t, err, connect.CodeNotFound, 404, "watcher with id "+w.ID+" not found")
	err = w.Remove(ctx(t))
	wantError(t, err, connect.CodeNotFound, 404, "")
	_, err = c.CreateWatcher(ctx(t), filepath.Join(dir, "missing"), nil)
	wantError(t, err, connect.CodeNotFound, 404, "")
}

func TestEventType_Strings(t *testing.T) {
	want := map[client.EventType]string{
		client.EventCreate: "CREATE", client.EventWrite: "WRITE", client.EventRemove: "REMOVE",
		client.EventRename: "RENAME", client.EventChmod: "CHMOD", client.EventUnknown: "UNKNOWN",
	}
	for typ, s := range want {
		if typ.String() != s {
			t.Errorf("%d.String() = %q, want %q", typ, typ.String(), s)
		}
	}
	if client.FileTypeDir.String() != "dir" || client.FileTypeFile.String() != "file" || client.FileTypeOther.String() != "other" {
		t.Error("file type strings")
	}
}
