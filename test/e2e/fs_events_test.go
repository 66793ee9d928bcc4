package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/gen/filesystem/filesystemconnect"
	"github.com/envd/envd/internal/envdtest"
)

// Watch events of envd's own writes (spec D17, http.md §12.5 step 8): a new
// file gives CREATE, CHMOD, WRITE; a replaced one CHMOD, WRITE (a trailing
// second WRITE would be allowed; envd makes none); a staging name is never
// reported; and every matching watcher has the events before the response.

// evSentinel starts the names of the files the tests create to find the end
// of an operation's events in a stream (inotify keeps each watcher's events
// in order): they are dropped from what is compared.
const evSentinel = "zz-sentinel-"

// evKind is one way of watching a directory.
type evKind struct {
	name                    string
	poll                    bool
	recursive, includeEntry bool
}

// evKinds are every kind of watcher the D17 sequences must hold for.
var evKinds = []evKind{
	{name: "stream"},
	{name: "stream-recursive", recursive: true},
	{name: "stream-entry", includeEntry: true},
	{name: "stream-recursive-entry", recursive: true, includeEntry: true},
	{name: "poll", poll: true},
	{name: "poll-recursive-entry", poll: true, recursive: true, includeEntry: true},
}

// evWatcher is one watcher of a directory, of either kind.
type evWatcher struct {
	kind   evKind
	stream *watchRecorder
	id     string
	seen   int // stream events already compared
}

// evWatchSet watches one directory in every kind at once (several watchers
// on the same directory), as user.
type evWatchSet struct {
	t     *testing.T
	fs    filesystemconnect.FilesystemClient
	dir   string
	ws    []*evWatcher
	round int
}

func newEvWatchSet(t *testing.T, e *envdtest.Envd, dir, user string) *evWatchSet {
	t.Helper()
	s := &evWatchSet{t: t, fs: e.Filesystem(connect.WithProtoJSON()), dir: dir}
	for _, k := range evKinds {
		w := &evWatcher{kind: k}
		if k.poll {
			r, err := s.fs.CreateWatcher(fsCtx(t), fsAs(&filesystem.CreateWatcherRequest{Path: dir, Recursive: k.recursive, IncludeEntry: k.includeEntry}, user))
			if err != nil {
				t.Fatal(err)
			}
			w.id = r.Msg.WatcherId
			t.Cleanup(func() {
				_, _ = s.fs.RemoveWatcher(context.Background(), connect.NewRequest(&filesystem.RemoveWatcherRequest{WatcherId: w.id}))
			})
		} else {
			w.stream = startWatch(t, s.fs, fsAs(&filesystem.WatchDirRequest{Path: dir, Recursive: k.recursive, IncludeEntry: k.includeEntry}, user))
		}
		s.ws = append(s.ws, w)
	}
	return s
}

// poll drains a polling watcher.
func (s *evWatchSet) poll(w *evWatcher) []*filesystem.FilesystemEvent {
	s.t.Helper()
	r, err := s.fs.GetWatcherEvents(fsCtx(s.t), connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: w.id}))
	if err != nil {
		s.t.Fatalf("%s: %v", w.kind.name, err)
	}
	return r.Msg.Events
}

// next returns, per watcher, the events of the envd operation that just
// answered. Polling watchers are polled at once: the response promised
// that they have them (D17). Stream events are taken up to a sentinel file
// made after the response.
func (s *evWatchSet) next() map[*evWatcher][]*filesystem.FilesystemEvent {
	return s.collect(false)
}

// nextGuest is next for changes made by guest processes, which promise
// nothing: polling watchers are polled up to the sentinel too.
func (s *evWatchSet) nextGuest() map[*evWatcher][]*filesystem.FilesystemEvent {
	return s.collect(true)
}

