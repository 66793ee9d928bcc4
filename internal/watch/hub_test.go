package watch

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/logging"
)

func dirID(t *testing.T, p string) fsops.DirID {
	t.Helper()
	fd, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	id, ok := fsops.DirIDOf(int(fd.Fd()))
	if !ok {
		t.Fatal("fstat failed")
	}
	return id
}

func changed(t *testing.T, dirs ...string) []fsops.ChangedDir {
	var out []fsops.ChangedDir
	for _, d := range dirs {
		out = append(out, fsops.ChangedDir{Path: d, ID: dirID(t, d)})
	}
	return out
}

// queued takes what a stream has queued right now, without waiting.
func queued(s *Stream) []string {
	var out []Event
	for {
		select {
		case ev := <-s.Events():
			s.Taken(ev)
			out = append(out, ev)
			continue
		default:
		}
		return describe(out)
	}
}

// oneProc runs the test with one P: a watcher goroutine then runs only when
// the test goroutine blocks, so a check right after an operation finds its
// events only if Settle waited for them.
func oneProc(t *testing.T) {
	prev := runtime.GOMAXPROCS(1)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
}

// Once Settle returns, the events made before it are in the stream's
// queue and in the poller's buffer (spec D17), round after round, for
// watchers of the directory itself and recursive watchers above it; no
// marker is ever reported.
func TestSettle_EventsQueuedWhenSettleReturns(t *testing.T) {
	oneProc(t)
	m := NewManager(logging.Discard(), Limits{})
	defer m.Close()
	root := t.TempDir()
	dir := filepath.Join(root, "d")
	os.Mkdir(dir, 0o755)
	flat, err := m.Stream(dir, Options{}, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer flat.Close()
	rec, err := m.Stream(root, Options{Recursive: true, IncludeEntry: true}, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	id, err := m.Create(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		name := fmt.Sprintf("f%d", i)
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		m.Settle(context.Background(), changed(t, dir))
		if got := queued(flat); !containsInOrder(got, []string{"CREATE " + name}) || len(got) != 1 {
			t.Fatalf("round %d: flat stream queued %v", i, got)
		}
		if got := queued(rec); !containsInOrder(got, []string{"CREATE d/" + name}) || len(got) != 1 {
			t.Fatalf("round %d: recursive stream queued %v", i, got)
		}
		evs, err := events(m, id)
		if got := describe(evs); err != nil || len(got) != 1 || got[0] != "CREATE "+name {
			t.Fatalf("round %d: poller holds %v %v", i, got, err)
		}
	}
	if n := len(m.hub.markers) + len(m.hub.barriers); n != 0 {
		t.Fatalf("%d markers or barriers left", n)
	}
}

// A watcher that watches only a directory the operation removed is waited
// for until it has handed over the end of that watch (its children's
// REMOVE and REMOVE .), without a marker.
func TestSettle_WatcherOfRemovedDirectory(t *testing.T) {
	oneProc(t)
	m := NewManager(logging.Discard(), Limits{})
	defer m.Close()
	root := t.TempDir()
	for i := range 100 {
		dir := filepath.Join(root, fmt.Sprintf("d%d", i))
		os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
		os.WriteFile(filepath.Join(dir, "sub", "f"), nil, 0o644)
		s, err := m.Stream(dir, Options{Recursive: true}, 1024)
		if err != nil {
			t.Fatal(err)
		}
		ch := fsops.NewChanges(m)
		if err := fsops.Remove(dir, ch); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		ch.Settle(context.Background())
		if d := time.Since(start); d > time.Second {
			t.Fatalf("settle took %v", d)
		}
		if got := queued(s); !containsInOrder(got, []string{"REMOVE sub/f", "REMOVE sub", "REMOVE ."}) {
			t.Fatalf("round %d: queued %v", i, got)
		}
		s.Close()
	}
}

// blockingSink holds the watcher's goroutine in deliver until released.
type blockingSink struct {
	collector
	gate chan struct{}
}

func (b *blockingSink) deliver(evs []Event) {
	<-b.gate
	b.collector.deliver(evs)
}

// A watcher whose goroutine does not get to the marker holds a request
// no longer than the settle timeout, and the wait is logged.
func TestSettle_TimeoutBoundsTheWait(t *testing.T) {
	var logBuf syncBuffer
	h := newHub(slog.New(slog.NewTextHandler(&logBuf, nil)), 300*time.Millisecond)
	dir := t.TempDir()
	s := &blockingSink{gate: make(chan struct{})}
	w, err := startWatcher(dir, Options{}, s, h, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	open := func() { once.Do(func() { close(s.gate) }) }
	// A failure must not leave the goroutine blocked.
	defer open()
	// The goroutine blocks delivering this.
	os.WriteFile(filepath.Join(dir, "f"), nil, 0o644)
	start := time.Now()
	h.Settle(context.Background(), changed(t, dir))
	if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
		t.Fatalf("settle returned after %v, want the 300ms timeout", d)
	}
	if !strings.Contains(logBuf.String(), "watchers did not take a request's events in time") {
		t.Fatalf("no warning logged: %q", logBuf.String())
	}
	open()
	w.stop()
	if len(h.markers)+len(h.barriers)+len(h.index) != 0 || h.Watching() {
		t.Fatalf("left behind: %d markers, %d barriers, %d indexed, watching %v", len(h.markers), len(h.barriers), len(h.index), h.Watching())
	}
}

// A watcher that stops (removed, failed, shut down) while a request waits
// for it releases the request at once.
func TestSettle_StoppedWatcherReleasesTheWait(t *testing.T) {
	h := newHub(logging.Discard(), time.Minute)
	dir := t.TempDir()
	s := &blockingSink{gate: make(chan struct{})}
	w, err := startWatcher(dir, Options{}, s, h, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "f"), nil, 0o644)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.Settle(context.Background(), changed(t, dir))
	}()
	time.Sleep(100 * time.Millisecond)
	select {
	case <-done:
		t.Fatal("settle returned while the watcher was blocked")
	default:
	}
	close(s.gate)
	// The gate is open: the watcher confirms, or stops; either releases.
	go w.stop()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("settle did not return after the watcher stopped")
	}
	// Stopped before the marker: released by the stop itself.
	w2, err := startWatcher(dir, Options{}, &blockingSink{gate: make(chan struct{})}, h, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	b, places := h.plan(changed(t, dir))
	if b == nil {
		t.Fatal("no barrier for a watched directory")
	}
	defer h.finish(b, places)
	go w2.stop()
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		t.Fatal("a stopped watcher still holds the barrier")
	}
}

