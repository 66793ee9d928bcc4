package identity

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestMayAccess_FirstMatchingClassDecides(t *testing.T) {
	cases := []struct {
		uid    uint32
		groups []uint32
		m      fileMode
		want   Access
		ok     bool
	}{
		{0, nil, fileMode{mode: 0o000, uid: 5}, AccessWrite, true},                  // root
		{5, nil, fileMode{mode: 0o600, uid: 5}, AccessWrite, true},                  // owner
		{5, []uint32{7}, fileMode{mode: 0o060, uid: 5, gid: 7}, AccessWrite, false}, // owner bits decide, not group
		{6, []uint32{7}, fileMode{mode: 0o660, uid: 5, gid: 7}, AccessWrite, true},  // group
		{6, []uint32{8}, fileMode{mode: 0o662, uid: 5, gid: 7}, AccessWrite, true},  // other
		{6, nil, fileMode{mode: 0o755, uid: 5}, AccessWrite, false},
		{6, nil, fileMode{mode: 0o1777, uid: 0}, AccessCreate, true}, // /tmp
		{6, nil, fileMode{mode: 0o772, uid: 0}, AccessCreate, false}, // w without x
		{6, nil, fileMode{mode: 0o644, uid: 0}, AccessRead, true},
		{6, nil, fileMode{mode: 0o640, uid: 0}, AccessRead, false},
	}
	for i, c := range cases {
		if got := mayAccess(c.uid, c.groups, c.m, c.want); got != c.ok {
			t.Errorf("case %d: got %v", i, got)
		}
	}
}

func TestSplitTarget(t *testing.T) {
	for in, want := range map[string][2]string{
		"/a/b":  {"/a/", "b"},
		"/b":    {"/", "b"},
		"/a/b/": {"/a/b/", "."},
		"/a/.":  {"/a/.", "."},
		"/a/..": {"/a/..", "."},
		"/a//b": {"/a//", "b"},
		"/":     {"/", "."},
	} {
		if d, n := SplitTarget(in); d != want[0] || n != want[1] {
			t.Errorf("%q: %q %q", in, d, n)
		}
	}
}

// ".." after a symlinked directory is the physical parent, as in the kernel.
func TestOpenDir_DotDotIsPhysical(t *testing.T) {
	base := t.TempDir()
	os.MkdirAll(filepath.Join(base, "real", "sub"), 0o755)
	os.Symlink("real/sub", filepath.Join(base, "link"))
	d, err := OpenDir(filepath.Join(base, "link") + "/..")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Path() != filepath.Join(base, "real") {
		t.Fatalf("reached %s", d.Path())
	}
}

// A relative link is resolved against the directory that holds it.
func TestResolve_RelativeLinkAgainstItsRealDirectory(t *testing.T) {
	base := t.TempDir()
	os.MkdirAll(filepath.Join(base, "real", "a"), 0o755)
	os.MkdirAll(filepath.Join(base, "real", "other"), 0o755)
	os.WriteFile(filepath.Join(base, "real", "other", "file"), nil, 0o644)
	os.Symlink("../other/file", filepath.Join(base, "real", "a", "link"))
	os.Symlink("real/a", filepath.Join(base, "dirlink"))
	d, err := OpenDir(filepath.Join(base, "dirlink"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	f, err := d.Resolve("link")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Path() != filepath.Join(base, "real", "other", "file") || f.Stat == nil {
		t.Fatalf("resolved to %s (%v)", f.Path(), f.Stat)
	}
	if err := f.Check(AccessWrite); err != nil {
		t.Fatalf("links of root refused: %v", err)
	}
}

func TestResolve_CycleIsELOOP(t *testing.T) {
	base := t.TempDir()
	os.Symlink("b", filepath.Join(base, "a"))
	os.Symlink("a", filepath.Join(base, "b"))
	d, err := OpenDir(base)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Resolve("a"); !errors.Is(err, syscall.ELOOP) {
		t.Fatalf("got %v", err)
	}
}

// A symlink owned by someone who could not write the final file is
// refused; the error names the link and its owner.
func TestCheck_RefusesForeignLink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (CI runs as root)")
	}
	base := t.TempDir()
	target := filepath.Join(base, "target")
	os.WriteFile(target, nil, 0o644)
	link := filepath.Join(base, "link")
	os.Symlink(target, link)
	os.Lchown(link, 54321, 54321) // a uid without a passwd entry
	d, err := OpenDir(base)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	f, err := d.Resolve("link")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = f.Check(AccessWrite)
	var le *LinkError
	if !errors.As(err, &le) || !IsLinkRefused(err) || err.Error() != "refusing to follow symlink "+link+" owned by 54321" {
		t.Fatalf("got %v", err)
	}
	if err := f.Check(AccessRead); err != nil {
		t.Fatalf("others may read the 0644 target: %v", err)
	}
	// Creating through a link into a directory its owner cannot write.
	os.Remove(target)
	f2, err := d.Resolve("link")
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	if err := f2.Check(AccessWrite); !IsLinkRefused(err) {
		t.Fatalf("dangling link into root's directory: %v", err)
	}
}

func TestEnsureDir_ExistingFileAndRelative(t *testing.T) {
	if _, err := EnsureDir("rel/dir", 0, 0); err == nil {
		t.Fatal("relative path accepted")
	}
	base := t.TempDir()
	f := filepath.Join(base, "f")
	os.WriteFile(f, nil, 0o644)
	os.Symlink("f", filepath.Join(base, "tofile"))
	_, err := EnsureDir(filepath.Join(base, "tofile", "x"), 0, 0)
	if !errors.Is(err, ErrNotDirectory) || err.Error() != "path is a file: "+f {
		t.Fatalf("got %v", err)
	}
}
