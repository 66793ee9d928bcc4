package fsops

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type fakeNames struct{}

func (fakeNames) UserName(uid uint32) string  { return fmt.Sprintf("u%d", uid) }
func (fakeNames) GroupName(gid uint32) string { return fmt.Sprintf("g%d", gid) }

func mustKind(t *testing.T, err error, kind Kind, msgPrefix string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", kind)
	}
	if KindOf(err) != kind {
		t.Fatalf("kind %v (%v), want %v", KindOf(err), err, kind)
	}
	if !strings.HasPrefix(err.Error(), msgPrefix) {
		t.Fatalf("message %q, want prefix %q", err, msgPrefix)
	}
}

func TestStat_RegularFileFields(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.txt")
	if err := os.WriteFile(p, []byte("hello"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	mt := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
	e, err := Stat(fakeNames{}, p)
	if err != nil {
		t.Fatal(err)
	}
	if e.Name != "f.txt" || e.Path != p || e.Type != TypeFile || e.Size != 5 || e.Mode != 0o640 ||
		e.Permissions != "-rw-r-----" || e.SymlinkTarget != nil || !e.ModTime.Equal(mt) {
		t.Fatalf("entry %+v", e)
	}
	if e.Owner != fmt.Sprintf("u%d", os.Getuid()) || e.Group != fmt.Sprintf("g%d", os.Getgid()) {
		t.Fatalf("owner %s group %s", e.Owner, e.Group)
	}
}

func TestStat_NotFound(t *testing.T) {
	_, err := Stat(fakeNames{}, "/nonexistent/x")
	mustKind(t, err, KindNotFound, "file not found: ")
	// A file used as a directory cannot exist either.
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, nil, 0o644)
	_, err = Stat(fakeNames{}, filepath.Join(f, "x"))
	mustKind(t, err, KindNotFound, "file not found: ")
}

func TestStat_NameOfRootAndTrailingSlash(t *testing.T) {
	e, err := Stat(fakeNames{}, "/")
	if err != nil || e.Name != "/" || e.Type != TypeDirectory {
		t.Fatalf("%+v %v", e, err)
	}
	dir := t.TempDir()
	e, err = Stat(fakeNames{}, dir+"/")
	if err != nil || e.Name != filepath.Base(dir) || e.Path != dir+"/" {
		t.Fatalf("%+v %v", e, err)
	}
}

func TestStat_Symlinks(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	os.Mkdir(real, 0o750)
	os.Chmod(real, 0o750)
	os.Symlink("real", filepath.Join(dir, "rel-link"))
	os.Symlink(filepath.Join(dir, "rel-link"), filepath.Join(dir, "chain"))
	os.Symlink("missing", filepath.Join(dir, "broken"))
	os.Symlink("loop2", filepath.Join(dir, "loop1"))
	os.Symlink("loop1", filepath.Join(dir, "loop2"))

	e, err := Stat(fakeNames{}, filepath.Join(dir, "chain"))
	if err != nil {
		t.Fatal(err)
	}
	realResolved, _ := filepath.EvalSymlinks(real)
	if e.Type != TypeDirectory || e.Mode != 0o750 || e.SymlinkTarget == nil || *e.SymlinkTarget != realResolved ||
		e.Permissions != "Lrwxrwxrwx" || e.Size != int64(len(filepath.Join(dir, "rel-link"))) {
		t.Fatalf("chain: %+v target %v", e, e.SymlinkTarget)
	}
	for _, name := range []string{"broken", "loop1"} {
		p := filepath.Join(dir, name)
		e, err := Stat(fakeNames{}, p)
		if err != nil {
			t.Fatal(err)
		}
		if e.Type != TypeUnspecified || e.Mode != 0 || e.SymlinkTarget == nil || *e.SymlinkTarget != p {
			t.Fatalf("%s: %+v", name, e)
		}
	}
}

func TestStat_PermissionsLikeFileModeString(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(fifo, 0o644)
	suid := filepath.Join(dir, "suid")
	os.WriteFile(suid, nil, 0o755)
	os.Chmod(suid, 0o755|os.ModeSetuid)
	sticky := filepath.Join(dir, "sticky")
	os.Mkdir(sticky, 0o777)
	os.Chmod(sticky, 0o777|os.ModeSticky)
	cases := map[string]string{
		"/dev/null": "Dcrw-rw-rw-",
		fifo:        "prw-r--r--",
		suid:        "urwxr-xr-x",
		sticky:      "dtrwxrwxrwx",
	}
	for p, want := range cases {
		e, err := Stat(fakeNames{}, p)
		if err != nil {
			t.Fatal(err)
		}
		if e.Permissions != want {
			t.Errorf("%s: %q, want %q", p, e.Permissions, want)
		}
		if p == "/dev/null" && e.Type != TypeUnspecified {
			t.Errorf("device type %v", e.Type)
		}
	}
}

func TestStat_MetadataFromUserE2BXattrs(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "m")
	os.WriteFile(p, nil, 0o644)
	set := func(name, val string) {
		if err := unix.Setxattr(p, name, []byte(val), 0); err != nil {
			t.Fatalf("setxattr %s on %s: %v (the test directory's filesystem must support user xattrs)", name, dir, err)
		}
	}
	set("user.e2b.owner", "team-a")
	set("user.e2b.empty", "")
	set("user.other", "hidden")
	set("user.e2b.bad", "\xff\xfe")
	e, err := Stat(fakeNames{}, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Metadata) != 2 || e.Metadata["owner"] != "team-a" || e.Metadata["empty"] != "" {
		t.Fatalf("metadata %v", e.Metadata)
	}
	// Through a symlink, the target's metadata.
	os.Symlink(p, filepath.Join(dir, "l"))
	e, _ = Stat(fakeNames{}, filepath.Join(dir, "l"))
	if e.Metadata["owner"] != "team-a" {
		t.Fatalf("symlink metadata %v", e.Metadata)
	}
}

