package identity

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
)

const passwd = `root:x:0:0:root:/root:/bin/bash
# comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
user:x:1000:1000::/home/user:/bin/bash
broken:x:notanumber:1:::
short:x:1
svc:x:998:998::/srv/svc:/bin/false
`

const groups = `root:x:0:
wheel:x:10:user,svc
docker:x:999: user
user:x:1000:
svc:x:998:
audio:x:29:user
bad:x:zz:user
`

func testDB(t *testing.T) *Database {
	t.Helper()
	dir := t.TempDir()
	pw, gr := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	if err := os.WriteFile(pw, []byte(passwd), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gr, []byte(groups), 0o644); err != nil {
		t.Fatal(err)
	}
	db, err := Files{Passwd: pw, Group: gr}.Load()
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestLookup(t *testing.T) {
	db := testDB(t)
	u, err := db.Lookup("user")
	if err != nil {
		t.Fatal(err)
	}
	if *u != (User{Name: "user", UID: 1000, GID: 1000, Home: "/home/user"}) {
		t.Fatalf("got %+v", u)
	}
	if _, err := db.Lookup("broken"); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("malformed entry must not be found, got %v", err)
	}
	if _, err := db.Lookup("nobody-here"); !errors.Is(err, ErrUnknownUser) || err.Error() != "unknown user nobody-here" {
		t.Fatalf("got %v", err)
	}
}

func TestGroups_PrimaryThenMemberships(t *testing.T) {
	db := testDB(t)
	u, _ := db.Lookup("user")
	if got, want := db.Groups(u), []uint32{1000, 10, 999, 29}; !reflect.DeepEqual(got, want) {
		t.Fatalf("groups %v, want %v", got, want)
	}
	r, _ := db.Lookup("root")
	if got := db.Groups(r); !reflect.DeepEqual(got, []uint32{0}) {
		t.Fatalf("root groups %v", got)
	}
}

func TestNames_FallBackToNumbers(t *testing.T) {
	db := testDB(t)
	if db.UserName(998) != "svc" || db.UserName(4242) != "4242" {
		t.Fatal("UserName")
	}
	if db.GroupName(29) != "audio" || db.GroupName(4242) != "4242" {
		t.Fatal("GroupName")
	}
}

func TestExpandAndResolve(t *testing.T) {
	u := &User{Name: "user", Home: "/home/user"}
	root := &User{Name: "root", Home: "/root"}
	cases := []struct {
		path, workdir string
		u             *User
		want          string
		err           bool
	}{
		{"", "", u, "/home/user", false},
		{"", "/work", u, "/work", false},
		{"", "rel", u, "/home/user/rel", false},
		{"", "~/w", u, "/home/user/w", false},
		{"~", "", u, "/home/user", false},
		{"~/a/../b", "", u, "/home/user/b", false},
		{"~/", "", root, "/root", false},
		{"~bob/x", "", u, "", true},
		{"/abs/./x/../y/", "/work", u, "/abs/./x/../y/", false},
		{"a/../b", "/work", u, "/home/user/b", false},
		{"file.txt", "", root, "/root/file.txt", false},
	}
	for _, c := range cases {
		got, err := ExpandAndResolve(c.path, c.u, c.workdir)
		if c.err {
			if !errors.Is(err, ErrTildeUser) {
				t.Errorf("%q: want tilde error, got %q, %v", c.path, got, err)
			} else if err.Error() != "failed to expand path '~bob/x' for user 'user': cannot expand user-specific home dir" {
				t.Errorf("message %q", err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q (workdir %q): got %q, %v; want %q", c.path, c.workdir, got, err, c.want)
		}
	}
}

func TestEnsureDirs(t *testing.T) {
	base := t.TempDir()
	target := filepath.Join(base, "a", "b", "c")
	if err := EnsureDirs(target, uint32(os.Getuid()), uint32(os.Getgid())); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a", "a/b", "a/b/c"} {
		st, err := os.Stat(filepath.Join(base, d))
		if err != nil || !st.IsDir() || st.Mode().Perm() != 0o755&^umask() {
			t.Fatalf("%s: %v %v", d, st, err)
		}
	}
	// Idempotent.
	if err := EnsureDirs(target, 0, 0); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(base, "file")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := EnsureDirs(filepath.Join(f, "sub"), 0, 0)
	if !errors.Is(err, ErrNotDirectory) || err.Error() != "path is a file: "+f {
		t.Fatalf("got %v", err)
	}
}

func TestEnsureDirs_ChownsAsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (CI runs as root)")
	}
	base := t.TempDir()
	target := filepath.Join(base, "x", "y")
	if err := EnsureDirs(target, 4321, 4322); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"x", "x/y"} {
		st, err := os.Stat(filepath.Join(base, d))
		if err != nil {
			t.Fatal(err)
		}
		s := st.Sys().(*syscall.Stat_t)
		if s.Uid != 4321 || s.Gid != 4322 {
			t.Fatalf("%s owned by %d:%d", d, s.Uid, s.Gid)
		}
	}
	// The existing base directory keeps its owner.
	st, _ := os.Stat(base)
	if st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatal("existing directory was chowned")
	}
}

func umask() os.FileMode {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return os.FileMode(m)
}

func FuzzParsePasswd(f *testing.F) {
	f.Add([]byte(passwd))
	f.Add([]byte("a:b:c:d:e:f:g\n::::::\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, u := range ParsePasswd(data) {
			if u.Name == "" {
				t.Fatal("empty user name accepted")
			}
		}
	})
}