func (s *evWatchSet) collect(guest bool) map[*evWatcher][]*filesystem.FilesystemEvent {
	s.t.Helper()
	out := map[*evWatcher][]*filesystem.FilesystemEvent{}
	if !guest {
		for _, w := range s.ws {
			if w.kind.poll {
				out[w] = dropSentinels(s.poll(w))
			}
		}
	}
	s.round++
	sentinel := fmt.Sprintf("%s%d", evSentinel, s.round)
	if err := os.WriteFile(filepath.Join(s.dir, sentinel), nil, 0o644); err != nil {
		s.t.Fatal(err)
	}
	for _, w := range s.ws {
		if w.kind.poll {
			if !guest {
				continue
			}
			var all []*filesystem.FilesystemEvent
			deadline := time.Now().Add(15 * time.Second)
			for !slices.ContainsFunc(all, func(ev *filesystem.FilesystemEvent) bool { return ev.Name == sentinel }) {
				if time.Now().After(deadline) {
					s.t.Fatalf("%s: no %s in %v", w.kind.name, sentinel, evStrings(all))
				}
				all = append(all, s.poll(w)...)
				time.Sleep(5 * time.Millisecond)
			}
			out[w] = dropSentinels(all)
			continue
		}
		w.stream.waitEvents(s.t, "CREATE "+sentinel)
		all := w.stream.events()
		end := slices.IndexFunc(all[w.seen:], func(ev *filesystem.FilesystemEvent) bool { return ev.Name == sentinel }) + w.seen
		out[w] = dropSentinels(all[w.seen:end])
		w.seen = end + 1
	}
	return out
}

func dropSentinels(evs []*filesystem.FilesystemEvent) []*filesystem.FilesystemEvent {
	var out []*filesystem.FilesystemEvent
	for _, ev := range evs {
		if !strings.HasPrefix(filepath.Base(ev.Name), evSentinel) {
			out = append(out, ev)
		}
	}
	return out
}

// expect checks that every watcher saw exactly want (flat watchers see only
// the entries directly in the directory, so they get wantFlat) and that the
// entries are there exactly when asked for, describing the file as it is now.
func (s *evWatchSet) expect(got map[*evWatcher][]*filesystem.FilesystemEvent, want, wantFlat []string, owner string) {
	s.t.Helper()
	for _, w := range s.ws {
		evs := got[w]
		exp := wantFlat
		if w.kind.recursive {
			exp = want
		}
		if g := evStrings(evs); !slices.Equal(g, exp) {
			s.t.Errorf("%s: events %q, want %q", w.kind.name, g, exp)
			continue
		}
		for _, ev := range evs {
			if strings.Contains(ev.Name, ".envd-tmp-") {
				s.t.Errorf("%s: staging name reported: %s", w.kind.name, evString(ev))
			}
			carries := ev.Type == filesystem.EventType_EVENT_TYPE_CREATE || ev.Type == filesystem.EventType_EVENT_TYPE_CHMOD ||
				ev.Type == filesystem.EventType_EVENT_TYPE_WRITE
			if !w.kind.includeEntry || !carries {
				if ev.Entry != nil {
					s.t.Errorf("%s: %s carries an entry", w.kind.name, evString(ev))
				}
				continue
			}
			p := filepath.Join(s.dir, ev.Name)
			st, err := os.Stat(p)
			if err != nil {
				continue // removed since (compose sources): no entry to compare
			}
			if ev.Entry == nil || ev.Entry.Path != p || ev.Entry.Owner != owner || (!st.IsDir() && ev.Entry.Size != st.Size()) {
				s.t.Errorf("%s: %s entry %v (owner want %s, size %d)", w.kind.name, evString(ev), ev.Entry, owner, st.Size())
			}
		}
	}
}

// evUpload is one way of uploading files.
type evUpload struct {
	name string
	do   func(t *testing.T, e *envdtest.Envd, user string, files map[string][]byte, order []string)
}

