package cgroups

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Placement is the interface the process manager consumes; the manager must
// satisfy it with exactly these method names.
type Placement interface {
	CgroupFD(pty bool, tag string) int
	PlacementFailed(err error)
}

var _ Placement = (*Manager)(nil)

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func newLog() (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// cgroup2Mount finds a mounted cgroup2 hierarchy (on this project's test
// machines /sys/fs/cgroup/unified, on pure v2 hosts /sys/fs/cgroup).
func cgroup2Mount(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1]
		}
	}
	t.Fatal("no cgroup2 hierarchy is mounted; these tests need one (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified)")
	return ""
}

// testRoot creates a fresh directory in the cgroup2 hierarchy to act as
// envd's --cgroup-root, and removes it (and the groups) afterwards.
func testRoot(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("cgroup tests need root (CI runs as root)")
	}
	root := filepath.Join(cgroup2Mount(t), fmt.Sprintf("envd-cgtest-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatalf("create test cgroup: %v", err)
	}
	t.Cleanup(func() { removeCgroup(t, root) })
	return root
}

// removeCgroup removes a cgroup directory tree; a group can stay busy for a
// moment after its last process was reaped.
func removeCgroup(t *testing.T, dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			removeCgroup(t, filepath.Join(dir, e.Name()))
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("remove cgroup %s: %v", dir, err)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLimit(t *testing.T) {
	for _, c := range []struct{ total, want uint64 }{
		{512 << 20, 512<<20 - 64<<20}, // 1/8 of 512 MiB is 64 MiB
		{1 << 30, 1<<30 - 128<<20},    // exactly 128 MiB
		{8 << 30, 8<<30 - 128<<20},    // capped at 128 MiB
		{64 << 20, 64<<20 - 8<<20},    // small VM
		{0, 0},
	} {
		if got := Limit(c.total); got != c.want {
			t.Errorf("Limit(%d) = %d, want %d", c.total, got, c.want)
		}
	}
}

func TestMemTotal(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("MemFree:  100 kB\nMemTotal:       2048000 kB\nBuffers: 1 kB\n"), 0o644)
	if n, err := memTotal(good); err != nil || n != 2048000<<10 {
		t.Fatalf("memTotal = %d, %v", n, err)
	}
	for name, content := range map[string]string{"missing": "MemFree: 1 kB\n", "garbage": "MemTotal: lots kB\n", "empty": "MemTotal:\n"} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		if _, err := memTotal(p); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := memTotal(filepath.Join(dir, "absent")); err == nil {
		t.Error("absent file: no error")
	}
}

// TestNew_CreatesGroupsOnRealHierarchy creates the groups on the real
// cgroup2 hierarchy; properties whose controller is absent are skipped with
// a warning, present ones hold the spec's values.
func TestNew_CreatesGroupsOnRealHierarchy(t *testing.T) {
	root := testRoot(t)
	log, logs := newLog()
	m := New(Options{Root: root}, log)
	defer m.Close()
	if !m.Enabled() {
		t.Fatalf("manager not enabled on a cgroup2 root:\n%s", logs)
	}
	total, err := memTotal("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	if m.MemoryLimit() != Limit(total) {
		t.Fatalf("memory limit %d, want %d", m.MemoryLimit(), Limit(total))
	}
	page := uint64(os.Getpagesize())
	limit := strconv.FormatUint(Limit(total)/page*page, 10)
	want := map[string]map[string]string{
		UserGroup: {"cpu.weight": "50", "io.weight": "default 10", "memory.high": limit, "memory.max": limit},
		PTYGroup:  {"cpu.weight": "200", "io.weight": "default 50", "memory.high": limit, "memory.max": limit},
	}
	for group, props := range want {
		dir := filepath.Join(root, group)
		st, err := os.Stat(dir)
		if err != nil || !st.IsDir() {
			t.Fatalf("group %s not created: %v", group, err)
		}
		if st.Mode().Perm() != 0o755 {
			t.Errorf("group %s mode %v", group, st.Mode().Perm())
		}
		for file, value := range props {
			path := filepath.Join(dir, file)
			b, err := os.ReadFile(path)
			switch {
			case err == nil:
				got := strings.TrimSpace(string(b))
				if file == "io.weight" {
					got = strings.SplitN(got, "\n", 2)[0]
				}
				if got != value {
					t.Errorf("%s = %q, want %q", path, got, value)
				}
			case errors.Is(err, os.ErrNotExist):
				if !strings.Contains(logs.String(), "cgroup property skipped") || !strings.Contains(logs.String(), path) {
					t.Errorf("absent %s was not reported as skipped:\n%s", path, logs)
				}
			default:
				t.Errorf("read %s: %v", path, err)
			}
		}
	}
	if strings.Contains(logs.String(), "failed to create cgroup2 manager") {
		t.Fatalf("unexpected failure:\n%s", logs)
	}
	// A second manager on the same root (envd restarted) reuses the groups.
	m2 := New(Options{Root: root}, log)
	defer m2.Close()
	if !m2.Enabled() {
		t.Fatalf("existing groups must be reused:\n%s", logs)
	}
}

