package handover

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/handover/handoverpb"
)

// inheritAs makes fd look inherited: open, close-on-exec clear, as the exec
// leaves a carried descriptor.
func inheritAs(t *testing.T, fd int) {
	t.Helper()
	if err := setCloexec(fd, false); err != nil {
		t.Fatal(err)
	}
}

// handoverFixture builds what an outgoing image leaves: the record in a
// sealed memory file named by ENVD_HANDOVER_FD, carried descriptors
// without close-on-exec.
func handoverFixture(t *testing.T, rec *handoverpb.Record, raw []byte) {
	t.Helper()
	if raw == nil {
		var err error
		if raw, err = encode(rec); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := writeMemfd(raw)
	if err != nil {
		t.Fatal(err)
	}
	inheritAs(t, fd)
	t.Setenv(EnvFD, strconv.Itoa(fd))
}

type recImporter struct {
	name   string
	counts Counts
	panics bool
	take   func(rec *handoverpb.Record, in *Inherited) error
	ran    bool
}

func (r *recImporter) Name() string { return r.name }
func (r *recImporter) Import(rec *handoverpb.Record, in *Inherited) (Counts, error) {
	r.ran = true
	if r.panics {
		panic("boom")
	}
	var err error
	if r.take != nil {
		err = r.take(rec, in)
	}
	return r.counts, err
}

func TestIncoming_NotAHandover(t *testing.T) {
	in := Begin()
	if in.Active() {
		t.Fatal("active without ENVD_HANDOVER_FD")
	}
	in.Read(slog.New(slog.DiscardHandler))
	imp := &recImporter{name: "x"}
	in.Restore(imp)
	in.Finish(FinishOptions{})
	if imp.ran {
		t.Fatal("an importer ran at a normal start")
	}
	if _, ok := in.Header(); ok {
		t.Fatal("X-Envd-Handover at a normal start")
	}
	if in.Gate(func() bool { return false })() {
		t.Fatal("the gate is closed at a normal start")
	}
	if in.Cmd("echo") != "echo" {
		t.Fatal("--cmd dropped at a normal start")
	}
}

func TestIncoming_AdoptsDescriptorsAndClosesTheRest(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	stray, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	// Opened by this image (close-on-exec, as the Go runtime opens its
	// poller and cgroup files before main): not inherited, never closed.
	own, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	for _, f := range []*os.File{pr, pw, lf, stray} {
		inheritAs(t, int(f.Fd()))
	}
	rfd, wfd, lfd := int(pr.Fd()), int(pw.Fd()), int(lf.Fd())
	rec := &handoverpb.Record{Descriptors: []*handoverpb.Descriptor{
		{Fd: int32(rfd), Kind: handoverpb.DescriptorKind_DESCRIPTOR_KIND_PIPE_READ},
		{Fd: int32(wfd), Kind: handoverpb.DescriptorKind_DESCRIPTOR_KIND_PIPE_WRITE},
		{Fd: int32(lfd), Kind: handoverpb.DescriptorKind_DESCRIPTOR_KIND_TCP_LISTENER},
	}, Header: &handoverpb.Header{OutgoingVersion: "0.0.1"}}
	handoverFixture(t, rec, nil)

	in := Begin()
	if !in.Active() || in.Failed() {
		t.Fatalf("active %v failed %v (%s)", in.Active(), in.Failed(), in.why)
	}
	if _, ok := os.LookupEnv(EnvFD); ok {
		t.Fatal("ENVD_HANDOVER_FD is still in the environment")
	}
	for _, fd := range []int{rfd, wfd, lfd, int(stray.Fd())} {
		if fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC == 0 {
			t.Fatalf("inherited descriptor %d is not close-on-exec", fd)
		}
	}
	in.Read(slog.New(slog.DiscardHandler))
	if in.Failed() || in.FromVersion() != "0.0.1" {
		t.Fatalf("read: failed %v (%s)", in.Failed(), in.why)
	}
	var took []*os.File
	imp := &recImporter{name: "pipes", counts: Counts{Procs: 2, ProcsFailed: 1, Watchers: 3}, take: func(_ *handoverpb.Record, h *Inherited) error {
		if _, err := h.Take(rfd, handoverpb.DescriptorKind_DESCRIPTOR_KIND_PIPE_WRITE); err == nil {
			t.Error("took a pipe's read end as a write end")
		}
		if _, err := h.Take(lfd, handoverpb.DescriptorKind_DESCRIPTOR_KIND_TCP_CONNECTION); err == nil {
			t.Error("took a listener as a connection")
		}
		if _, err := h.Take(int(stray.Fd()), handoverpb.DescriptorKind_DESCRIPTOR_KIND_PIPE_READ); err == nil {
			t.Error("took a descriptor the record does not list")
		}
		for _, d := range []struct {
			fd   int
			kind handoverpb.DescriptorKind
		}{{rfd, handoverpb.DescriptorKind_DESCRIPTOR_KIND_PIPE_READ}, {lfd, handoverpb.DescriptorKind_DESCRIPTOR_KIND_TCP_LISTENER}} {
			f, err := h.Take(d.fd, d.kind)
			if err != nil {
				return err
			}
			took = append(took, f)
		}
		if _, err := h.Take(rfd, handoverpb.DescriptorKind_DESCRIPTOR_KIND_PIPE_READ); err == nil {
			t.Error("took a descriptor twice")
		}
		return nil
	}}
	in.Restore(imp, &recImporter{name: "more", counts: Counts{Retained: 1}})
	thawedFailed := false
	in.Finish(FinishOptions{Version: "0.0.2", ThawFailed: func() { thawedFailed = true }})
	defer in.Stop()
	if thawedFailed || in.Failed() {
		t.Fatal("a successful handover took the failure path")
	}
	h, ok := in.Header()
	want := `{"failed":false,"procs":2,"procs_failed":1,"retained":1,"retained_failed":0,"watchers":3,"watchers_failed":0}`
	if !ok || h != want {
		t.Fatalf("header %q", h)
	}
	// The untaken write end and the stray descriptor were closed; the
	// taken ones were not.
	for _, fd := range []int{wfd, int(stray.Fd())} {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
			t.Errorf("unadopted descriptor %d still open", fd)
		}
	}
	if _, err := unix.FcntlInt(own.Fd(), unix.F_GETFD, 0); err != nil {
		t.Fatal("a descriptor the image opened itself was closed as inherited")
	}
	for _, f := range took {
		if _, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0); err != nil {
			t.Errorf("adopted descriptor %d closed", f.Fd())
		}
		f.Close()
	}
	if !in.Gate(func() bool { return false })() || in.Gate(func() bool { return true })() {
		t.Fatal("the gate does not follow initialization")
	}
	if in.Cmd("echo") != "" {
		t.Fatal("--cmd would run again after a handover")
	}
}