func evGzip(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func evPost(t *testing.T, u string, body []byte, hdr http.Header) {
	t.Helper()
	resp, b := xfer(t, "POST", u, bytes.NewReader(body), hdr)
	decodeWritten(t, resp, b)
}

// evUploads: raw, raw gzip, multipart with one file (as the E2B SDK sends
// it: ?path= and the path as filename), with several (filenames only), and
// gzip multipart. Raw and one-file modes upload the files one request each.
var evUploads = []evUpload{
	{"raw", func(t *testing.T, e *envdtest.Envd, user string, files map[string][]byte, order []string) {
		for _, p := range order {
			evPost(t, filesURL(e, "path", p, "username", user), files[p], http.Header{"Content-Type": {"application/octet-stream"}})
		}
	}},
	{"raw-gzip", func(t *testing.T, e *envdtest.Envd, user string, files map[string][]byte, order []string) {
		for _, p := range order {
			evPost(t, filesURL(e, "path", p, "username", user), evGzip(t, files[p]),
				http.Header{"Content-Type": {"application/octet-stream"}, "Content-Encoding": {"gzip"}})
		}
	}},
	{"multipart-one", func(t *testing.T, e *envdtest.Envd, user string, files map[string][]byte, order []string) {
		for _, p := range order {
			uploadOK(t, filesURL(e, "path", p, "username", user), nil, filePart{field: "file", filename: p, data: files[p]})
		}
	}},
	{"multipart-several", func(t *testing.T, e *envdtest.Envd, user string, files map[string][]byte, order []string) {
		var parts []filePart
		for _, p := range order {
			parts = append(parts, filePart{field: "file", filename: p, data: files[p]})
		}
		uploadOK(t, filesURL(e, "username", user), nil, parts...)
	}},
	{"multipart-gzip", func(t *testing.T, e *envdtest.Envd, user string, files map[string][]byte, order []string) {
		var parts []filePart
		for _, p := range order {
			parts = append(parts, filePart{field: "file", filename: p, data: files[p]})
		}
		body, ct := fileMultipart(t, parts...)
		evPost(t, filesURL(e, "username", user), evGzip(t, body.Bytes()), http.Header{"Content-Type": {ct}, "Content-Encoding": {"gzip"}})
	}},
}

// uploadSeq is D17's sequence for one uploaded file.
func uploadSeq(name string, existed bool) []string {
	if existed {
		return []string{"CHMOD " + name, "WRITE " + name}
	}
	return []string{"CREATE " + name, "CHMOD " + name, "WRITE " + name}
}

// evUser is a user uploads act as: root, or an unprivileged one writing
// into a directory of their own home.
type evUser struct {
	name   string
	unpriv bool
}

var evUsers = []evUser{{"root", false}, {fsUserName, true}}

// dir is a fresh directory for the user's files.
func (u evUser) dir(t *testing.T) string {
	if !u.unpriv {
		return t.TempDir()
	}
	return fsUserDir(t, envdtest.EnsureUser(t, fsUserName))
}

// Every upload mode, new and replaced files, as root and as an unprivileged
// user, seen by every kind of watcher at once: exactly E2B's events, in the
// directory and (for recursive watchers) in a subdirectory.
func TestEvents_UploadSequences(t *testing.T) {
	envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{})
	for _, user := range evUsers {
		for _, up := range evUploads {
			for _, replace := range []bool{false, true} {
				name := fmt.Sprintf("%s/%s/new", user.name, up.name)
				if replace {
					name = fmt.Sprintf("%s/%s/replace", user.name, up.name)
				}
				t.Run(name, func(t *testing.T) {
					dir := user.dir(t)
					sub := filepath.Join(dir, "sub")
					os.Mkdir(sub, 0o755)
					files := map[string][]byte{}
					var order []string
					n := 1
					if up.name == "multipart-several" || up.name == "multipart-gzip" {
						n = 3
					}
					for i := range n {
						p := filepath.Join(dir, fmt.Sprintf("f%d.txt", i))
						files[p] = bytes.Repeat([]byte{'a' + byte(i)}, 100*(i+1))
						order = append(order, p)
					}
					deep := filepath.Join(sub, "deep.txt")
					files[deep] = []byte("deep content")
					if replace {
						for _, p := range append(slices.Clone(order), deep) {
							if err := os.WriteFile(p, []byte("old content that is longer than the new one, to tell them apart ......................................................................................................................................................................................................................................................................................................"), 0o640); err != nil {
								t.Fatal(err)
							}
						}
					}
					ws := newEvWatchSet(t, e, dir, user.name)

					up.do(t, e, user.name, files, order)
					var want []string
					for _, p := range order {
						want = append(want, uploadSeq(filepath.Base(p), replace)...)
					}
					ws.expect(ws.next(), want, want, user.name)

					// Into a subdirectory: recursive watchers only.
					up.do(t, e, user.name, files, []string{deep})
					ws.expect(ws.next(), uploadSeq("sub/deep.txt", replace), nil, user.name)

					for _, p := range append(order, deep) {
						if b, _ := os.ReadFile(p); !bytes.Equal(b, files[p]) {
							t.Fatalf("%s holds %q", p, b)
						}
						st, _ := os.Stat(p)
						if replace && st.Mode().Perm() != 0o640 || !replace && st.Mode().Perm() != 0o644 {
							t.Fatalf("%s mode %v", p, st.Mode())
						}
					}
					fsNoTemps(t, dir)
					fsNoTemps(t, sub)
				})
			}
		}
	}
}

