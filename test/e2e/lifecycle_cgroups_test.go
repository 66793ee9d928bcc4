package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// Cgroups on the machine's real cgroup2 hierarchy (spec lifecycle.md §6).
// On the project's test machines it is /sys/fs/cgroup/unified, where the
// cpu, memory and io controllers are absent: groups are created and
// placement works, the limits cannot be written.

// cgroupOf runs a process through the API and returns its cgroup2 path.
func cgroupOf(t *testing.T, e *envdtest.Envd, pty bool, tag string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "grep '^0::' /proc/self/cgroup"}}}
	if pty {
		req.Pty = &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}}
	}
	if tag != "" {
		req.Tag = &tag
	}
	r := lcDrain(lcStart(t, ctx, e, req))
	if r.end == nil || r.end.GetExitCode() != 0 {
		t.Fatalf("pty=%v tag=%q: %v %v %q", pty, tag, r.end, r.err, r.stdout.String()+r.pty.String())
	}
	out := strings.TrimSpace(strings.ReplaceAll(r.stdout.String()+r.pty.String(), "\r", ""))
	return strings.TrimPrefix(out, "0::")
}

func ownCgroup(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return rest
		}
	}
	t.Fatalf("no cgroup2 line in %q", b)
	return ""
}

func TestCgroups_GroupsAndPlacementOnRealHierarchy(t *testing.T) {
	abs, rel := lcCgroupRoot(t)
	e := envdtest.Start(t, envdtest.Options{Args: []string{"--cgroup-root", abs}})
	for _, g := range []string{"user", "ptys"} {
		if st, err := os.Stat(filepath.Join(abs, g)); err != nil || !st.IsDir() {
			t.Fatalf("group %s not created: %v\n%s", g, err, e.Log())
		}
	}
	// Property files of absent controllers are skipped with a warning;
	// present ones carry the spec's values.
	for _, g := range []string{"user", "ptys"} {
		for _, prop := range []string{"cpu.weight", "io.weight", "memory.high", "memory.max"} {
			path := filepath.Join(abs, g, prop)
			if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
				if !strings.Contains(e.Log(), "cgroup property skipped path="+path) {
					t.Errorf("absent %s not reported:\n%s", path, e.Log())
				}
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(abs, "ptys", "cpu.weight")); err == nil && strings.TrimSpace(string(b)) != "200" {
		t.Errorf("ptys cpu.weight %q", b)
	}
	if strings.Contains(e.Log(), "failed to create cgroup2 manager") {
		t.Fatalf("manager failed:\n%s", e.Log())
	}

	if got := cgroupOf(t, e, false, ""); got != rel+"/user" {
		t.Errorf("process without PTY in %q, want %q", got, rel+"/user")
	}
	if got := cgroupOf(t, e, true, ""); got != rel+"/ptys" {
		t.Errorf("PTY process in %q, want %q", got, rel+"/ptys")
	}
	// _system processes and envd itself stay in envd's cgroup.
	envdCgroup := ownCgroup(t, e.Pid())
	if got := cgroupOf(t, e, false, "_system"); got != envdCgroup {
		t.Errorf("_system process in %q, want envd's %q", got, envdCgroup)
	}
	if strings.HasPrefix(envdCgroup, rel) {
		t.Errorf("envd moved itself into %q", envdCgroup)
	}
	if err := e.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

func TestCgroups_NoopWhenRootIsNotCgroup2(t *testing.T) {
	root := t.TempDir()
	e := envdtest.Start(t, envdtest.Options{Args: []string{"--cgroup-root", root}})
	if n := strings.Count(e.Log(), "cgroups disabled: no cgroup2 hierarchy at the cgroup root"); n != 1 {
		t.Fatalf("fallback line %d times:\n%s", n, e.Log())
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Fatalf("no-op manager created %v", entries)
	}
	envdCgroup := ownCgroup(t, e.Pid())
	if got := cgroupOf(t, e, false, ""); got != envdCgroup {
		t.Fatalf("process in %q, want envd's %q", got, envdCgroup)
	}
}

func TestCgroups_NoCgroupsFlag(t *testing.T) {
	abs, _ := lcCgroupRoot(t)
	e := envdtest.Start(t, envdtest.Options{Args: []string{"--no-cgroups", "--cgroup-root", abs}})
	if !strings.Contains(e.Log(), "cgroups disabled by --no-cgroups") {
		t.Fatalf("no log line:\n%s", e.Log())
	}
	if _, err := os.Stat(filepath.Join(abs, "user")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("--no-cgroups created a group: %v", err)
	}
	envdCgroup := ownCgroup(t, e.Pid())
	if got := cgroupOf(t, e, true, ""); got != envdCgroup {
		t.Fatalf("process in %q, want envd's %q", got, envdCgroup)
	}
	if err := e.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// TestCgroups_UnprivilegedFallsBack: envd run as an ordinary user cannot
// create groups; it warns once and serves with processes unplaced.
func TestCgroups_UnprivilegedFallsBack(t *testing.T) {
	u := envdtest.EnsureUser(t, "envd-lc-user")
	abs, _ := lcCgroupRoot(t)
	e := envdtest.Start(t, envdtest.Options{Credential: u.Credential(), Dir: u.Home, Args: []string{"--cgroup-root", abs}})
	if n := strings.Count(e.Log(), "failed to create cgroup2 manager: create group user:"); n != 1 {
		t.Fatalf("fallback line %d times:\n%s", n, e.Log())
	}
	envdCgroup := ownCgroup(t, e.Pid())
	if got := cgroupOf(t, e, false, ""); got != envdCgroup {
		t.Fatalf("process in %q, want envd's %q", got, envdCgroup)
	}
}