func TestIncoming_Failures(t *testing.T) {
	for _, c := range []struct {
		name  string
		raw   []byte
		rec   *handoverpb.Record
		panic bool
		why   string
	}{
		{name: "garbage", raw: []byte("not a handover record"), why: "decode the record"},
		{name: "too new", raw: mustMarshal(t, &handoverpb.Record{Schema: MaxSchema + 1}), why: "newer than this image reads"},
		{name: "panic", rec: &handoverpb.Record{}, panic: true, why: "panic while trying to restore p"},
	} {
		t.Run(c.name, func(t *testing.T) {
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			inheritAs(t, int(pw.Fd()))
			handoverFixture(t, c.rec, c.raw)
			in := Begin()
			in.Read(slog.New(slog.DiscardHandler))
			imp := &recImporter{name: "p", panics: c.panic, counts: Counts{Procs: 1}}
			after := &recImporter{name: "after"}
			in.Restore(imp, after)
			thawed := false
			in.Finish(FinishOptions{ThawFailed: func() { thawed = true }})
			defer in.Stop()
			if !in.Failed() || !strings.Contains(in.why, c.why) {
				t.Fatalf("failed %v (%q)", in.Failed(), in.why)
			}
			if after.ran {
				t.Fatal("an importer ran after the failure")
			}
			if !thawed {
				t.Fatal("a failed handover did not thaw at once")
			}
			if h, _ := in.Header(); h != `{"failed":true,"procs":0,"procs_failed":0,"retained":0,"retained_failed":0,"watchers":0,"watchers_failed":0}` {
				t.Fatalf("header %q", h)
			}
			// The workload's pipes are closed with the rest: a writer gets
			// EPIPE instead of blocking for ever.
			if _, err := unix.FcntlInt(pw.Fd(), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
				t.Fatal("an inherited pipe was left open after a failed handover")
			}
		})
	}
}

type fakeRegistrar struct{ adopted []int }

func (f *fakeRegistrar) Adopt(pid int) (<-chan unix.WaitStatus, error) {
	f.adopted = append(f.adopted, pid)
	return make(chan unix.WaitStatus, 1), nil
}

// Carried processes are registered with the reaper only when their leader
// has not been reaped and is envd's child.
func TestIncoming_RegisterChildren(t *testing.T) {
	child, err := syscall.ForkExec("/bin/sleep", []string{"sleep", "30"}, &syscall.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = unix.Kill(child, unix.SIGKILL)
		var ws unix.WaitStatus
		_, _ = unix.Wait4(child, &ws, 0, nil)
	}()
	ws := uint32(0)
	rec := &handoverpb.Record{Processes: []*handoverpb.Process{
		{Pid: uint32(child)},
		{Pid: uint32(os.Getppid())}, // alive, but not envd's child
		{Pid: 4242, WaitStatus: &ws},
	}}
	handoverFixture(t, rec, nil)
	in := Begin()
	in.Read(slog.New(slog.DiscardHandler))
	r := &fakeRegistrar{}
	in.RegisterChildren(r)
	if len(r.adopted) != 1 || r.adopted[0] != child {
		t.Fatalf("registered %v, want [%d]", r.adopted, child)
	}
	if ch, rejected := in.in.Child(uint32(child)); ch == nil || rejected {
		t.Fatal("the child's channel is not there")
	}
	if _, rejected := in.in.Child(uint32(os.Getppid())); !rejected {
		t.Fatal("a process that is not envd's child was not rejected")
	}
	if ch, rejected := in.in.Child(4242); ch != nil || rejected {
		t.Fatal("an already reaped leader was registered or rejected")
	}
	in.Finish(FinishOptions{})
	in.Stop()
}
