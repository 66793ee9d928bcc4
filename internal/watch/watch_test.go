package watch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/logging"
)

func TestIsNetworkFS(t *testing.T) {
	for _, m := range []int64{0x6969, 0xFF534D42, 0x517B, 0xFE534D42, 0x65735546, int64(int32(-11317950))} {
		if !isNetworkFS(m) {
			t.Errorf("%#x must be a network filesystem", m)
		}
	}
	// ext4, tmpfs, xfs, btrfs, overlayfs, procfs
	for _, m := range []int64{0xEF53, 0x01021994, 0x58465342, 0x9123683E, 0x794c7630, 0x9fa0} {
		if isNetworkFS(m) {
			t.Errorf("%#x is not a network filesystem", m)
		}
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	if err := Validate(dir, false); err != nil {
		t.Fatal(err)
	}
	err := Validate(filepath.Join(dir, "nope"), false)
	if fsops.KindOf(err) != fsops.KindNotFound || !strings.HasPrefix(err.Error(), "path "+filepath.Join(dir, "nope")+" not found: ") {
		t.Fatalf("missing: %v", err)
	}
	f := filepath.Join(dir, "f")
	os.WriteFile(f, nil, 0o644)
	err = Validate(f, false)
	if fsops.KindOf(err) != fsops.KindInvalidArgument || err.Error() != "path "+f+" not a directory" {
		t.Fatalf("file: %v", err)
	}
	// A symlink to a directory is a directory.
	os.Symlink(dir, filepath.Join(dir, "l"))
	if err := Validate(filepath.Join(dir, "l"), false); err != nil {
		t.Fatal(err)
	}
}

func TestParseEvents(t *testing.T) {
	var buf []byte
	add := func(wd int32, mask uint32, name string, pad int) {
		h := make([]byte, inotifyHeader)
		binary.NativeEndian.PutUint32(h[0:4], uint32(wd))
		binary.NativeEndian.PutUint32(h[4:8], mask)
		n := 0
		if name != "" {
			n = len(name) + pad
		}
		binary.NativeEndian.PutUint32(h[12:16], uint32(n))
		buf = append(buf, h...)
		if name != "" {
			buf = append(buf, name...)
			buf = append(buf, make([]byte, pad)...)
		}
	}
	add(1, unix.IN_CREATE, "a.txt", 3)
	add(2, unix.IN_DELETE_SELF, "", 0)
	evs, err := parseEvents(buf)
	if err != nil || len(evs) != 2 || evs[0] != (rawEvent{1, unix.IN_CREATE, 0, "a.txt"}) || evs[1] != (rawEvent{2, unix.IN_DELETE_SELF, 0, ""}) {
		t.Fatalf("%+v %v", evs, err)
	}
	if _, err := parseEvents(buf[:len(buf)-3]); !errors.Is(err, errShortEvent) {
		t.Fatalf("truncated: %v", err)
	}
}

func FuzzParseEvents(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, inotifyHeader))
	f.Add(append(make([]byte, 12), 0xff, 0xff, 0xff, 0xff))
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, _ := parseEvents(b)
		if len(evs)*inotifyHeader > len(b) {
			t.Fatalf("%d events from %d bytes", len(evs), len(b))
		}
	})
}

func TestNewID(t *testing.T) {
	re := regexp.MustCompile(`^w[a-z0-9]{20}$`)
	seen := map[string]bool{}
	for range 1000 {
		id := newID()
		if !re.MatchString(id) || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		seen[id] = true
	}
}

// collector is a sink for direct watcher tests.
type collector struct {
	mu  sync.Mutex
	evs []Event
	err error
}

func (c *collector) deliver(evs []Event) {
	c.mu.Lock()
	c.evs = append(c.evs, evs...)
	c.mu.Unlock()
}