// Compose into a new and onto an existing destination: E2B's events for the
// destination, then the removal of each source, for both users.
func TestEvents_ComposeSequences(t *testing.T) {
	envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{})
	for _, user := range evUsers {
		for _, replace := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/replace=%v", user.name, replace), func(t *testing.T) {
				dir := user.dir(t)
				dest := filepath.Join(dir, "c.txt")
				os.WriteFile(filepath.Join(dir, "s1"), []byte("one "), 0o644)
				os.WriteFile(filepath.Join(dir, "s2"), []byte("two"), 0o644)
				if replace {
					os.WriteFile(dest, []byte("previous"), 0o600)
				}
				ws := newEvWatchSet(t, e, dir, user.name)
				resp, b := postJSON(t, e.URL+"/files/compose", map[string]any{
					"source_paths": []string{filepath.Join(dir, "s1"), filepath.Join(dir, "s2")},
					"destination":  dest, "username": user.name}, nil)
				if resp.StatusCode != 200 {
					t.Fatalf("%d %s", resp.StatusCode, b)
				}
				want := append(uploadSeq("c.txt", replace), "REMOVE s1", "REMOVE s2")
				ws.expect(ws.next(), want, want, user.name)
				if b, _ := os.ReadFile(dest); string(b) != "one two" {
					t.Fatalf("composed %q", b)
				}
				fsNoTemps(t, dir)
			})
		}
	}
}

// A guest process's renames are reported as always: RENAME of the old name
// and CREATE of the new one, also onto an existing file and also for a file
// the guest named like an envd staging file (whose own name stays hidden).
// envd's own commits running meanwhile change nothing of that.
func TestEvents_GuestRenamesReportedAsBefore(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	u := envdtest.EnsureUser(t, fsUserName)
	dir := fsUserDir(t, u)
	for _, n := range []string{"a", "existing", ".envd-tmp-0123456789abcdef0123456789abcdef"} {
		os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644)
		os.Chown(filepath.Join(dir, n), int(u.UID), int(u.GID))
	}
	ws := newEvWatchSet(t, e, dir, fsUserName)
	guest := func(args ...string) {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.Credential()}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	guest("mv", "a", "b")
	ws.expect(ws.nextGuest(), []string{"RENAME a", "CREATE b"}, []string{"RENAME a", "CREATE b"}, fsUserName)
	guest("mv", "b", "existing")
	ws.expect(ws.nextGuest(), []string{"RENAME b", "CREATE existing"}, []string{"RENAME b", "CREATE existing"}, fsUserName)
	guest("mv", ".envd-tmp-0123456789abcdef0123456789abcdef", "c")
	ws.expect(ws.nextGuest(), []string{"CREATE c"}, []string{"CREATE c"}, fsUserName)

	// Guest renames racing envd's uploads into the same directory: each
	// keeps its own events.
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			for i := range 20 {
				resp, err := fsRawHTTP.Post(filesURL(e, "path", filepath.Join(dir, "up"), "username", fsUserName),
					"application/octet-stream", strings.NewReader(strings.Repeat("x", i+1)))
				if err != nil {
					return err
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return fmt.Errorf("upload %d: %d", i, resp.StatusCode)
				}
			}
			return nil
		}()
	}()
	for i := range 20 {
		from, to := fmt.Sprintf("g%d", i), fmt.Sprintf("h%d", i)
		guest("sh", "-c", "echo x > "+from+" && mv "+from+" "+to)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := ws.nextGuest()
	for _, w := range ws.ws {
		evs := evStrings(got[w])
		for i := range 20 {
			from, to := fmt.Sprintf("g%d", i), fmt.Sprintf("h%d", i)
			if !inOrder(evs, []string{"CREATE " + from, "RENAME " + from, "CREATE " + to}) {
				t.Fatalf("%s: %v lacks the guest's rename %s → %s", w.kind.name, evs, from, to)
			}
		}
		// The uploads: one CREATE (the first), then CHMOD and WRITE each.
		var up []string
		for _, s := range evs {
			if strings.HasSuffix(s, " up") {
				up = append(up, s)
			}
		}
		want := uploadSeq("up", false)
		for range 19 {
			want = append(want, uploadSeq("up", true)...)
		}
		if !slices.Equal(up, want) {
			t.Fatalf("%s: upload events %v", w.kind.name, up)
		}
		noneMatch(t, evs, ".envd-tmp-")
	}
}

