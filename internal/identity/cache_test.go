package identity

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCache_ReusesUntilAFileChanges(t *testing.T) {
	dir := t.TempDir()
	f := Files{Passwd: filepath.Join(dir, "passwd"), Group: filepath.Join(dir, "group")}
	write := func(path, text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(f.Passwd, "alice:x:1000:1000::/home/alice:/bin/sh\n")
	write(f.Group, "dev:x:50:alice\n")
	c := NewCache(f)
	clock := time.Now().Add(time.Hour) // every file looks settled
	c.now = func() time.Time { return clock }

	a, err := c.Load()
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := c.Load(); b != a {
		t.Fatal("unchanged files were read again")
	}
	u, err := c.LookupUser("alice")
	if err != nil || u.UID != 1000 || len(a.Groups(u)) != 2 {
		t.Fatalf("alice: %+v %v", u, err)
	}

	// Same size, new content (as useradd's rename or an in-place edit).
	write(f.Passwd, "alice:x:1001:1000::/home/alice:/bin/sh\n")
	b, err := c.Load()
	if err != nil || b == a {
		t.Fatalf("changed passwd not read again (%v)", err)
	}
	if u, _ := b.Lookup("alice"); u.UID != 1001 {
		t.Fatalf("stale uid %d", u.UID)
	}
	// A group file that appears or disappears counts as a change too.
	if err := os.Remove(f.Group); err != nil {
		t.Fatal(err)
	}
	d, err := c.Load()
	if err != nil || d == b {
		t.Fatalf("removed group file not noticed (%v)", err)
	}
	if u, _ := d.Lookup("alice"); len(d.Groups(u)) != 1 {
		t.Fatal("groups of a removed group file still listed")
	}
	// A missing passwd file is an error, and nothing stale is served after it.
	if err := os.Remove(f.Passwd); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Load(); err == nil {
		t.Fatal("missing passwd file not reported")
	}
}

func TestCache_RecentFilesAreReadEveryTime(t *testing.T) {
	dir := t.TempDir()
	f := Files{Passwd: filepath.Join(dir, "passwd"), Group: filepath.Join(dir, "group")}
	if err := os.WriteFile(f.Passwd, []byte("bob:x:7:7::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := NewCache(f) // real clock: the file was written just now
	a, _ := c.Load()
	b, _ := c.Load()
	if a == nil || a == b {
		t.Fatal("a file younger than the timestamp granularity window was trusted")
	}
}