func (c *collector) fail(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

// waitFor waits until the events seen so far contain want in order (other
// events may interleave) and returns everything seen.
func (c *collector) waitFor(t *testing.T, want ...string) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		got := describe(c.evs)
		c.mu.Unlock()
		if containsInOrder(got, want) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("events %v do not contain %v in order", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func describe(evs []Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Op.String() + " " + e.Name
	}
	return out
}

func containsInOrder(got, want []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

func startTest(t *testing.T, dir string, opts Options) *collector {
	t.Helper()
	c := &collector{}
	w, err := startWatcher(dir, opts, c, newHub(logging.Discard(), 0), logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.stop)
	return c
}

func TestWatcher_Operations(t *testing.T) {
	dir := t.TempDir()
	c := startTest(t, dir, Options{})
	f := filepath.Join(dir, "f.txt")
	os.WriteFile(f, []byte("1"), 0o644)
	fh, _ := os.OpenFile(f, os.O_WRONLY|os.O_APPEND, 0)
	fh.Write([]byte("2"))
	fh.Close()
	os.Chmod(f, 0o600)
	os.Rename(f, filepath.Join(dir, "g.txt"))
	os.Remove(filepath.Join(dir, "g.txt"))
	os.WriteFile(filepath.Join(dir, TempPrefix+"0123"), nil, 0o644)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "inner"), nil, 0o644)
	os.Chmod(dir, 0o700)
	// The kernel merges the two writes' identical IN_MODIFY events when the
	// first is still unread, so one WRITE is all that is certain.
	got := c.waitFor(t, "CREATE f.txt", "WRITE f.txt", "CHMOD f.txt", "RENAME f.txt", "CREATE g.txt", "REMOVE g.txt", "CREATE sub", "CHMOD .")
	for _, g := range got {
		if strings.Contains(g, TempPrefix) || strings.Contains(g, "inner") {
			t.Fatalf("unexpected event %q in %v", g, got)
		}
	}
}

func TestWatcher_RecursiveAddsNewDirectoriesAndScans(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "old", "deeper"), 0o755)
	c := startTest(t, dir, Options{Recursive: true})
	os.WriteFile(filepath.Join(dir, "old", "deeper", "x"), nil, 0o644)
	// mkdir -p creates nested directories faster than a watch can be added;
	// the scan reports what the watches missed.
	os.MkdirAll(filepath.Join(dir, "new", "a", "b"), 0o755)
	os.WriteFile(filepath.Join(dir, "new", "a", "b", "file"), []byte("x"), 0o644)
	c.waitFor(t, "CREATE old/deeper/x", "CREATE new", "CREATE new/a", "CREATE new/a/b", "CREATE new/a/b/file")
	// Directories moved in are watched too; moved out are forgotten.
	outside := t.TempDir()
	os.MkdirAll(filepath.Join(outside, "m", "n"), 0o755)
	os.Rename(filepath.Join(outside, "m"), filepath.Join(dir, "moved"))
	c.waitFor(t, "CREATE moved", "CREATE moved/n")
	os.WriteFile(filepath.Join(dir, "moved", "n", "later"), nil, 0o644)
	c.waitFor(t, "CREATE moved/n/later")
	os.Rename(filepath.Join(dir, "moved"), filepath.Join(outside, "gone"))
	c.waitFor(t, "RENAME moved")
	os.WriteFile(filepath.Join(outside, "gone", "n", "after"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "marker"), nil, 0o644)
	got := c.waitFor(t, "CREATE marker")
	for _, g := range got {
		if strings.Contains(g, "after") {
			t.Fatalf("event from a directory moved out of the tree: %v", got)
		}
	}
	// A removed subdirectory is reported once, by its parent.
	os.RemoveAll(filepath.Join(dir, "old"))
	got = c.waitFor(t, "REMOVE old/deeper/x", "REMOVE old/deeper", "REMOVE old")
	n := 0
	for _, g := range got {
		if g == "REMOVE old/deeper" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("REMOVE old/deeper reported %d times: %v", n, got)
	}
}

func TestWatcher_NonRecursiveIgnoresGrandchildren(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	c := startTest(t, dir, Options{})
	os.WriteFile(filepath.Join(dir, "sub", "deep"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "top"), nil, 0o644)
	got := c.waitFor(t, "CREATE top")
	for _, g := range got {
		if strings.Contains(g, "deep") {
			t.Fatalf("grandchild reported: %v", got)
		}
	}
}

func TestWatcher_IncludeEntry(t *testing.T) {
	dir := t.TempDir()
	c := startTest(t, dir, Options{IncludeEntry: true})
	p := filepath.Join(dir, "e.txt")
	os.WriteFile(p, []byte("abc"), 0o644)
	os.Remove(p)
	c.waitFor(t, "CREATE e.txt", "REMOVE e.txt")
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ev := range c.evs {
		switch ev.Op {
		case OpRemove, OpRename:
			if ev.Entry != nil {
				t.Fatalf("%v carries an entry", ev)
			}
		}
	}
	// The CREATE's entry may be missing if the file was already gone when
	// the event was handled; the REMOVE never has one.
	if ev := c.evs[0]; ev.Entry != nil && (ev.Entry.Path != p || ev.Entry.Name != "e.txt") {
		t.Fatalf("entry %+v", ev.Entry)
	}
}