func TestMakeDir(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a", "b")
	e, err := MakeDir(fakeNames{}, p, uint32(os.Getuid()), uint32(os.Getgid()), nil)
	if err != nil || e.Type != TypeDirectory || e.Path != p {
		t.Fatalf("%+v %v", e, err)
	}
	_, err = MakeDir(fakeNames{}, p, 0, 0, nil)
	mustKind(t, err, KindAlreadyExists, "directory already exists: "+p)
	f := filepath.Join(dir, "file")
	os.WriteFile(f, nil, 0o644)
	_, err = MakeDir(fakeNames{}, f, 0, 0, nil)
	mustKind(t, err, KindInvalidArgument, "path already exists but it is not a directory: "+f)
	_, err = MakeDir(fakeNames{}, filepath.Join(f, "sub"), 0, 0, nil)
	mustKind(t, err, KindInternal, "path is a file: "+f)
}

func TestMove(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.WriteFile(src, []byte("x"), 0o644)
	dst := filepath.Join(dir, "deep", "er", "dst")
	e, err := Move(fakeNames{}, src, dst, uint32(os.Getuid()), uint32(os.Getgid()), nil)
	if err != nil || e.Path != dst || e.Name != "dst" {
		t.Fatalf("%+v %v", e, err)
	}
	_, err = Move(fakeNames{}, src, dst, 0, 0, nil)
	mustKind(t, err, KindNotFound, "source file not found: ")
	// A non-empty directory cannot replace another one.
	os.MkdirAll(filepath.Join(dir, "d1", "x"), 0o755)
	os.MkdirAll(filepath.Join(dir, "d2", "y"), 0o755)
	_, err = Move(fakeNames{}, filepath.Join(dir, "d1"), filepath.Join(dir, "d2"), 0, 0, nil)
	mustKind(t, err, KindInternal, "error renaming: ")
}

func TestMove_AcrossFilesystemsIsInternal(t *testing.T) {
	// /dev/shm is a tmpfs on every Linux machine this runs on; the test
	// directory is not.
	src := filepath.Join(t.TempDir(), "x")
	os.WriteFile(src, nil, 0o644)
	var a, b unix.Statfs_t
	unix.Statfs(src, &a)
	if err := unix.Statfs("/dev/shm", &b); err != nil {
		t.Fatalf("/dev/shm is needed for a second filesystem: %v", err)
	}
	if a.Type == b.Type && a.Fsid == b.Fsid {
		t.Fatal("the test directory is on /dev/shm's filesystem; set TMPDIR to a disk filesystem")
	}
	dst := filepath.Join("/dev/shm", fmt.Sprintf("envd-move-%d", os.Getpid()))
	defer os.Remove(dst)
	_, err := Move(fakeNames{}, src, dst, 0, 0, nil)
	mustKind(t, err, KindInternal, "error renaming: ")
	if !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("want EXDEV, got %v", err)
	}
}