// TestCgroupFD_PlacesChildAtCreation spawns real children with
// CLONE_INTO_CGROUP through the descriptors the manager hands out.
func TestCgroupFD_PlacesChildAtCreation(t *testing.T) {
	root := testRoot(t)
	log, logs := newLog()
	m := New(Options{Root: root}, log)
	defer m.Close()
	mount := cgroup2Mount(t)
	rel := strings.TrimPrefix(root, mount)
	for _, c := range []struct {
		pty   bool
		tag   string
		group string
	}{
		{false, "", "/" + UserGroup},
		{false, "web", "/" + UserGroup},
		{true, "", "/" + PTYGroup},
	} {
		fd := m.CgroupFD(c.pty, c.tag)
		if fd < 0 {
			t.Fatalf("pty=%v tag=%q: no descriptor:\n%s", c.pty, c.tag, logs)
		}
		got := spawnAndReadCgroup(t, fd)
		if want := rel + c.group; got != want {
			t.Errorf("pty=%v tag=%q: child in %q, want %q", c.pty, c.tag, got, want)
		}
	}
	if fd := m.CgroupFD(false, SystemTag); fd != -1 {
		t.Errorf("_system process must stay in envd's cgroup, got fd %d", fd)
	}
	if fd := m.CgroupFD(true, SystemTag); fd != -1 {
		t.Errorf("_system PTY process must stay in envd's cgroup, got fd %d", fd)
	}
}

// spawnAndReadCgroup starts a child in the cgroup fd and returns its cgroup2
// path from /proc/<pid>/cgroup.
func spawnAndReadCgroup(t *testing.T, fd int) string {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if err := cmd.Start(); err != nil {
		t.Fatalf("spawn into cgroup: %v", err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid))
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

func TestPlacementFailed_DisablesForGoodAndLogsOnce(t *testing.T) {
	root := testRoot(t)
	log, logs := newLog()
	m := New(Options{Root: root}, log)
	defer m.Close()
	if m.CgroupFD(false, "") < 0 {
		t.Fatal("no descriptor before the failure")
	}
	m.PlacementFailed(unix.ENOSYS)
	m.PlacementFailed(unix.EINVAL)
	if fd := m.CgroupFD(false, ""); fd != -1 {
		t.Fatalf("placement still on after a failure: fd %d", fd)
	}
	if fd := m.CgroupFD(true, ""); fd != -1 {
		t.Fatalf("PTY placement still on after a failure: fd %d", fd)
	}
	if n := strings.Count(logs.String(), "placement disabled"); n != 1 {
		t.Fatalf("failure logged %d times:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Fatalf("failure not logged at warn:\n%s", logs)
	}
}

func TestIsPlacementError(t *testing.T) {
	for _, err := range []error{unix.ENOSYS, unix.EINVAL, unix.EOPNOTSUPP, unix.EBADF, fmt.Errorf("fork/exec: %w", unix.EINVAL), &os.SyscallError{Syscall: "clone3", Err: unix.ENOSYS}} {
		if !IsPlacementError(err) {
			t.Errorf("%v should disable placement", err)
		}
	}
	for _, err := range []error{nil, unix.EACCES, unix.ENOENT, unix.EAGAIN, errors.New("other")} {
		if IsPlacementError(err) {
			t.Errorf("%v must not disable placement", err)
		}
	}
}

// TestNew_NotCgroup2FallsBackToNoop: a root that is not a cgroup2
// filesystem (a plain directory, the hybrid layout's tmpfs) gives the no-op
// manager with one log line, and nothing is created there.
func TestNew_NotCgroup2FallsBackToNoop(t *testing.T) {
	dirs := []string{t.TempDir()}
	if _, err := os.Stat("/dev/shm"); err == nil {
		shm, err := os.MkdirTemp("/dev/shm", "envd-cgtest-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(shm)
		dirs = append(dirs, shm)
	}
	dirs = append(dirs, filepath.Join(t.TempDir(), "does-not-exist"))
	for _, dir := range dirs {
		log, logs := newLog()
		m := New(Options{Root: dir}, log)
		if m.Enabled() || m.CgroupFD(false, "") != -1 || m.CgroupFD(true, "") != -1 {
			t.Fatalf("%s: no-op manager expected", dir)
		}
		if n := strings.Count(logs.String(), "\n"); n != 1 || !strings.Contains(logs.String(), "cgroups disabled: no cgroup2 hierarchy") {
			t.Fatalf("%s: want exactly one fallback line, got:\n%s", dir, logs)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("%s: no-op manager created %v", dir, entries)
		}
		m.PlacementFailed(unix.ENOSYS) // harmless on the no-op manager
		m.Close()
	}
}

func TestNew_DisabledByFlag(t *testing.T) {
	root := testRoot(t)
	log, logs := newLog()
	m := New(Options{Root: root, Disabled: true}, log)
	if m.Enabled() || m.CgroupFD(false, "") != -1 {
		t.Fatal("--no-cgroups must give the no-op manager")
	}
	if !strings.Contains(logs.String(), "cgroups disabled by --no-cgroups") {
		t.Fatalf("no log line:\n%s", logs)
	}
	if _, err := os.Stat(filepath.Join(root, UserGroup)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("--no-cgroups created a group: %v", err)
	}
}

func TestNew_FailureFallsBackToNoop(t *testing.T) {
	root := testRoot(t)
	log, logs := newLog()
	m := New(Options{Root: root, MemInfo: filepath.Join(t.TempDir(), "no-meminfo")}, log)
	if m.Enabled() || m.CgroupFD(false, "") != -1 {
		t.Fatal("a failed manager must act as no-op")
	}
	if !strings.Contains(logs.String(), "failed to create cgroup2 manager: read ") {
		t.Fatalf("no failure line:\n%s", logs)
	}
}

func TestNilManagerIsNoop(t *testing.T) {
	var m *Manager
	if m.Enabled() || m.CgroupFD(true, "") != -1 || m.MemoryLimit() != 0 {
		t.Fatal("nil manager must be a no-op")
	}
	m.PlacementFailed(unix.ENOSYS)
	m.Close()
}