// The in-place exception (a device node): E2B's in-place events, which are
// those of the writes themselves (WRITE, on kernels that report writes to
// devices — 6.18 reports none), never a CREATE or CHMOD; the response does
// not wait for a marker that cannot come (it comes: the directory is a
// real one).
func TestEvents_InPlaceWriteOfDevice(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	null := filepath.Join(dir, "null")
	if err := syscall.Mknod(null, syscall.S_IFCHR|0o666, 1<<8|3); err != nil {
		t.Fatal(err)
	}
	ws := newEvWatchSet(t, e, dir, "root")
	start := time.Now()
	evPost(t, filesURL(e, "path", null), []byte("discarded"), http.Header{"Content-Type": {"application/octet-stream"}})
	if d := time.Since(start); d > time.Second {
		t.Fatalf("in-place upload took %v: it waited for its watchers in vain", d)
	}
	got := ws.next()
	for _, w := range ws.ws {
		for _, s := range evStrings(got[w]) {
			if s != "WRITE null" {
				t.Fatalf("%s: %v", w.kind.name, evStrings(got[w]))
			}
		}
	}
	if st, _ := os.Lstat(null); st.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("the device was replaced: %v", st.Mode())
	}
}

// An unprivileged envd (lifecycle.md §2.4) gives the same sequences, also
// when it replaces a read-only file of its own.
func TestEvents_UnprivilegedEnvd(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{Credential: u.Credential(), Dir: u.Home})
	dir := fsUserDir(t, u)
	ro := filepath.Join(dir, "ro.txt")
	os.WriteFile(ro, []byte("old"), 0o444)
	os.Chown(ro, int(u.UID), int(u.GID))
	ws := newEvWatchSet(t, e, dir, fsUserName)
	evPost(t, filesURL(e, "path", filepath.Join(dir, "new.txt"), "username", fsUserName), []byte("new"), http.Header{"Content-Type": {"application/octet-stream"}})
	ws.expect(ws.next(), uploadSeq("new.txt", false), uploadSeq("new.txt", false), fsUserName)
	evPost(t, filesURL(e, "path", ro, "username", fsUserName), []byte("replaced"), http.Header{"Content-Type": {"application/octet-stream"}})
	ws.expect(ws.next(), uploadSeq("ro.txt", true), uploadSeq("ro.txt", true), fsUserName)
	if st, _ := os.Stat(ro); st.Mode().Perm() != 0o444 {
		t.Fatalf("mode %v", st.Mode())
	}
}

// evRound is one operation of the write-then-poll loop: do makes it
// (through envd) for round i, want is what the poll right after its response
// must contain in order, and after (optional) runs once the poll was checked.
type evRound struct {
	name  string
	setup func(t *testing.T, dir string, i int) // preparation, before the operation
	do    func(t *testing.T, dir string, i int)
	want  func(i int) []string
	// streamCheck, if set, checks the stream's events of all rounds at the
	// end (entries built when the watcher handled them: a watcher lagging
	// behind the responses would describe a later state).
	streamCheck func(t *testing.T, evs []*filesystem.FilesystemEvent, rounds int)
}