func TestRemove(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "t", "u"), 0o755)
	os.WriteFile(filepath.Join(dir, "t", "u", "f"), nil, 0o644)
	target := filepath.Join(dir, "target")
	os.WriteFile(target, nil, 0o644)
	os.Symlink(target, filepath.Join(dir, "link"))
	for _, p := range []string{filepath.Join(dir, "t"), filepath.Join(dir, "link"), filepath.Join(dir, "missing")} {
		if err := Remove(p, nil); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Fatalf("%s still there", p)
		}
	}
	if _, err := os.Stat(target); err != nil {
		t.Fatal("removing a link removed its target")
	}
}

func TestRemove_DepthBoundAndDots(t *testing.T) {
	dir := t.TempDir()
	deep := filepath.Join(dir, "deep")
	if err := os.MkdirAll(filepath.Join(deep, strings.Repeat("d/", maxRemoveDepth+10)), 0o755); err != nil {
		t.Fatal(err)
	}
	mustKind(t, Remove(deep, nil), KindInternal, "error removing file or directory: ")
	if !strings.Contains(Remove(deep, nil).Error(), "nested too deeply") {
		t.Fatal(Remove(deep, nil))
	}
	shallow := filepath.Join(dir, "shallow")
	os.MkdirAll(filepath.Join(shallow, strings.Repeat("s/", 100)), 0o755)
	if err := Remove(shallow+"/", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(shallow); !os.IsNotExist(err) {
		t.Fatal("not removed")
	}
	mustKind(t, Remove(dir+"/.", nil), KindInternal, "error removing file or directory: RemoveAll "+dir+"/.: invalid argument")
	// Through a file: cannot exist, success.
	os.WriteFile(filepath.Join(dir, "f"), nil, 0o644)
	if err := Remove(filepath.Join(dir, "f", "x"), nil); err != nil {
		t.Fatal(err)
	}
}

func paths(es []*Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Path)
	}
	return out
}

func TestListDir_DepthOrderSymlinks(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	for _, d := range []string{"b/x/deep", "a", "B"} {
		os.MkdirAll(filepath.Join(real, d), 0o755)
	}
	os.WriteFile(filepath.Join(real, "b", "x", "f"), nil, 0o644)
	os.WriteFile(filepath.Join(real, "c.txt"), nil, 0o644)
	os.Symlink(filepath.Join(real, "b"), filepath.Join(real, "link-to-b"))
	link := filepath.Join(base, "view")
	os.Symlink(real, link)

	got, err := ListDir(fakeNames{}, link, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"B", "a", "b", "c.txt", "link-to-b"}
	if len(got) != len(want) {
		t.Fatalf("depth 1: %v", paths(got))
	}
	for i, w := range want {
		if got[i].Path != filepath.Join(link, w) || got[i].Name != w {
			t.Fatalf("depth 1 [%d]: %+v", i, got[i])
		}
	}
	got, _ = ListDir(fakeNames{}, link, 3)
	want = []string{"B", "a", "b", "b/x", "b/x/deep", "b/x/f", "c.txt", "link-to-b"}
	if len(got) != len(want) {
		t.Fatalf("depth 3: %v", paths(got))
	}
	for i, w := range want {
		if got[i].Path != filepath.Join(link, w) {
			t.Fatalf("depth 3 [%d]: %s want %s", i, got[i].Path, w)
		}
	}
	last := got[len(got)-1]
	if last.Type != TypeDirectory || last.SymlinkTarget == nil {
		t.Fatalf("symlinked dir entry %+v", last)
	}
}

func TestListDir_Errors(t *testing.T) {
	base := t.TempDir()
	_, err := ListDir(fakeNames{}, filepath.Join(base, "missing"), 1)
	mustKind(t, err, KindNotFound, "path not found: ")
	f := filepath.Join(base, "f")
	os.WriteFile(f, nil, 0o644)
	_, err = ListDir(fakeNames{}, f, 1)
	mustKind(t, err, KindInvalidArgument, "path is not a directory: "+f)
	os.Symlink("l2", filepath.Join(base, "l1"))
	os.Symlink("l1", filepath.Join(base, "l2"))
	_, err = ListDir(fakeNames{}, filepath.Join(base, "l1"), 1)
	mustKind(t, err, KindFailedPrecondition, fmt.Sprintf("cyclic symlink or chain >255 links at %q", filepath.Join(base, "l1")))
}

func BenchmarkListDir10k(b *testing.B) {
	dir := b.TempDir()
	for i := range 10000 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("file-%05d.txt", i)), []byte("x"), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	names := LoadNames()
	b.ResetTimer()
	for b.Loop() {
		es, err := ListDir(names, dir, 1)
		if err != nil || len(es) != 10000 {
			b.Fatalf("%d %v", len(es), err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/list")
}
