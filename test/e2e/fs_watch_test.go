package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/gen/filesystem/filesystemconnect"
	"github.com/envd/envd/internal/envdtest"
)

// watchRecorder reads a WatchDir stream in the background.
type watchRecorder struct {
	mu     sync.Mutex
	msgs   []*filesystem.WatchDirResponse
	err    error
	done   chan struct{}
	cancel context.CancelFunc
}

func startWatch(t *testing.T, fs filesystemconnect.FilesystemClient, req *connect.Request[filesystem.WatchDirRequest]) *watchRecorder {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	stream, err := fs.WatchDir(ctx, req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	w := &watchRecorder{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(w.done)
		for stream.Receive() {
			w.mu.Lock()
			w.msgs = append(w.msgs, stream.Msg())
			w.mu.Unlock()
		}
		w.mu.Lock()
		w.err = stream.Err()
		w.mu.Unlock()
		stream.Close()
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	// The first message is start, sent at once.
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		n, err := len(w.msgs), w.err
		var first *filesystem.WatchDirResponse
		if n > 0 {
			first = w.msgs[0]
		}
		w.mu.Unlock()
		if first != nil {
			if first.GetStart() == nil {
				t.Fatalf("first message %v is not start", first)
			}
			return w
		}
		select {
		case <-w.done:
			t.Fatalf("stream ended before start: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no start event within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (w *watchRecorder) events() []*filesystem.FilesystemEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*filesystem.FilesystemEvent
	for _, m := range w.msgs {
		if ev := m.GetFilesystem(); ev != nil {
			out = append(out, ev)
		}
	}
	return out
}

func evString(ev *filesystem.FilesystemEvent) string {
	return strings.TrimPrefix(ev.Type.String(), "EVENT_TYPE_") + " " + ev.Name
}

func evStrings(evs []*filesystem.FilesystemEvent) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = evString(ev)
	}
	return out
}

// inOrder reports whether want appears in got as a subsequence.
func inOrder(got, want []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// waitEvents waits until the stream carried want in order; it returns all
// events seen.
func (w *watchRecorder) waitEvents(t *testing.T, want ...string) []string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := evStrings(w.events())
		if inOrder(got, want) {
			return got
		}
		if time.Now().After(deadline) {
			w.mu.Lock()
			err := w.err
			w.mu.Unlock()
			t.Fatalf("events %v lack %v in order (stream error %v)", got, want, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func noneMatch(t *testing.T, got []string, bad ...string) {
	t.Helper()
	for _, g := range got {
		for _, b := range bad {
			if strings.Contains(g, b) {
				t.Fatalf("unexpected event %q in %v", g, got)
			}
		}
	}
}

func TestWatch_StreamOperationsRelativeNames(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	w := startWatch(t, e.Filesystem(connect.WithProtoJSON()), connect.NewRequest(&filesystem.WatchDirRequest{Path: dir}))
	f := filepath.Join(dir, "f.txt")
	os.WriteFile(f, []byte("1"), 0o644)
	fh, _ := os.OpenFile(f, os.O_WRONLY|os.O_APPEND, 0)
	fh.WriteString("2")
	fh.Close()
	os.Chmod(f, 0o600)
	os.Rename(f, filepath.Join(dir, "g.txt"))
	os.Remove(filepath.Join(dir, "g.txt"))
	os.WriteFile(filepath.Join(dir, "sub", "deep.txt"), nil, 0o644)
	os.Chmod(dir, 0o711)
	got := w.waitEvents(t, "CREATE f.txt", "WRITE f.txt", "CHMOD f.txt", "RENAME f.txt", "CREATE g.txt", "REMOVE g.txt", "CHMOD .")
	noneMatch(t, got, "deep", dir)
	for _, ev := range w.events() {
		if ev.Entry != nil {
			t.Fatalf("entry without include_entry: %v", ev)
		}
	}
}

func TestWatch_RecursiveNewDirectories(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{})
	d := fsUserDir(t, u)
	os.MkdirAll(filepath.Join(d, "existing", "inner"), 0o755)
	// As the user, with a path relative to their home.
	w := startWatch(t, e.Filesystem(), fsAs(&filesystem.WatchDirRequest{Path: filepath.Base(d), Recursive: true}, fsUserName))
	os.WriteFile(filepath.Join(d, "existing", "inner", "a"), nil, 0o644)
	os.Mkdir(filepath.Join(d, "later"), 0o755)
	os.WriteFile(filepath.Join(d, "later", "right-inside"), []byte("x"), 0o644)
	os.MkdirAll(filepath.Join(d, "p", "q", "r"), 0o755)
	os.WriteFile(filepath.Join(d, "p", "q", "r", "leaf"), nil, 0o644)
	w.waitEvents(t, "CREATE existing/inner/a", "CREATE later", "CREATE later/right-inside")
	w.waitEvents(t, "CREATE p", "CREATE p/q", "CREATE p/q/r", "CREATE p/q/r/leaf")
	// The new directory stays watched.
	time.Sleep(50 * time.Millisecond)
	os.WriteFile(filepath.Join(d, "later", "much-later"), nil, 0o644)
	os.RemoveAll(filepath.Join(d, "p"))
	w.waitEvents(t, "CREATE later/much-later", "REMOVE p/q/r/leaf", "REMOVE p/q/r", "REMOVE p/q", "REMOVE p")
}

func TestWatch_IncludeEntry(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	w := startWatch(t, e.Filesystem(connect.WithProtoJSON()), connect.NewRequest(&filesystem.WatchDirRequest{Path: dir, IncludeEntry: true}))
	p := filepath.Join(dir, "e.txt")
	os.WriteFile(p, []byte("abc"), 0o644)
	time.Sleep(50 * time.Millisecond)
	os.Chmod(p, 0o600)
	time.Sleep(50 * time.Millisecond)
	os.Remove(p)
	w.waitEvents(t, "CREATE e.txt", "CHMOD e.txt", "REMOVE e.txt")
	for _, ev := range w.events() {
		switch ev.Type {
		case filesystem.EventType_EVENT_TYPE_REMOVE, filesystem.EventType_EVENT_TYPE_RENAME:
			if ev.Entry != nil {
				t.Fatalf("%s carries an entry", evString(ev))
			}
		case filesystem.EventType_EVENT_TYPE_CHMOD:
			if ev.Entry == nil || ev.Entry.Path != p || ev.Entry.Mode != 0o600 || ev.Entry.Type != filesystem.FileType_FILE_TYPE_FILE {
				t.Fatalf("chmod entry %v", ev.Entry)
			}
		case filesystem.EventType_EVENT_TYPE_CREATE:
			if ev.Entry == nil || ev.Entry.Name != "e.txt" || ev.Entry.Owner != "root" {
				t.Fatalf("create entry %v", ev.Entry)
			}
		}
	}
}

// An upload of f.txt shows as E2B's in-place write (D17): CREATE, CHMOD,
// WRITE of f.txt when new, CHMOD, WRITE when replaced; staging files are
// never reported; compose too. (fs_events_test.go has the exact sequences
// per mode, user and watcher kind.)
func TestWatch_UploadProducesE2BEvents(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	w := startWatch(t, e.Filesystem(connect.WithProtoJSON()), connect.NewRequest(&filesystem.WatchDirRequest{Path: dir, Recursive: true}))
	target := filepath.Join(dir, "f.txt")
	uploadOK(t, filesURL(e, "path", target), nil, filePart{field: "file", filename: target, data: []byte("v1")})
	w.waitEvents(t, "CREATE f.txt", "CHMOD f.txt", "WRITE f.txt")
	resp, b := xfer(t, "POST", filesURL(e, "path", target), strings.NewReader("v2"), http.Header{"Content-Type": {"application/octet-stream"}})
	decodeWritten(t, resp, b)
	got := w.waitEvents(t, "CREATE f.txt", "CHMOD f.txt", "WRITE f.txt", "CHMOD f.txt", "WRITE f.txt")
	if n := strings.Count(strings.Join(got, ","), "CREATE f.txt"); n != 1 {
		t.Fatalf("%d CREATE for one new and one replaced file: %v", n, got)
	}
	os.WriteFile(filepath.Join(dir, "s1"), []byte("a"), 0o644)
	resp, b = postJSON(t, e.URL+"/files/compose", map[string]any{"source_paths": []string{filepath.Join(dir, "s1")}, "destination": filepath.Join(dir, "c.txt")}, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	w.waitEvents(t, "CHMOD f.txt", "WRITE f.txt", "CREATE c.txt", "CHMOD c.txt", "WRITE c.txt", "REMOVE s1")
	// Into a directory the upload creates: the new directory is watched
	// and scanned, so the file is reported (its WRITE may precede the
	// watch on the new directory and be missed, as for any writer).
	sub := filepath.Join(dir, "sub", "deeper", "u.txt")
	uploadOK(t, filesURL(e, "path", sub), nil, filePart{field: "file", filename: "upload", data: []byte("v1")})
	got = w.waitEvents(t, "CREATE sub", "CREATE sub/deeper", "CREATE sub/deeper/u.txt")
	noneMatch(t, got, ".envd-tmp-")
}

func TestWatch_KeepaliveAndDeadline(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	body := fsEnvelope(t, map[string]any{"path": dir})
	req, _ := http.NewRequest("POST", e.URL+filesystemconnect.FilesystemWatchDirProcedure, body)
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("Keepalive-Ping-Interval", "1")
	req.Header.Set("Connect-Timeout-Ms", "3500")
	start := time.Now()
	resp, err := fsRawHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	msgs, end := fsEnvelopes(t, b)
	if resp.StatusCode != 200 || len(msgs) < 3 || msgs[0] != `{"start":{}}` {
		t.Fatalf("%d %v", resp.StatusCode, msgs)
	}
	for _, m := range msgs[1:] {
		if m != `{"keepalive":{}}` {
			t.Fatalf("unexpected %s", m)
		}
	}
	if !strings.Contains(end, `"code":"deadline_exceeded"`) {
		t.Fatalf("end %s", end)
	}
	if d := time.Since(start); d < 3*time.Second {
		t.Fatalf("ended after %v", d)
	}
}

// fsEnvelope frames one Connect streaming request message.
func fsEnvelope(t *testing.T, v any) io.Reader {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 5)
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(b)))
	return bytes.NewReader(append(hdr, b...))
}

// fsEnvelopes splits a Connect streaming response into its messages and
// its end-of-stream payload.
func fsEnvelopes(t *testing.T, b []byte) (msgs []string, end string) {
	for len(b) >= 5 {
		flag, n := b[0], binary.BigEndian.Uint32(b[1:5])
		if int(n) > len(b)-5 {
			t.Fatalf("truncated envelope")
		}
		payload := string(b[5 : 5+n])
		b = b[5+n:]
		if flag&2 != 0 {
			end = payload
		} else {
			msgs = append(msgs, payload)
		}
	}
	return msgs, end
}

func TestWatch_Errors(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem()
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	os.WriteFile(f, nil, 0o644)
	missing := filepath.Join(dir, "missing")
	cases := []struct {
		path string
		code connect.Code
		msg  string
	}{
		{missing, connect.CodeNotFound, "path " + missing + " not found: *"},
		{f, connect.CodeInvalidArgument, "path " + f + " not a directory"},
		{"~nobody/x", connect.CodeInvalidArgument, "failed to expand path '~nobody/x' for user 'root': cannot expand user-specific home dir"},
	}
	for _, c := range cases {
		stream, err := fs.WatchDir(fsCtx(t), connect.NewRequest(&filesystem.WatchDirRequest{Path: c.path}))
		if err == nil {
			for stream.Receive() {
				t.Fatalf("%s: got a message %v", c.path, stream.Msg())
			}
			err = stream.Err()
		}
		fsWantCode(t, err, c.code, c.msg)
		_, err = fs.CreateWatcher(fsCtx(t), connect.NewRequest(&filesystem.CreateWatcherRequest{Path: c.path}))
		fsWantCode(t, err, c.code, c.msg)
	}
	// allow_network_mounts on a local directory changes nothing.
	w := startWatch(t, fs, connect.NewRequest(&filesystem.WatchDirRequest{Path: dir, AllowNetworkMounts: true}))
	os.WriteFile(filepath.Join(dir, "n"), nil, 0o644)
	w.waitEvents(t, "CREATE n")
}

func TestWatch_Polling(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem(connect.WithProtoJSON())
	dir := t.TempDir()
	cr, err := fs.CreateWatcher(fsCtx(t), connect.NewRequest(&filesystem.CreateWatcherRequest{Path: dir, Recursive: true, IncludeEntry: true}))
	if err != nil {
		t.Fatal(err)
	}
	id := cr.Msg.WatcherId
	if !regexp.MustCompile(`^w[a-z0-9]{20}$`).MatchString(id) {
		t.Fatalf("watcher id %q", id)
	}
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	os.WriteFile(filepath.Join(dir, "d", "x"), []byte("1"), 0o644)
	var got []string
	var entries int
	deadline := time.Now().Add(10 * time.Second)
	removed := false
	for !inOrder(got, []string{"CREATE d", "CREATE d/x", "REMOVE d/x"}) {
		if time.Now().After(deadline) {
			t.Fatalf("polled %v", got)
		}
		// Once d/x was seen, d is watched: its removal is reported too.
		if !removed && inOrder(got, []string{"CREATE d", "CREATE d/x"}) {
			os.Remove(filepath.Join(dir, "d", "x"))
			removed = true
		}
		r, err := fs.GetWatcherEvents(fsCtx(t), connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: id}))
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range r.Msg.Events {
			if ev.Entry != nil {
				entries++
			}
		}
		got = append(got, evStrings(r.Msg.Events)...)
		time.Sleep(20 * time.Millisecond)
	}
	if entries == 0 {
		t.Fatal("include_entry gave no entries")
	}
	// Drained: nothing pending.
	r, err := fs.GetWatcherEvents(fsCtx(t), connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: id}))
	if err != nil || len(r.Msg.Events) != 0 {
		t.Fatalf("%v %v", r, err)
	}
	if _, err := fs.RemoveWatcher(fsCtx(t), connect.NewRequest(&filesystem.RemoveWatcherRequest{WatcherId: id})); err != nil {
		t.Fatal(err)
	}
	_, err = fs.GetWatcherEvents(fsCtx(t), connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: id}))
	fsWantCode(t, err, connect.CodeNotFound, "watcher with id "+id+" not found")
	_, err = fs.RemoveWatcher(fsCtx(t), connect.NewRequest(&filesystem.RemoveWatcherRequest{WatcherId: "wdoesnotexist"}))
	fsWantCode(t, err, connect.CodeNotFound, "watcher with id wdoesnotexist not found")
}