// Events before the response (D17): thousands of operation-then-poll
// rounds on a loaded machine (two busy loops), for uploads (raw and
// multipart), compose, MakeDir, Move and Remove, with a polling watcher
// polled right after each response and a streaming watcher whose entries
// must describe each round's state: zero misses.
func TestEvents_BeforeResponse_WriteThenPoll(t *testing.T) {
	busyLoops(t, 2, 150*time.Second)
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem()
	upload := func(t *testing.T, p string, body []byte, multi bool) {
		if multi {
			b, ct := fileMultipart(t, filePart{field: "file", filename: p, data: body})
			resp, rb := xfer(t, "POST", filesURL(e, "path", p), b, http.Header{"Content-Type": {ct}})
			if resp.StatusCode != 200 {
				t.Fatalf("%d %s", resp.StatusCode, rb)
			}
			return
		}
		resp, rb := xfer(t, "POST", filesURL(e, "path", p), bytes.NewReader(body), http.Header{"Content-Type": {"application/octet-stream"}})
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, rb)
		}
	}
	// Each round's file has its own size, so a WRITE's entry tells which
	// round's content the watcher saw when it handled the event.
	sizesInOrder := func(name string) func(t *testing.T, evs []*filesystem.FilesystemEvent, rounds int) {
		return func(t *testing.T, evs []*filesystem.FilesystemEvent, rounds int) {
			i := 0
			for _, ev := range evs {
				if ev.Name != name || ev.Type != filesystem.EventType_EVENT_TYPE_WRITE {
					continue
				}
				if ev.Entry == nil || ev.Entry.Size != int64(i+1) {
					t.Fatalf("WRITE %d of %s: entry %v, want size %d (the watcher handled it after the next round began)", i, name, ev.Entry, i+1)
				}
				i++
			}
			if i != rounds {
				t.Fatalf("%d WRITE events of %s for %d rounds", i, name, rounds)
			}
		}
	}
	// Entries of names removed right after each response: present only if
	// the watcher handled the event before the response.
	entriesPresent := func(prefix string, typ filesystem.EventType) func(t *testing.T, evs []*filesystem.FilesystemEvent, rounds int) {
		return func(t *testing.T, evs []*filesystem.FilesystemEvent, rounds int) {
			n := 0
			for _, ev := range evs {
				if strings.HasPrefix(ev.Name, prefix) && ev.Type == typ {
					if ev.Entry == nil {
						t.Fatalf("%s has no entry: the watcher handled it after the response", evString(ev))
					}
					n++
				}
			}
			if n != rounds {
				t.Fatalf("%d %v events of %s* for %d rounds", n, typ, prefix, rounds)
			}
		}
	}
	seq := func(name string, i int) []string { return uploadSeq(name, i > 0) }
	rounds := []evRound{
		{name: "upload-raw",
			do: func(t *testing.T, dir string, i int) {
				upload(t, filepath.Join(dir, "u"), bytes.Repeat([]byte("r"), i+1), false)
			},
			want:        func(i int) []string { return seq("u", i) },
			streamCheck: sizesInOrder("u")},
		{name: "upload-multipart",
			do: func(t *testing.T, dir string, i int) {
				upload(t, filepath.Join(dir, "m"), bytes.Repeat([]byte("m"), i+1), true)
			},
			want:        func(i int) []string { return seq("m", i) },
			streamCheck: sizesInOrder("m")},
		{name: "compose",
			setup: func(t *testing.T, dir string, i int) {
				os.WriteFile(filepath.Join(dir, "s"), bytes.Repeat([]byte("c"), i+1), 0o644)
			},
			do: func(t *testing.T, dir string, i int) {
				resp, b := postJSON(t, e.URL+"/files/compose", map[string]any{"source_paths": []string{filepath.Join(dir, "s")}, "destination": filepath.Join(dir, "c")}, nil)
				if resp.StatusCode != 200 {
					t.Fatalf("%d %s", resp.StatusCode, b)
				}
			},
			want:        func(i int) []string { return append(seq("c", i), "REMOVE s") },
			streamCheck: sizesInOrder("c")},
		{name: "makedir",
			do: func(t *testing.T, dir string, i int) {
				if _, err := fs.MakeDir(fsCtx(t), connect.NewRequest(&filesystem.MakeDirRequest{Path: filepath.Join(dir, fmt.Sprintf("d%d", i))})); err != nil {
					t.Fatal(err)
				}
				os.Remove(filepath.Join(dir, fmt.Sprintf("d%d", i)))
			},
			want:        func(i int) []string { return []string{fmt.Sprintf("CREATE d%d", i)} },
			streamCheck: entriesPresent("d", filesystem.EventType_EVENT_TYPE_CREATE)},
		{name: "move",
			setup: func(t *testing.T, dir string, i int) { os.WriteFile(filepath.Join(dir, "a"), nil, 0o644) },
			do: func(t *testing.T, dir string, i int) {
				to := filepath.Join(dir, fmt.Sprintf("b%d", i))
				if _, err := fs.Move(fsCtx(t), connect.NewRequest(&filesystem.MoveRequest{Source: filepath.Join(dir, "a"), Destination: to})); err != nil {
					t.Fatal(err)
				}
				os.Remove(to)
			},
			want:        func(i int) []string { return []string{"RENAME a", fmt.Sprintf("CREATE b%d", i)} },
			streamCheck: entriesPresent("b", filesystem.EventType_EVENT_TYPE_CREATE)},
		{name: "remove",
			// Made through envd, so that the recursive watchers watch x
			// and x/y before the Remove (a guest's mkdir gives no such
			// promise).
			setup: func(t *testing.T, dir string, i int) { upload(t, filepath.Join(dir, "x", "y", "z"), nil, false) },
			do: func(t *testing.T, dir string, i int) {
				if _, err := fs.Remove(fsCtx(t), connect.NewRequest(&filesystem.RemoveRequest{Path: filepath.Join(dir, "x")})); err != nil {
					t.Fatal(err)
				}
			},
			want: func(i int) []string { return []string{"REMOVE x/y/z", "REMOVE x/y", "REMOVE x"} }},
	}
	const maxRounds, minRounds = 2000, 300
	budget := 10 * time.Second
	for _, r := range rounds {
		t.Run(r.name, func(t *testing.T) {
			dir := t.TempDir()
			cr, err := fs.CreateWatcher(fsCtx(t), connect.NewRequest(&filesystem.CreateWatcherRequest{Path: dir, Recursive: true}))
			if err != nil {
				t.Fatal(err)
			}
			id := cr.Msg.WatcherId
			defer fs.RemoveWatcher(context.Background(), connect.NewRequest(&filesystem.RemoveWatcherRequest{WatcherId: id}))
			stream := startWatch(t, e.Filesystem(connect.WithProtoJSON()), connect.NewRequest(&filesystem.WatchDirRequest{Path: dir, Recursive: true, IncludeEntry: true}))
			var misses atomic.Int32
			deadline := time.Now().Add(budget)
			n := 0
			for ; n < maxRounds && (n < minRounds || time.Now().Before(deadline)); n++ {
				if r.setup != nil {
					r.setup(t, dir, n)
				}
				r.do(t, dir, n)
				got, err := hrPoll(fsCtx(t), fs, id)
				if err != nil {
					t.Fatal(err)
				}
				evs := evStrings(got)
				want := r.want(n)
				if !inOrder(evs, want) {
					misses.Add(1)
					t.Errorf("round %d: polled %v right after the response, want %v in it", n, evs, want)
					if misses.Load() > 5 {
						t.FailNow()
					}
				}
				noneMatch(t, evs, ".envd-tmp-")
			}
			t.Logf("%s: %d rounds, %d misses", r.name, n, misses.Load())
			if r.streamCheck != nil {
				sentinel := evSentinel + "end"
				os.WriteFile(filepath.Join(dir, sentinel), nil, 0o644)
				stream.waitEvents(t, "CREATE "+sentinel)
				evs := stream.events()
				noneMatch(t, evStrings(evs), ".envd-tmp-")
				r.streamCheck(t, evs, n)
			}
		})
	}
}

