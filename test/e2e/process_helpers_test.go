package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/gen/process/processconnect"
	"github.com/envd/envd/internal/envdtest"
)

// procCodecs are the two codecs every process RPC must serve: binary
// protobuf (the Wrenn host) and JSON (the E2B SDKs).
var procCodecs = []struct {
	name string
	opts []connect.ClientOption
}{
	{"proto", nil},
	{"json", []connect.ClientOption{connect.WithProtoJSON()}},
}

// procEnvd starts envd for a process test and kills every process it still
// manages before it is stopped, so no test leaves processes behind.
func procEnvd(t *testing.T, opts envdtest.Options) *envdtest.Envd {
	t.Helper()
	e := envdtest.Start(t, opts)
	t.Cleanup(func() { procKillAll(e) })
	return e
}

func procKillAll(e *envdtest.Envd) {
	c := e.Process()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := c.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		return
	}
	for _, p := range l.Msg.GetProcesses() {
		_, _ = c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: procPID(p.GetPid()), Signal: pb.Signal_SIGNAL_SIGKILL}))
	}
}

func procPID(pid uint32) *pb.ProcessSelector {
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
}

// procStdin writes s to the stdin of the selected process and fails the
// test if envd refuses.
func procStdin(t *testing.T, ctx context.Context, c processconnect.ProcessClient, sel *pb.ProcessSelector, s string) {
	t.Helper()
	if _, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte(s)}}})); err != nil {
		t.Fatalf("send stdin: %v", err)
	}
}

func procTag(tag string) *pb.ProcessSelector {
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: tag}}
}

func procSh(script string) *pb.ProcessConfig {
	return &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}
}

func ptr[T any](v T) *T { return &v }

// basicAuth is the Authorization header selecting user (E2B SDK style).
func basicAuth(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"))
}

// procReq builds a request with headers (name, value pairs).
func procReq[T any](msg *T, hdr ...string) *connect.Request[T] {
	r := connect.NewRequest(msg)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header().Set(hdr[i], hdr[i+1])
	}
	return r
}

// procEvents is everything a Start or Connect stream delivered.
type procEvents struct {
	header     http.Header
	kinds      []string // event kinds in order: start, data, keepalive, end
	pid        uint32
	out        map[string]*bytes.Buffer // stdout, stderr, pty
	end        *pb.ProcessEvent_EndEvent
	keepalives int
	err        error
}

func (ev *procEvents) stdout() string { return ev.out["stdout"].String() }
func (ev *procEvents) stderr() string { return ev.out["stderr"].String() }
func (ev *procEvents) pty() string    { return ev.out["pty"].String() }

type procStream[T any] interface {
	Receive() bool
	Msg() *T
	Err() error
	ResponseHeader() http.Header
	Close() error
}

type eventMsg interface{ GetEvent() *pb.ProcessEvent }

// procReader reads a stream incrementally.
type procReader[T any, PT interface {
	*T
	eventMsg
}] struct {
	s  procStream[T]
	ev *procEvents
}

func newProcReader[T any, PT interface {
	*T
	eventMsg
}](s procStream[T]) *procReader[T, PT] {
	return &procReader[T, PT]{s: s, ev: &procEvents{out: map[string]*bytes.Buffer{"stdout": {}, "stderr": {}, "pty": {}}}}
}

// next reads one event; false at the end of the stream.
func (r *procReader[T, PT]) next() bool {
	if !r.s.Receive() {
		r.ev.err = r.s.Err()
		return false
	}
	if r.ev.header == nil {
		r.ev.header = r.s.ResponseHeader()
	}
	e := PT(r.s.Msg()).GetEvent()
	switch v := e.GetEvent().(type) {
	case *pb.ProcessEvent_Start:
		r.ev.kinds = append(r.ev.kinds, "start")
		r.ev.pid = v.Start.GetPid()
	case *pb.ProcessEvent_Data:
		r.ev.kinds = append(r.ev.kinds, "data")
		switch o := v.Data.GetOutput().(type) {
		case *pb.ProcessEvent_DataEvent_Stdout:
			r.ev.out["stdout"].Write(o.Stdout)
		case *pb.ProcessEvent_DataEvent_Stderr:
			r.ev.out["stderr"].Write(o.Stderr)
		case *pb.ProcessEvent_DataEvent_Pty:
			r.ev.out["pty"].Write(o.Pty)
		}
	case *pb.ProcessEvent_Keepalive:
		r.ev.kinds = append(r.ev.kinds, "keepalive")
		r.ev.keepalives++
	case *pb.ProcessEvent_End:
		r.ev.kinds = append(r.ev.kinds, "end")
		r.ev.end = v.End
	default:
		r.ev.kinds = append(r.ev.kinds, "?")
	}
	return true
}