// inotifyFDs counts envd's inotify instances.
func inotifyFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); l == "anon_inode:inotify" {
			n++
		}
	}
	return n
}

// Watches end with their stream or their removal: no inotify instance
// (and no goroutine reading it) is left behind.
func TestWatch_NoLeaksAfterCancelAndRemove(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem()
	dir := t.TempDir()
	base := inotifyFDs(t, e.Pid())
	var recs []*watchRecorder
	for range 5 {
		recs = append(recs, startWatch(t, fs, connect.NewRequest(&filesystem.WatchDirRequest{Path: dir, Recursive: true})))
	}
	var ids []string
	for range 3 {
		cr, err := fs.CreateWatcher(fsCtx(t), connect.NewRequest(&filesystem.CreateWatcherRequest{Path: dir}))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, cr.Msg.WatcherId)
	}
	if n := inotifyFDs(t, e.Pid()); n != base+8 {
		t.Fatalf("%d inotify instances, want %d", n, base+8)
	}
	for _, r := range recs {
		r.cancel()
		<-r.done
	}
	for _, id := range ids {
		if _, err := fs.RemoveWatcher(fsCtx(t), connect.NewRequest(&filesystem.RemoveWatcherRequest{WatcherId: id})); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for inotifyFDs(t, e.Pid()) != base {
		if time.Now().After(deadline) {
			t.Fatalf("%d inotify instances left, want %d", inotifyFDs(t, e.Pid()), base)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
