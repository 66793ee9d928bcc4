package lifecycle

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

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

func testLog() (*slog.Logger, *syncBuffer) {
	b := &syncBuffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// fakeMachine records what the PID-1 setup does. Its mount table is a
// mountinfo file that fake mounts append to.
type fakeMachine struct {
	t         *testing.T
	dir       string
	mountInfo string
	mounts    []string // "fstype target flags data"
	mkdirs    []string
	writes    []string
	failMount map[string]error
	failWrite map[string]error
	loUp      bool
	cadErr    error
}

func newFakeMachine(t *testing.T, mounted ...string) *fakeMachine {
	dir := t.TempDir()
	f := &fakeMachine{t: t, dir: dir, mountInfo: filepath.Join(dir, "mountinfo"), failMount: map[string]error{}, failWrite: map[string]error{}}
	if err := os.MkdirAll(filepath.Join(dir, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, m := range mounted {
		f.addMount(m)
	}
	return f
}

func (f *fakeMachine) addMount(target string) {
	file, err := os.OpenFile(f.mountInfo, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		f.t.Fatal(err)
	}
	defer file.Close()
	fmt.Fprintf(file, "%d 1 0:1 / %s rw - fake fake rw\n", len(f.mounts)+20, strings.ReplaceAll(target, " ", `\040`))
}

func (f *fakeMachine) system() pid1System {
	return pid1System{
		mount: func(source, target, fstype string, flags uintptr, data string) error {
			if err := f.failMount[target]; err != nil {
				return err
			}
			f.mounts = append(f.mounts, fmt.Sprintf("%s %s %#x %s", fstype, target, flags, data))
			f.addMount(target)
			return nil
		},
		mkdirAll:  func(path string) error { f.mkdirs = append(f.mkdirs, path); return nil },
		mountInfo: f.mountInfo,
		devDir:    filepath.Join(f.dir, "dev"),
		cgroupDir: filepath.Join(f.dir, "cgroup"),
		isCgroup2: func(path string) bool { return path == filepath.Join(f.dir, "cgroup") && f.has("/sys/fs/cgroup") },
		writeOnly: func(path, value string) error {
			if err := f.failWrite[value]; err != nil {
				return err
			}
			f.writes = append(f.writes, filepath.Base(path)+" "+value)
			return nil
		},
		loopbackUp: func() (bool, error) { changed := !f.loUp; f.loUp = true; return changed, nil },
		cadOff:     func() error { return f.cadErr },
	}
}

func (f *fakeMachine) has(target string) bool {
	b, _ := os.ReadFile(f.mountInfo)
	return strings.Contains(string(b), " "+target+" ")
}

func TestSetupPID1_MountsEverythingMissingInOrder(t *testing.T) {
	f := newFakeMachine(t) // no mount table yet: /proc is not mounted
	log, logs := testLog()
	setupPID1(log, f.system())
	want := []string{
		"proc /proc 0xe ",
		"sysfs /sys 0xe ",
		"devtmpfs /dev 0x2 mode=0755",
		"devpts /dev/pts 0xa gid=5,mode=0620,ptmxmode=0666",
		"tmpfs /dev/shm 0x6 mode=1777",
		"tmpfs /run 0x6 mode=0755",
		"tmpfs /tmp 0x6 mode=1777",
		"cgroup2 /sys/fs/cgroup 0xe ",
	}
	if strings.Join(f.mounts, "\n") != strings.Join(want, "\n") {
		t.Fatalf("mounts:\n%s\nwant:\n%s", strings.Join(f.mounts, "\n"), strings.Join(want, "\n"))
	}
	if len(f.mkdirs) != len(want) {
		t.Fatalf("mount points not created: %v", f.mkdirs)
	}
	if strings.Join(f.writes, ",") != "cgroup.subtree_control +cpu,cgroup.subtree_control +memory,cgroup.subtree_control +io" {
		t.Fatalf("controller writes %v", f.writes)
	}
	if !f.loUp || !strings.Contains(logs.String(), "loopback brought up") {
		t.Fatalf("loopback not brought up:\n%s", logs)
	}
	for link, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"} {
		got, err := os.Readlink(filepath.Join(f.dir, "dev", link))
		if err != nil || got != target {
			t.Errorf("/dev/%s -> %q (%v), want %q", link, got, err, target)
		}
	}
}

func TestSetupPID1_KeepsWhatIsAlreadyThere(t *testing.T) {
	f := newFakeMachine(t, "/", "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run")
	dev := filepath.Join(f.dir, "dev")
	// An existing device node (a regular file stands in) and an existing
	// link with another target must be left alone.
	os.WriteFile(filepath.Join(dev, "ptmx"), nil, 0o666)
	os.Symlink("/elsewhere", filepath.Join(dev, "stdout"))
	f.loUp = true
	log, logs := testLog()
	setupPID1(log, f.system())
	if strings.Join(f.mounts, "\n") != "tmpfs /tmp 0x6 mode=1777\ncgroup2 /sys/fs/cgroup 0xe " {
		t.Fatalf("mounted %v; only the missing /tmp and cgroup2 were expected", f.mounts)
	}
	if got, _ := os.Readlink(filepath.Join(dev, "stdout")); got != "/elsewhere" {
		t.Fatalf("existing link replaced: %q", got)
	}
	if st, err := os.Lstat(filepath.Join(dev, "ptmx")); err != nil || st.Mode()&os.ModeSymlink != 0 {
		t.Fatal("existing /dev/ptmx replaced")
	}
	if strings.Contains(logs.String(), "loopback brought up") {
		t.Fatal("loopback reported as changed although it was up")
	}
}

func TestSetupPID1_FailuresAreLoggedAndIgnored(t *testing.T) {
	f := newFakeMachine(t, "/proc")
	f.failMount["/sys"] = errors.New("operation not permitted")
	f.failMount["/sys/fs/cgroup"] = errors.New("no such device")
	f.cadErr = errors.New("operation not permitted")
	log, logs := testLog()
	setupPID1(log, f.system())
	for _, target := range []string{"/dev", "/dev/pts", "/dev/shm", "/run", "/tmp"} {
		if !f.has(target) {
			t.Errorf("%s not mounted after an earlier failure", target)
		}
	}
	for _, want := range []string{
		`level=WARN msg="mount failed" path=/sys type=sysfs error="operation not permitted"`,
		`level=WARN msg="mount failed" path=/sys/fs/cgroup type=cgroup2 error="no such device"`,
		`level=WARN msg="cannot take over Ctrl-Alt-Del" error="operation not permitted"`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
	if len(f.writes) != 0 {
		t.Fatalf("controllers enabled without a cgroup2 hierarchy: %v", f.writes)
	}
}

func TestSetupPID1_OneUnavailableControllerDoesNotBlockOthers(t *testing.T) {
	f := newFakeMachine(t, "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run", "/tmp", "/sys/fs/cgroup")
	f.failWrite["+memory"] = errors.New("no such file or directory")
	f.cadErr = errChildPIDNamespace
	log, logs := testLog()
	setupPID1(log, f.system())
	if strings.Join(f.writes, ",") != "cgroup.subtree_control +cpu,cgroup.subtree_control +io" {
		t.Fatalf("writes %v", f.writes)
	}
	if !strings.Contains(logs.String(), `msg="cannot enable cgroup controller" controller=memory`) {
		t.Fatalf("failed controller not logged:\n%s", logs)
	}
	if strings.Contains(logs.String(), "level=WARN msg=\"cannot take over") {
		t.Fatal("a child PID namespace refusing Ctrl-Alt-Del is expected, not a warning")
	}
	if len(f.mounts) != 0 {
		t.Fatalf("mounted over existing mount points: %v", f.mounts)
	}
}