func TestWatcher_RootRemoved(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "w")
	os.Mkdir(dir, 0o755)
	c := startTest(t, dir, Options{Recursive: true})
	os.Remove(dir)
	c.waitFor(t, "REMOVE .")
}

func TestPoller_OverflowReportsDataLossOnceThenCollects(t *testing.T) {
	m := NewManager(logging.Discard(), Limits{MaxPending: 4})
	defer m.Close()
	dir := t.TempDir()
	id, err := m.Create(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), nil, 0o644)
	}
	// Wait until the watcher has seen the last file: its CREATE is pending
	// (the buffer was reset by the overflow and refilled).
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := m.pollers[id]
		p.mu.Lock()
		done := p.overflowed && len(p.pending) > 0 && p.pending[len(p.pending)-1].Name == "f9"
		n := len(p.pending)
		p.mu.Unlock()
		if n > 4 {
			t.Fatalf("buffer holds %d events, bound is 4", n)
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watcher never overflowed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := events(m, id); !errors.Is(err, ErrOverflow) {
		t.Fatalf("want overflow, got %v", err)
	}
	evs, err := events(m, id)
	if err != nil || len(evs) == 0 || evs[len(evs)-1].Name != "f9" {
		t.Fatalf("after overflow: %v %v", describe(evs), err)
	}
	os.WriteFile(filepath.Join(dir, "again"), nil, 0o644)
	for {
		evs, err := events(m, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) > 0 {
			if evs[0].Name != "again" {
				t.Fatalf("%v", describe(evs))
			}
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestManager_UnknownIDsAndRemove(t *testing.T) {
	m := NewManager(logging.Discard(), Limits{})
	if _, err := events(m, "wnope"); fsops.KindOf(err) != fsops.KindNotFound || err.Error() != "watcher with id wnope not found" {
		t.Fatalf("%v", err)
	}
	if err := m.Remove("wnope"); fsops.KindOf(err) != fsops.KindNotFound {
		t.Fatalf("%v", err)
	}
	id, err := m.Create(t.TempDir(), Options{Recursive: true})
	if err != nil {
		t.Fatal(err)
	}
	if p, s := m.Len(); p != 1 || s != 0 {
		t.Fatalf("len %d %d", p, s)
	}
	if err := m.Remove(id); err != nil {
		t.Fatal(err)
	}
	if _, err := events(m, id); fsops.KindOf(err) != fsops.KindNotFound {
		t.Fatalf("removed watcher still answers: %v", err)
	}
	m.Close()
	if _, err := m.Create(t.TempDir(), Options{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
}

func TestStream_QueueFullFailsInsteadOfBlocking(t *testing.T) {
	m := NewManager(logging.Discard(), Limits{})
	defer m.Close()
	dir := t.TempDir()
	s, err := m.Stream(dir, Options{}, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 5 {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), nil, 0o644)
	}
	select {
	case <-s.Done():
		if !errors.Is(s.Err(), ErrQueueFull) {
			t.Fatalf("err %v", s.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a full queue did not fail the stream")
	}
}

func TestManager_CloseEndsStreams(t *testing.T) {
	m := NewManager(logging.Discard(), Limits{})
	s, err := m.Stream(t.TempDir(), Options{Recursive: true}, 8)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	select {
	case <-s.Done():
		if !errors.Is(s.Err(), ErrClosed) {
			t.Fatalf("err %v", s.Err())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("close did not end the stream")
	}
	s.Close() // idempotent after the manager closed it
	if p, st := m.Len(); p != 0 || st != 0 {
		t.Fatalf("len %d %d", p, st)
	}
}

func TestWatcher_KernelQueueOverflowIsTerminal(t *testing.T) {
	dir := t.TempDir()
	c := &collector{}
	w, err := startWatcher(dir, Options{}, c, newHub(logging.Discard(), 0), logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer w.stop()
	evs, _, ferr := w.translate([]rawEvent{{wd: w.rootWD, mask: unix.IN_CREATE, name: "a"}, {wd: -1, mask: unix.IN_Q_OVERFLOW}})
	if !errors.Is(ferr, errQueueOverflow) || len(evs) != 1 {
		t.Fatalf("%v %v", describe(evs), ferr)
	}
}