// The cost of D17 on small uploads: 1 KiB files uploaded one request each,
// into a directory without a watcher, with a WatchDir stream, with a
// polling watcher, and with both. Reported per upload (mean by the
// benchmark, p50 and p99 as metrics). Run with -benchtime 2000x.
func BenchmarkEvents_Upload1KiB(b *testing.B) {
	e := envdtest.Start(b, envdtest.Options{})
	fs := e.Filesystem()
	body := bytes.Repeat([]byte("k"), 1024)
	for _, mode := range []string{"raw", "multipart"} {
		for _, watchers := range []string{"none", "stream", "poll", "stream+poll"} {
			b.Run(mode+"/"+watchers, func(b *testing.B) {
				dir := b.TempDir()
				if strings.Contains(watchers, "stream") {
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					st, err := fs.WatchDir(ctx, connect.NewRequest(&filesystem.WatchDirRequest{Path: dir}))
					if err != nil {
						b.Fatal(err)
					}
					defer st.Close()
					if !st.Receive() || st.Msg().GetStart() == nil {
						b.Fatal("no start")
					}
					go func() {
						for st.Receive() {
						}
					}()
				}
				if strings.Contains(watchers, "poll") {
					cr, err := fs.CreateWatcher(context.Background(), connect.NewRequest(&filesystem.CreateWatcherRequest{Path: dir}))
					if err != nil {
						b.Fatal(err)
					}
					id := cr.Msg.WatcherId
					defer fs.RemoveWatcher(context.Background(), connect.NewRequest(&filesystem.RemoveWatcherRequest{WatcherId: id}))
					// Drained now and then, as a client would, so that the
					// buffer never overflows.
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					go func() {
						for ctx.Err() == nil {
							_, _ = fs.GetWatcherEvents(ctx, connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: id}))
							time.Sleep(50 * time.Millisecond)
						}
					}()
				}
				var lat []time.Duration
				i := 0
				for b.Loop() {
					p := filepath.Join(dir, fmt.Sprintf("f%d", i%100))
					i++
					start := time.Now()
					if mode == "raw" {
						resp, rb := xfer(b, "POST", filesURL(e, "path", p), bytes.NewReader(body), http.Header{"Content-Type": {"application/octet-stream"}})
						if resp.StatusCode != 200 {
							b.Fatalf("%d %s", resp.StatusCode, rb)
						}
					} else {
						uploadOK(b, filesURL(e, "path", p), nil, filePart{field: "file", filename: p, data: body})
					}
					lat = append(lat, time.Since(start))
				}
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			})
		}
	}
}