// until reads until the output of stream name contains s.
func (r *procReader[T, PT]) until(t *testing.T, name, s string) {
	t.Helper()
	for !strings.Contains(r.ev.out[name].String(), s) {
		if !r.next() {
			t.Fatalf("stream ended before %s contained %q (got %q, err %v)", name, s, r.ev.out[name].String(), r.ev.err)
		}
	}
}

func (r *procReader[T, PT]) drain() *procEvents {
	for r.next() {
	}
	return r.ev
}

// procCtx is a context that ends the test's streams if something hangs.
func procCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// procStart starts a process and returns a reader positioned after the
// start event.
func procStart(t *testing.T, ctx context.Context, c processconnect.ProcessClient, req *connect.Request[pb.StartRequest]) *procReader[pb.StartResponse, *pb.StartResponse] {
	t.Helper()
	s, err := c.Start(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	r := newProcReader[pb.StartResponse, *pb.StartResponse](s)
	if !r.next() || len(r.ev.kinds) != 1 || r.ev.kinds[0] != "start" || r.ev.pid == 0 {
		t.Fatalf("first event: %v (err %v)", r.ev.kinds, r.ev.err)
	}
	return r
}

// procRun starts a process and reads its stream to the end.
func procRun(t *testing.T, c processconnect.ProcessClient, req *connect.Request[pb.StartRequest]) *procEvents {
	t.Helper()
	s, err := c.Start(procCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	return newProcReader[pb.StartResponse, *pb.StartResponse](s).drain()
}

// procConnect attaches and returns a reader positioned after the start.
func procConnect(t *testing.T, ctx context.Context, c processconnect.ProcessClient, req *connect.Request[pb.ConnectRequest]) *procReader[pb.ConnectResponse, *pb.ConnectResponse] {
	t.Helper()
	s, err := c.Connect(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	r := newProcReader[pb.ConnectResponse, *pb.ConnectResponse](s)
	if !r.next() || r.ev.kinds[0] != "start" {
		t.Fatalf("first event: %v (err %v)", r.ev.kinds, r.ev.err)
	}
	return r
}

// wantEnd checks a stream that completed normally with the given end.
func wantEnd(t *testing.T, ev *procEvents, code int32, exited bool, status string) {
	t.Helper()
	if ev.err != nil {
		t.Fatalf("stream error: %v (events %v)", ev.err, ev.kinds)
	}
	if len(ev.kinds) < 2 || ev.kinds[0] != "start" || ev.kinds[len(ev.kinds)-1] != "end" || strings.Count(strings.Join(ev.kinds, " "), "start") != 1 {
		t.Fatalf("event order %v", ev.kinds)
	}
	e := ev.end
	wantErr := status
	if exited && code == 0 {
		wantErr = ""
	}
	if e.GetExitCode() != code || e.GetExited() != exited || e.GetStatus() != status || (e.Error != nil) != (wantErr != "") || e.GetError() != wantErr {
		t.Fatalf("end %v; want code %d exited %v status %q (stderr %q)", e, code, exited, status, ev.stderr())
	}
}

// wantCode checks a Connect error's code and message.
func wantCode(t *testing.T, err error, code connect.Code, msg string) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != code || (msg != "" && ce.Message() != msg) {
		t.Fatalf("got %v; want %s %q", err, code, msg)
	}
}

// groupMembers lists the live (non-zombie) processes of process group pgid.
func groupMembers(t *testing.T, pgid uint32) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 2 && f[0] != "Z" && f[2] == strconv.FormatUint(uint64(pgid), 10) {
			cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			out = append(out, e.Name()+":"+strings.ReplaceAll(string(cmd), "\x00", " "))
		}
	}
	return out
}

// waitGroupGone waits until process group pgid has no live member.
func waitGroupGone(t *testing.T, pgid uint32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := groupMembers(t, pgid)
		if len(m) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process group %d still has %v", pgid, m)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
