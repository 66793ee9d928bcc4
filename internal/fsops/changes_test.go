package fsops

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// fakeObserver records what operations report; it watches the directories
// in watched (all when nil).
type fakeObserver struct {
	watched  map[DirID]bool
	settled  [][]ChangedDir
	commits  map[string]bool
	released int
}

func (f *fakeObserver) Watching() bool { return true }
func (f *fakeObserver) Watched(id DirID) bool {
	return f.watched == nil || f.watched[id]
}
func (f *fakeObserver) Commit(dir DirID, name string, existed bool) func() {
	if f.commits == nil {
		f.commits = map[string]bool{}
	}
	f.commits[name] = existed
	return func() { f.released++ }
}
func (f *fakeObserver) Settle(_ context.Context, changed []ChangedDir) {
	f.settled = append(f.settled, slices.Clone(changed))
}

func idOfPath(t *testing.T, p string) DirID {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id, ok := DirIDOf(int(f.Fd()))
	if !ok {
		t.Fatal("fstat")
	}
	return id
}

func settledDirs(f *fakeObserver) (paths []string, gone []DirID) {
	for _, s := range f.settled {
		for _, c := range s {
			if c.Gone {
				gone = append(gone, c.ID)
			} else {
				paths = append(paths, c.Path)
			}
		}
	}
	return paths, gone
}

// MakeDir reports the directories it created entries in: the parent of
// each directory it made, with their identities.
func TestChanges_MakeDirRecordsParentsOfCreated(t *testing.T) {
	dir := t.TempDir()
	obs := &fakeObserver{}
	ch := NewChanges(obs)
	if _, err := MakeDir(fakeNames{}, filepath.Join(dir, "a", "b"), uint32(os.Getuid()), uint32(os.Getgid()), ch); err != nil {
		t.Fatal(err)
	}
	ch.Settle(context.Background())
	paths, _ := settledDirs(obs)
	if !slices.Equal(paths, []string{dir, filepath.Join(dir, "a")}) {
		t.Fatalf("recorded %v", paths)
	}
	if got := obs.settled[0][0].ID; got != idOfPath(t, dir) {
		t.Fatalf("identity %v", got)
	}
}

// Move reports both parents, the moved directory (its own watchers see
// RENAME .) and an empty directory it replaced (gone).
func TestChanges_MoveRecordsParentsMovedAndReplaced(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "src", "moved"), 0o755)
	os.MkdirAll(filepath.Join(dir, "dst", "empty"), 0o755)
	replaced := idOfPath(t, filepath.Join(dir, "dst", "empty"))
	moved := idOfPath(t, filepath.Join(dir, "src", "moved"))
	obs := &fakeObserver{}
	ch := NewChanges(obs)
	if _, err := Move(fakeNames{}, filepath.Join(dir, "src", "moved"), filepath.Join(dir, "dst", "empty"), 0, 0, ch); err != nil {
		t.Fatal(err)
	}
	ch.Settle(context.Background())
	paths, gone := settledDirs(obs)
	if !slices.Equal(paths, []string{filepath.Join(dir, "src"), filepath.Join(dir, "dst"), filepath.Join(dir, "dst", "empty")}) {
		t.Fatalf("recorded %v", paths)
	}
	if obs.settled[0][2].ID != moved || !slices.Equal(gone, []DirID{replaced}) {
		t.Fatalf("moved %v gone %v, want %v and %v", obs.settled[0][2].ID, gone, moved, replaced)
	}
}

// Remove reports the parent and the removed directories that are watched,
// and only those.
func TestChanges_RemoveRecordsWatchedGoneDirectories(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "t")
	os.MkdirAll(filepath.Join(tree, "a", "b"), 0o755)
	os.MkdirAll(filepath.Join(tree, "c"), 0o755)
	os.WriteFile(filepath.Join(tree, "a", "b", "f"), nil, 0o644)
	watchedB, watchedT := idOfPath(t, filepath.Join(tree, "a", "b")), idOfPath(t, tree)
	obs := &fakeObserver{watched: map[DirID]bool{watchedB: true, watchedT: true}}
	ch := NewChanges(obs)
	if err := Remove(tree, ch); err != nil {
		t.Fatal(err)
	}
	ch.Settle(context.Background())
	paths, gone := settledDirs(obs)
	if !slices.Equal(paths, []string{dir}) || !slices.Equal(gone, []DirID{watchedB, watchedT}) {
		t.Fatalf("recorded %v, gone %v (want b then t: %v %v)", paths, gone, watchedB, watchedT)
	}
}

// A record is bounded: the latest removed directories are kept.
func TestChanges_GoneBounded(t *testing.T) {
	obs := &fakeObserver{}
	ch := NewChanges(obs)
	for i := range 5000 {
		ch.Gone(DirID{Ino: uint64(i)})
	}
	if len(ch.gone) > maxGoneDirs || ch.gone[len(ch.gone)-1].Ino != 4999 {
		t.Fatalf("%d gone kept, last %v", len(ch.gone), ch.gone[len(ch.gone)-1])
	}
	for i := range 5000 {
		ch.DirByID("/x", DirID{Ino: uint64(i)})
	}
	if len(ch.dirs) != maxChangedDirs {
		t.Fatalf("%d dirs kept", len(ch.dirs))
	}
	ch.Settle(context.Background())
	if ch.Pending() != 0 {
		t.Fatal("settled record not empty")
	}
}

// Nothing is recorded without an observer, and nil is a valid record.
func TestChanges_NilRecordsNothing(t *testing.T) {
	var ch *Changes
	ch.Dir(0, "/")
	ch.Gone(DirID{})
	ch.Commit(0, "x", false)()
	ch.Settle(context.Background())
	empty := NewChanges(nil)
	empty.Dir(0, "/")
	if empty.Pending() != 0 {
		t.Fatal("recorded without an observer")
	}
}
