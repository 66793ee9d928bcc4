package envdtest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

var userMu sync.Mutex

// TestUser is an unprivileged system user created for tests.
type TestUser struct {
	Name string
	UID  uint32
	GID  uint32
	Home string
}

// Credential runs a process as the user.
func (u TestUser) Credential() *syscall.Credential {
	return &syscall.Credential{Uid: u.UID, Gid: u.GID}
}

// EnsureUser creates (once) the unprivileged user name with a home
// directory, plus the listed supplementary groups, using useradd and
// groupadd. Tests run as root; anything else is a setup failure.
func EnsureUser(t testing.TB, name string, groups ...string) TestUser {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("creating test user %q needs root (CI runs as root)", name)
	}
	userMu.Lock()
	defer userMu.Unlock()
	for _, g := range groups {
		if _, err := user.LookupGroup(g); err != nil {
			if out, err := exec.Command("groupadd", "-f", g).CombinedOutput(); err != nil {
				t.Fatalf("groupadd %s: %v: %s", g, err, out)
			}
		}
	}
	if _, err := user.Lookup(name); err != nil {
		args := []string{"-m", "-s", "/bin/bash"}
		if len(groups) > 0 {
			args = append(args, "-G", strings.Join(groups, ","))
		}
		args = append(args, name)
		if out, err := exec.Command("useradd", args...).CombinedOutput(); err != nil {
			t.Fatalf("useradd %s: %v: %s", name, err, out)
		}
	} else if len(groups) > 0 {
		if out, err := exec.Command("usermod", "-a", "-G", strings.Join(groups, ","), name).CombinedOutput(); err != nil {
			t.Fatalf("usermod %s: %v: %s", name, err, out)
		}
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	if err := os.MkdirAll(u.HomeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(u.HomeDir, int(uid), int(gid)); err != nil {
		t.Fatal(fmt.Errorf("chown home: %w", err))
	}
	return TestUser{Name: name, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}
}