// Events before the response for watchers of the very directory an
// operation removes or moves, and for a recursive watcher of directories
// MakeDir creates: their REMOVE ., RENAME . and CREATEs are in the polling
// buffer when the response arrives.
func TestEvents_BeforeResponse_WatchedDirectoryItself(t *testing.T) {
	busyLoops(t, 2, 120*time.Second)
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem()
	create := func(t *testing.T, p string, recursive bool) string {
		cr, err := fs.CreateWatcher(fsCtx(t), connect.NewRequest(&filesystem.CreateWatcherRequest{Path: p, Recursive: recursive}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = fs.RemoveWatcher(context.Background(), connect.NewRequest(&filesystem.RemoveWatcherRequest{WatcherId: cr.Msg.WatcherId}))
		})
		return cr.Msg.WatcherId
	}
	check := func(t *testing.T, id string, want ...string) {
		t.Helper()
		got, err := hrPoll(fsCtx(t), fs, id)
		if err != nil {
			t.Fatal(err)
		}
		if evs := evStrings(got); !inOrder(evs, want) {
			t.Fatalf("polled %v right after the response, want %v in it", evs, want)
		}
	}
	cases := []struct {
		name string
		run  func(t *testing.T, dir string)
	}{
		{"remove-watched", func(t *testing.T, dir string) {
			x := filepath.Join(dir, "x")
			os.Mkdir(x, 0o755)
			os.WriteFile(filepath.Join(x, "f"), nil, 0o644)
			id := create(t, x, false)
			if _, err := fs.Remove(fsCtx(t), connect.NewRequest(&filesystem.RemoveRequest{Path: x})); err != nil {
				t.Fatal(err)
			}
			check(t, id, "REMOVE f", "REMOVE .")
		}},
		{"remove-watched-recursive", func(t *testing.T, dir string) {
			y := filepath.Join(dir, "y")
			os.MkdirAll(filepath.Join(y, "sub"), 0o755)
			os.WriteFile(filepath.Join(y, "sub", "g"), nil, 0o644)
			id := create(t, y, true)
			if _, err := fs.Remove(fsCtx(t), connect.NewRequest(&filesystem.RemoveRequest{Path: y})); err != nil {
				t.Fatal(err)
			}
			check(t, id, "REMOVE sub/g", "REMOVE sub", "REMOVE .")
		}},
		{"move-watched", func(t *testing.T, dir string) {
			m := filepath.Join(dir, "m")
			os.Mkdir(m, 0o755)
			id := create(t, m, false)
			if _, err := fs.Move(fsCtx(t), connect.NewRequest(&filesystem.MoveRequest{Source: m, Destination: filepath.Join(dir, "n")})); err != nil {
				t.Fatal(err)
			}
			check(t, id, "RENAME .")
		}},
		{"makedir-recursive", func(t *testing.T, dir string) {
			id := create(t, dir, true)
			if _, err := fs.MakeDir(fsCtx(t), connect.NewRequest(&filesystem.MakeDirRequest{Path: filepath.Join(dir, "p", "q", "r")})); err != nil {
				t.Fatal(err)
			}
			check(t, id, "CREATE p", "CREATE p/q", "CREATE p/q/r")
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for i := range 200 {
				t.Run(fmt.Sprint(i), func(t *testing.T) {
					start := time.Now()
					c.run(t, t.TempDir())
					if d := time.Since(start); d > 2*time.Second {
						t.Logf("round took %v", d)
					}
				})
				if t.Failed() {
					return
				}
			}
		})
	}
}