// A marker that cannot be placed (the path now leads to another
// directory) releases its watchers instead of waiting for them; a
// cancelled request does not wait at all.
func TestSettle_NoWaitWithoutMarkerOrClient(t *testing.T) {
	h := newHub(logging.Discard(), time.Minute)
	a, b := t.TempDir(), t.TempDir()
	w, err := startWatcher(a, Options{}, &collector{}, h, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer w.stop()
	start := time.Now()
	h.Settle(context.Background(), []fsops.ChangedDir{{Path: b, ID: dirID(t, a)}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h.Settle(ctx, changed(t, a))
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("settle waited %v", d)
	}
	fsNoMarkers(t, a)
	fsNoMarkers(t, b)
}

func fsNoMarkers(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), TempPrefix) {
			t.Fatalf("marker left in %s: %s", dir, e.Name())
		}
	}
}

// An announced commit's rename is reported as E2B's in-place write: CREATE
// for a new name, nothing for a replaced one; an unannounced one (a guest
// renaming its own staging-like file) stays a CREATE; withdrawn
// announcements are forgotten.
func TestCommit_RenameReportedAsInPlaceWrite(t *testing.T) {
	h := newHub(logging.Discard(), 0)
	dir := t.TempDir()
	c := &collector{}
	w, err := startWatcher(dir, Options{}, c, h, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer w.stop()
	id := dirID(t, dir)
	stage := func(name string) string {
		p := filepath.Join(dir, TempPrefix+name)
		os.WriteFile(p, []byte("x"), 0o644)
		return TempPrefix + name
	}
	reset := func() {
		c.mu.Lock()
		c.evs = nil
		c.mu.Unlock()
	}
	os.WriteFile(filepath.Join(dir, "old"), nil, 0o644)
	c.waitFor(t, "CREATE old")
	reset()
	for i, tc := range []struct {
		staged, final string
		announce      bool
		existed       bool
		want          []string
	}{
		{"aaaa", "new", true, false, []string{"CREATE new"}},
		{"bbbb", "old", true, true, nil},
		{"cccc", "guest", false, false, []string{"CREATE guest"}},
	} {
		s := stage(tc.staged)
		release := func() {}
		if tc.announce {
			release = h.Commit(id, s, tc.existed)
		}
		os.Rename(filepath.Join(dir, s), filepath.Join(dir, tc.final))
		h.Settle(context.Background(), changed(t, dir))
		release()
		sentinel := fmt.Sprintf("sentinel%d", i)
		os.WriteFile(filepath.Join(dir, sentinel), nil, 0o644)
		got := c.waitFor(t, "CREATE "+sentinel)
		reset()
		got = got[:len(got)-1]
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Fatalf("%s → %s: %v, want %v", s, tc.final, got, tc.want)
		}
	}
	if len(h.commits) != 0 {
		t.Fatalf("%d commits left announced", len(h.commits))
	}
}

