package handover

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/envd/envd/internal/handover/handoverpb"
	"github.com/envd/envd/internal/reaper"
)

func testReaper(t *testing.T) *reaper.Reaper {
	t.Helper()
	r := reaper.New(slog.New(slog.DiscardHandler))
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRecord_SchemaRules(t *testing.T) {
	b, err := encode(&handoverpb.Record{Init: &handoverpb.InitState{DefaultUser: "u"}})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Schema != 1 || rec.GetInit().GetDefaultUser() != "u" {
		t.Fatalf("round trip: %v", rec)
	}
	for name, raw := range map[string][]byte{
		"no schema":   mustMarshal(t, &handoverpb.Record{Init: &handoverpb.InitState{DefaultUser: "u"}}),
		"too new":     mustMarshal(t, &handoverpb.Record{Schema: MaxSchema + 1}),
		"not a proto": []byte("not a handover record"),
	} {
		if _, err := decode(raw); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	// A reader ignores fields it does not know (append-only numbering).
	known := mustMarshal(t, &handoverpb.Record{Schema: 1})
	unknown := append(append([]byte{}, known...), 0xf8, 0x3f, 0x01) // field 1023, varint 1
	if rec, err := decode(unknown); err != nil || rec.Schema != 1 {
		t.Fatalf("unknown field: %v %v", rec, err)
	}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestProbeOutput(t *testing.T) {
	for _, c := range []struct {
		out, err string
	}{
		{"0.6.6\nhandover-schema 1\n", ""},
		{"0.6.6\nhandover-schema 7", ""},
		{"", "no output"},
		{"0.6.6\n", "no handover-schema line"},
		{"hi\n", `not a version: "hi"`},
		{"v0.6.6\nhandover-schema 1\n", "not a version"},
		{"0.6.6\nhandover-schema 0\n", "reads handover schema 0, state needs 1"},
		{"0.6.6\nhandover-schema +1\n", "not a handover-schema line"},
		{"0.6.6\nhandover-schema x\n", "not a handover-schema line"},
		{"0.6.6\nhandover-schema 1\nmore\n", "unexpected output"},
		{strings.Repeat("x", probeOutput+1), "more than"},
	} {
		v, err := checkProbeOutput([]byte(c.out), 1)
		switch {
		case c.err == "" && (err != nil || v != "0.6.6"):
			t.Errorf("%q: %q %v", c.out, v, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: error %v, want %q", c.out, err, c.err)
		}
	}
}

func TestProbe_Candidates(t *testing.T) {
	r := testReaper(t)
	dir := t.TempDir()
	path := os.Getenv("PATH")
	good := script(t, dir, "good", `[ "$1" = --version ] && [ "$ENVD_HANDOVER_PROBE" = 1 ] && [ -z "$HOME" ] || exit 9
echo 1.2.3; echo handover-schema 1`)
	if v, err := probe(r, good, path, 1); err != nil || v != "1.2.3" {
		t.Fatalf("good candidate: %q %v", v, err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, err string }{
		{script(t, dir, "exit3", "exit 3"), "exit status 3"},
		{script(t, dir, "crash", "kill -SEGV $$"), "signal: segmentation fault"},
		{script(t, dir, "old", "echo 0.6.4"), "no handover-schema line"},
		{script(t, dir, "loud", "head -c 100000 /dev/zero"), "more than 4096 bytes"},
		{empty, "exec format error"},
		{filepath.Join(dir, "missing"), "no such file or directory"},
	} {
		if _, err := probe(r, c.path, path, 1); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: %v, want %q", filepath.Base(c.path), err, c.err)
		}
	}
	if r.Managed() != 0 {
		t.Fatalf("%d probes still registered with the reaper", r.Managed())
	}
}

func TestProbe_DeadlineKillsTheGroup(t *testing.T) {
	r := testReaper(t)
	dir := t.TempDir()
	// The script's child keeps the pipe open; both are in the group.
	slow := script(t, dir, "slow", "sleep 60 & sleep 60")
	start := time.Now()
	_, err := probe(r, slow, os.Getenv("PATH"), 1)
	if err == nil || !strings.Contains(err.Error(), "did not finish within 5s") {
		t.Fatalf("slow candidate: %v", err)
	}
	if d := time.Since(start); d > probeDeadline+3*time.Second {
		t.Fatalf("the probe took %v", d)
	}
}

// A candidate another process still has open for writing cannot be
// executed (ETXTBSY); the probe retries, 50 ms apart.
func TestProbe_RetriesTextBusy(t *testing.T) {
	r := testReaper(t)
	dir := t.TempDir()
	p := script(t, dir, "busy", "echo 1.2.3; echo handover-schema 1")
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		// Between the first attempt and the last (5 × 50 ms).
		time.Sleep(60 * time.Millisecond)
		w.Close()
	}()
	if v, err := probe(r, p, os.Getenv("PATH"), 1); err != nil || v != "1.2.3" {
		t.Fatalf("after the writer closed: %q %v", v, err)
	}
}

func TestStageBody(t *testing.T) {
	dir := t.TempDir()
	p, err := stageBody(dir, strings.NewReader("binary"), 6)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o755 || !strings.HasPrefix(filepath.Base(p), stagingPrefix) || len(filepath.Base(p)) != len(stagingPrefix)+16 {
		t.Fatalf("staged %s: %v %v", p, st, err)
	}
	if _, err := install(p, dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, NextName)); string(b) != "binary" {
		t.Fatalf("envd.next holds %q", b)
	}
	if _, err := stageBody(dir, strings.NewReader("1234567"), 6); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := stageBody(dir, io.MultiReader(strings.NewReader("abc"), errReader{}), 6); !errors.Is(err, ErrClientGone) {
		t.Fatalf("cut off: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != NextName {
		t.Fatalf("left behind: %v", entries)
	}
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o755)
	if os.Geteuid() != 0 { // root ignores directory permissions
		var f *Failure
		if _, err := stageBody(dir, strings.NewReader("x"), 6); !errors.As(err, &f) || !strings.Contains(f.Message, "permission denied") {
			t.Fatalf("unwritable directory: %v", err)
		}
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestMemfd_SealedRoundTrip(t *testing.T) {
	fd, err := writeMemfd([]byte("record"))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.Pwrite(fd, []byte("x"), 0); !errors.Is(err, unix.EPERM) {
		t.Fatalf("write to the sealed file: %v", err)
	}
	if err := unix.Ftruncate(fd, 0); !errors.Is(err, unix.EPERM) {
		t.Fatalf("shrink the sealed file: %v", err)
	}
	b, err := readMemfd(fd)
	if err != nil || string(b) != "record" {
		t.Fatalf("read back %q %v", b, err)
	}
	if fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC == 0 {
		t.Fatal("the memory file is not close-on-exec")
	}
}

func TestCarried_EachDescriptorOnce(t *testing.T) {
	var c Carried
	if err := c.Add(7, handoverpb.DescriptorKind_DESCRIPTOR_KIND_PIPE_READ); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		fd   int
		kind handoverpb.DescriptorKind
	}{{7, handoverpb.DescriptorKind_DESCRIPTOR_KIND_PIPE_READ}, {2, handoverpb.DescriptorKind_DESCRIPTOR_KIND_PIPE_READ}, {8, 0}} {
		if err := c.Add(bad.fd, bad.kind); err == nil {
			t.Errorf("Add(%d, %v) accepted", bad.fd, bad.kind)
		}
	}
	if got := c.FDs(); len(got) != 1 || got[0] != 7 {
		t.Fatalf("FDs %v", got)
	}
}

// The exec sees the memory file and every carried descriptor without
// close-on-exec, under the fork lock, and ENVD_HANDOVER_FD naming the
// file; a failed exec sets the flags back.
func TestExecWithHandover_FlagsAndEnvironment(t *testing.T) {
	memfd, err := writeMemfd([]byte("r"))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(memfd)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	carried := int(r.Fd())
	var sawEnv []string
	var sawFlags []int
	fake := func(path string, argv, env []string) error {
		sawEnv = env
		for _, fd := range []int{memfd, carried, int(w.Fd())} {
			fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
			sawFlags = append(sawFlags, fl&unix.FD_CLOEXEC)
		}
		return unix.ENOEXEC
	}
	err = execWithHandover(context.Background(), fake, "/x", []string{"/x", "--port", "1"}, []string{"A=1", EnvFD + "=99"}, memfd, []int{carried})
	var pe *os.PathError
	if !errors.As(err, &pe) || pe.Path != "/x" || !errors.Is(err, unix.ENOEXEC) {
		t.Fatalf("error %v", err)
	}
	if sawFlags[0] != 0 || sawFlags[1] != 0 || sawFlags[2] == 0 {
		t.Fatalf("close-on-exec at the exec: memfd %d, carried %d, other %d", sawFlags[0], sawFlags[1], sawFlags[2])
	}
	want := EnvFD + "=" + itoa(memfd)
	n := 0
	for _, kv := range sawEnv {
		if strings.HasPrefix(kv, EnvFD+"=") {
			n++
			if kv != want {
				t.Fatalf("env has %s, want %s", kv, want)
			}
		}
	}
	if n != 1 || sawEnv[0] != "A=1" {
		t.Fatalf("env %v", sawEnv)
	}
	for _, fd := range []int{memfd, carried} {
		if fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC == 0 {
			t.Fatalf("descriptor %d not close-on-exec after the failed exec", fd)
		}
	}
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

func TestStaging_SealListsAndImportRemoves(t *testing.T) {
	dir := t.TempDir()
	s := NewStaging()
	a := filepath.Join(dir, uploadTempPrefix+"a")
	done := s.Begin(a)
	must(t, os.WriteFile(a, nil, 0o600))
	other := filepath.Join(dir, "keep")
	must(t, os.WriteFile(other, nil, 0o600))
	must(t, s.Quiesce(context.Background()))
	began := make(chan struct{})
	go func() {
		d := s.Begin(filepath.Join(dir, uploadTempPrefix+"b"))
		close(began)
		d()
	}()
	select {
	case <-began:
		t.Fatal("a staging file was created while the registry was sealed")
	case <-time.After(50 * time.Millisecond):
	}
	rec := &handoverpb.Record{}
	must(t, s.Export(rec, nil))
	if len(rec.StagingFiles) != 1 || rec.StagingFiles[0] != a {
		t.Fatalf("listed %v", rec.StagingFiles)
	}
	s.Resume()
	<-began
	done()
	done()
	if s.Len() != 0 {
		t.Fatalf("%d still registered", s.Len())
	}
	rec.StagingFiles = append(rec.StagingFiles, other, "relative/"+uploadTempPrefix+"x")
	if _, err := NewStaging().Import(rec, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the cut-off staging file is still there: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("a file that is not a staging file was removed: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestPendingParts_RefuseWhatTheyCannotCarry(t *testing.T) {
	rec := &handoverpb.Record{}
	if err := (PendingProcesses{Count: func() (int, int) { return 0, 0 }}).Export(rec, nil); err != nil {
		t.Fatal(err)
	}
	err := (PendingProcesses{Count: func() (int, int) { return 2, 1 }}).Export(rec, nil)
	if !errors.Is(err, ErrNotCarriedYet) || !strings.Contains(err.Error(), "2 running processes and 1 retained exits") {
		t.Fatalf("processes: %v", err)
	}
	if err := (PendingWatchers{Len: func() (int, int) { return 0, 5 }}).Export(rec, nil); err != nil {
		t.Fatalf("streaming watchers refused: %v", err)
	}
	if err := (PendingWatchers{Len: func() (int, int) { return 1, 0 }}).Export(rec, nil); !errors.Is(err, ErrNotCarriedYet) {
		t.Fatalf("polling watcher: %v", err)
	}
	if !proto.Equal(rec, &handoverpb.Record{}) {
		t.Fatalf("pending parts wrote %v", rec)
	}
	f := &fakeForwarding{running: true}
	p := &PendingForwarding{F: f}
	must(t, p.Quiesce(context.Background()))
	p.Resume()
	p.Resume()
	if f.stops != 1 || f.starts != 1 {
		t.Fatalf("forwarding stopped %d, started %d times", f.stops, f.starts)
	}
	idle := &fakeForwarding{}
	p = &PendingForwarding{F: idle}
	must(t, p.Quiesce(context.Background()))
	p.Resume()
	if idle.stops != 0 || idle.starts != 0 {
		t.Fatal("forwarding that was not running was touched")
	}
}

type fakeForwarding struct {
	running       bool
	stops, starts int
}

func (f *fakeForwarding) Start()        { f.starts++; f.running = true }
func (f *fakeForwarding) Stop()         { f.stops++; f.running = false }
func (f *fakeForwarding) Running() bool { return f.running }

// Upgrade with everything but the kernel faked.

type event struct{ log []string }

func (e *event) add(s string) { e.log = append(e.log, s) }

type fakeLock struct {
	name string
	ev   *event
	busy bool
}

func (l *fakeLock) hold(ctx context.Context) (func(), error) {
	if l.busy {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	l.ev.add("hold " + l.name)
	return func() { l.ev.add("release " + l.name) }, nil
}

type fakeFreezer struct {
	ev     *event
	settle error
	panics bool
}

func (f *fakeFreezer) HoldLock(ctx context.Context) (func(), error) {
	f.ev.add("hold freezer")
	return func() { f.ev.add("release freezer") }, nil
}
func (f *fakeFreezer) FreezeHeld(context.Context, time.Duration) error {
	f.ev.add("freeze")
	if f.panics {
		panic("freeze boom")
	}
	return f.settle
}
func (f *fakeFreezer) ThawAfterRollback() { f.ev.add("thaw") }

type fakePart struct {
	name      string
	ev        *event
	exportErr error
	panics    bool
	onExport  func()
}

func (p *fakePart) Name() string { return p.name }
func (p *fakePart) Quiesce(context.Context) error {
	p.ev.add("quiesce " + p.name)
	return nil
}
func (p *fakePart) Export(rec *handoverpb.Record, fds *Carried) error {
	if p.panics {
		panic("boom")
	}
	p.ev.add("export " + p.name)
	if p.onExport != nil {
		p.onExport()
	}
	return p.exportErr
}
func (p *fakePart) Resume() { p.ev.add("resume " + p.name) }

type upgradeFixture struct {
	ev                                *event
	u                                 *Upgrader
	dir                               string
	init, snap, fsf, ca, hyper, spawn *fakeLock
	freezer                           *fakeFreezer
	parts                             []*fakePart
	initialized, prepared, fsFrozen   bool
	execPath                          string
	execArgs, execEnv                 []string
}

func newUpgradeFixture(t *testing.T) *upgradeFixture {
	t.Helper()
	ev := &event{}
	f := &upgradeFixture{ev: ev, dir: t.TempDir(), initialized: true, freezer: &fakeFreezer{ev: ev}}
	f.init, f.snap, f.fsf, f.ca, f.hyper, f.spawn = &fakeLock{name: "init", ev: ev}, &fakeLock{name: "snapshot", ev: ev},
		&fakeLock{name: "fsfreeze", ev: ev}, &fakeLock{name: "ca", ev: ev}, &fakeLock{name: "hyperloop", ev: ev}, &fakeLock{name: "spawn", ev: ev}
	f.parts = []*fakePart{{name: "a", ev: ev}, {name: "b", ev: ev}}
	parts := []Part{f.parts[0], f.parts[1]}
	f.u = NewUpgrader(Options{
		Version: "1.0.0", Commit: "c", StagingDir: f.dir,
		Initialized: func() bool { return f.initialized }, Prepared: func() bool { return f.prepared }, FSFrozen: func() bool { return f.fsFrozen },
		InitLock: f.init.hold, SnapshotLock: f.snap.hold, FSFreezeLock: f.fsf.hold, CALock: f.ca.hold, HyperloopLock: f.hyper.hold,
		Freezer: f.freezer, SpawnLock: f.spawn.hold, Parts: parts, Spawner: testReaper(t),
		Args: []string{"--port", "9"}, Env: []string{"A=1"},
		exec: func(path string, argv, env []string) error {
			f.execPath, f.execArgs, f.execEnv = path, argv, env
			ev.add("exec")
			return unix.EACCES
		},
	})
	return f
}

const goodCandidate = "#!/bin/sh\necho 2.0.0; echo handover-schema 1\n"

func (f *upgradeFixture) upgrade(body string, targets ...string) error {
	return f.u.Upgrade(context.Background(), Request{Targets: targets, Body: strings.NewReader(body), Declared: int64(len(body))})
}

func TestUpgrade_AdmissionOrder(t *testing.T) {
	f := newUpgradeFixture(t)
	f.initialized = false
	if err := f.upgrade(goodCandidate, "/elsewhere"); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("not initialized: %v", err)
	}
	f.initialized = true
	if err := f.upgrade(goodCandidate, "", "/elsewhere"); !errors.Is(err, ErrTarget) {
		t.Fatalf("wrong target: %v", err)
	}
	f.prepared = true
	if err := f.upgrade(goodCandidate, "/usr/bin/envd.next"); !errors.Is(err, ErrPrepared) {
		t.Fatalf("prepared: %v", err)
	}
	f.prepared, f.fsFrozen = false, true
	if err := f.upgrade(goodCandidate); !errors.Is(err, ErrFSFrozen) {
		t.Fatalf("fs frozen: %v", err)
	}
	f.fsFrozen = false
	if err := f.u.Upgrade(context.Background(), Request{Body: strings.NewReader(""), Declared: MaxBinaryBytes + 1}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("declared too large: %v", err)
	}
	if len(f.ev.log) != 0 {
		t.Fatalf("a refusal did something: %v", f.ev.log)
	}
	if entries, _ := os.ReadDir(f.dir); len(entries) != 0 {
		t.Fatalf("a refusal staged %v", entries)
	}
}

func TestUpgrade_InProgress(t *testing.T) {
	f := newUpgradeFixture(t)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- f.u.Upgrade(context.Background(), Request{Body: pr, Declared: -1}) }()
	deadline := time.Now().Add(5 * time.Second)
	for !f.u.InProgress() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := f.upgrade(goodCandidate); !errors.Is(err, ErrInProgress) {
		t.Fatalf("second upgrade: %v", err)
	}
	pw.CloseWithError(io.ErrUnexpectedEOF)
	if err := <-done; !errors.Is(err, ErrClientGone) {
		t.Fatalf("cut-off body: %v", err)
	}
	if f.u.InProgress() {
		t.Fatal("still in progress")
	}
}

func TestUpgrade_IncompatibleBinaryFreezesNothing(t *testing.T) {
	f := newUpgradeFixture(t)
	var fl *Failure
	err := f.upgrade("#!/bin/sh\necho 0.6.4\n")
	if !errors.As(err, &fl) || fl.Message != "incompatible upgrade binary: no handover-schema line" {
		t.Fatalf("old envd: %v", err)
	}
	if len(f.ev.log) != 0 {
		t.Fatalf("the refused upgrade did %v", f.ev.log)
	}
	if entries, _ := os.ReadDir(f.dir); len(entries) != 0 {
		t.Fatalf("left %v", entries)
	}
}

// The full path up to a failing execve, then the rollback in the order of
// §8.9: locks in §1.3 order, the freeze under them, parts quiesced and
// exported in order, resumed in reverse, locks released in reverse, the
// thaw after the freezer lock.
func TestUpgrade_OrderAndRollback(t *testing.T) {
	f := newUpgradeFixture(t)
	var fl *Failure
	err := f.upgrade(goodCandidate, "/usr/bin/envd.next")
	if !errors.As(err, &fl) || fl.Message != "execve "+filepath.Join(f.dir, NextName)+": permission denied" {
		t.Fatalf("error %v", err)
	}
	want := []string{"hold init", "hold snapshot", "hold fsfreeze", "hold ca", "hold hyperloop", "hold freezer", "hold spawn",
		"freeze", "quiesce a", "quiesce b", "export a", "export b", "exec",
		"resume b", "resume a", "release spawn", "release freezer", "release hyperloop", "release ca", "release fsfreeze",
		"release snapshot", "release init", "thaw"}
	if strings.Join(f.ev.log, ",") != strings.Join(want, ",") {
		t.Fatalf("steps\n got %v\nwant %v", f.ev.log, want)
	}
	if f.execPath != filepath.Join(f.dir, NextName) || strings.Join(f.execArgs, " ") != f.execPath+" --port 9" {
		t.Fatalf("exec %s %v", f.execPath, f.execArgs)
	}
	if f.execEnv[0] != "A=1" || !strings.HasPrefix(f.execEnv[len(f.execEnv)-1], EnvFD+"=") {
		t.Fatalf("exec env %v", f.execEnv)
	}
	if b, _ := os.ReadFile(filepath.Join(f.dir, NextName)); !bytes.Equal(b, []byte(goodCandidate)) {
		t.Fatal("the probed binary was not installed as envd.next")
	}
	// The re-exec path probes and executes the running binary.
	f.ev.log = nil
	if err := f.u.Upgrade(context.Background(), Request{ReExec: true}); err == nil {
		t.Fatal("re-exec of the test binary passed the probe")
	} else if !strings.HasPrefix(err.Error(), "incompatible upgrade binary: exit status") {
		t.Fatalf("re-exec of the test binary: %v", err)
	}
}

func TestUpgrade_Failures(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(f *upgradeFixture)
		msg   string
		thaw  bool
	}{
		{"busy lock", func(f *upgradeFixture) { f.ca.busy = true }, "handover aborted: envd busy", false},
		{"prepared under the lock", func(f *upgradeFixture) {
			hold := f.snap.hold
			f.u.o.SnapshotLock = func(ctx context.Context) (func(), error) { f.prepared = true; return hold(ctx) }
		}, ErrPrepared.Error(), false},
		{"freeze", func(f *upgradeFixture) { f.freezer.settle = errors.New("workload was not frozen before the handover") },
			"handover aborted: freeze workload: workload was not frozen before the handover", true},
		{"export", func(f *upgradeFixture) { f.parts[1].exportErr = errors.New("nope") }, "handover aborted: b: nope", true},
		{"panic", func(f *upgradeFixture) { f.parts[0].panics = true }, "handover aborted: a: panic: boom", true},
		{"shutdown during the upgrade", func(f *upgradeFixture) { f.parts[1].onExport = f.u.Close }, "handover aborted: envd is shutting down", true},
		{"shutdown before", func(f *upgradeFixture) { f.u.Close() }, "handover aborted: envd is shutting down", false},
		// A panic of the upgrade itself still releases every lock and thaws.
		{"panic in the freeze", func(f *upgradeFixture) { f.freezer.panics = true }, "handover aborted: panic: freeze boom", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newUpgradeFixture(t)
			c.setup(f)
			err := f.upgrade(goodCandidate)
			if err == nil || err.Error() != c.msg {
				t.Fatalf("error %v, want %q", err, c.msg)
			}
			held, released := 0, 0
			for _, e := range f.ev.log {
				if strings.HasPrefix(e, "hold ") {
					held++
				}
				if strings.HasPrefix(e, "release ") {
					released++
				}
				if e == "exec" {
					t.Fatal("exec after a failure")
				}
			}
			if held != released {
				t.Fatalf("held %d locks, released %d: %v", held, released, f.ev.log)
			}
			if thawed := strings.Contains(strings.Join(f.ev.log, ","), "thaw"); thawed != c.thaw {
				t.Fatalf("thawed %v, want %v: %v", thawed, c.thaw, f.ev.log)
			}
			if f.u.InProgress() {
				t.Fatal("still in progress")
			}
		})
	}
}