// Announcements are bounded: beyond maxCommits a commit is not announced
// (its rename is then a CREATE, as any rename) and nothing grows.
func TestCommit_Bounded(t *testing.T) {
	h := newHub(logging.Discard(), 0)
	var releases []func()
	for i := range maxCommits + 10 {
		releases = append(releases, h.Commit(fsops.DirID{Ino: 1}, fmt.Sprint(i), false))
	}
	if len(h.commits) != maxCommits {
		t.Fatalf("%d commits held", len(h.commits))
	}
	if _, ok := h.commit(fsops.DirID{Ino: 1}, fmt.Sprint(maxCommits+5)); ok {
		t.Fatal("a commit beyond the bound was announced")
	}
	for _, r := range releases {
		r()
		r()
	}
	if len(h.commits) != 0 {
		t.Fatalf("%d commits left", len(h.commits))
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A watcher still holding a removed directory's events (read, not yet
// handed over) is still found by a request that removed it: the index
// forgets the directory only once the events are handed over.
func TestSettle_WatcherFoundUntilRemovalHandedOver(t *testing.T) {
	h := newHub(logging.Discard(), time.Minute)
	x := filepath.Join(t.TempDir(), "x")
	os.Mkdir(x, 0o755)
	os.WriteFile(filepath.Join(x, "f"), nil, 0o644)
	s := &blockingSink{gate: make(chan struct{})}
	w, err := startWatcher(x, Options{}, s, h, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer w.stop()
	var once sync.Once
	open := func() { once.Do(func() { close(s.gate) }) }
	defer open() // before the stop: a failure must not leave the goroutine blocked
	ch := fsops.NewChanges(h)
	if err := fsops.Remove(x, ch); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the watcher reads the removal and blocks handing it over
	done := make(chan struct{})
	go func() {
		defer close(done)
		ch.Settle(context.Background())
	}()
	select {
	case <-done:
		t.Fatal("settle returned while the watcher had not handed over the removal")
	case <-time.After(300 * time.Millisecond):
	}
	open()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("settle did not return once the removal was handed over")
	}
	s.mu.Lock()
	got := describe(s.evs)
	s.mu.Unlock()
	if !containsInOrder(got, []string{"REMOVE f", "REMOVE ."}) {
		t.Fatalf("handed over %v", got)
	}
}
