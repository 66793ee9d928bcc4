package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/gen/process/processconnect"
	"github.com/envd/envd/internal/envdtest"
)

func TestProcess_ExitCodesAndEventOrder(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	cases := []struct {
		name   string
		cfg    *pb.ProcessConfig
		code   int32
		exited bool
		status string
		stdout string
		stderr string
	}{
		{"zero", procSh("echo hello"), 0, true, "exit status 0", "hello\n", ""},
		{"non-zero", procSh("echo out; echo err >&2; exit 3"), 3, true, "exit status 3", "out\n", "err\n"},
		{"killed", procSh("kill -KILL $$"), -1, false, "signal: killed", "", ""},
		{"terminated", procSh("kill -TERM $$"), -1, false, "signal: terminated", "", ""},
		{"not found", &pb.ProcessConfig{Cmd: "envd-no-such-command"}, 127, true, "exit status 127", "", "envd-no-such-command"},
		{"args passed verbatim", &pb.ProcessConfig{Cmd: "printf", Args: []string{"%s|", "a b", "$HOME", "'q'"}}, 0, true, "exit status 0", "a b|$HOME|'q'|", ""},
	}
	for _, codec := range procCodecs {
		c := e.Process(codec.opts...)
		for _, tc := range cases {
			t.Run(codec.name+"/"+tc.name, func(t *testing.T) {
				ev := procRun(t, c, procReq(&pb.StartRequest{Process: tc.cfg, Stdin: ptr(false)}))
				wantEnd(t, ev, tc.code, tc.exited, tc.status)
				if ev.stdout() != tc.stdout || !strings.Contains(ev.stderr(), tc.stderr) {
					t.Fatalf("stdout %q stderr %q", ev.stdout(), ev.stderr())
				}
				if got := ev.header.Get("Envd-Output-Offset"); got != "stdout=0,stderr=0" {
					t.Fatalf("Envd-Output-Offset %q", got)
				}
			})
		}
	}
}

// readEnvelopes splits a Connect streaming body into its messages.
func readEnvelopes(t *testing.T, body []byte) (msgs []string, endFlag byte, end string) {
	t.Helper()
	for len(body) > 0 {
		if len(body) < 5 {
			t.Fatalf("truncated envelope %q", body)
		}
		n := binary.BigEndian.Uint32(body[1:5])
		msg := string(body[5 : 5+n])
		if body[0]&2 != 0 {
			return msgs, body[0], msg
		}
		msgs = append(msgs, msg)
		body = body[5+n:]
	}
	t.Fatal("no end-of-stream envelope")
	return
}

func envelope(v any) io.Reader {
	b, _ := json.Marshal(v)
	out := make([]byte, 5, 5+len(b))
	binary.BigEndian.PutUint32(out[1:], uint32(len(b)))
	return bytes.NewReader(append(out, b...))
}

// The E2B SDK parses these exact JSON shapes (spec rpc.md §2.2).
func TestProcess_JSONWireShapes(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	hdr := map[string]string{"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"}
	for _, c := range []struct {
		script string
		end    string
	}{
		{"echo hello", `{"event":{"end":{"exited":true,"status":"exit status 0"}}}`},
		{"echo hello; exit 2", `{"event":{"end":{"exitCode":2,"exited":true,"status":"exit status 2","error":"exit status 2"}}}`},
	} {
		resp, body := do(t, "POST", e.URL+"/process.Process/Start", envelope(map[string]any{
			"process": map[string]any{"cmd": "/bin/sh", "args": []string{"-c", c.script}}, "stdin": false,
		}), hdr)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/connect+json" {
			t.Fatalf("%d %v", resp.StatusCode, resp.Header)
		}
		msgs, _, trailer := readEnvelopes(t, body)
		if len(msgs) != 3 {
			t.Fatalf("messages %q", msgs)
		}
		var start struct {
			Event struct {
				Start struct {
					Pid uint32 `json:"pid"`
				} `json:"start"`
			} `json:"event"`
		}
		if err := json.Unmarshal([]byte(msgs[0]), &start); err != nil || start.Event.Start.Pid == 0 {
			t.Fatalf("start %q", msgs[0])
		}
		// protojson varies its whitespace on purpose: compare values.
		sameJSON(t, msgs[0], `{"event":{"start":{"pid":`+strconv.FormatUint(uint64(start.Event.Start.Pid), 10)+`}}}`)
		sameJSON(t, msgs[1], `{"event":{"data":{"stdout":"`+base64.StdEncoding.EncodeToString([]byte("hello\n"))+`"}}}`)
		sameJSON(t, msgs[2], c.end)
		if strings.Contains(trailer, "error") {
			t.Fatalf("end of stream %q", trailer)
		}
	}
}

func sameJSON(t *testing.T, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("%q: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestProcess_List(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for _, codec := range procCodecs {
		t.Run(codec.name, func(t *testing.T) {
			c := e.Process(codec.opts...)
			ctx := procCtx(t)
			cwd := "/tmp"
			cfgs := []*pb.StartRequest{
				{Process: &pb.ProcessConfig{Cmd: "sleep", Args: []string{"1000"}}, Stdin: ptr(false)},
				{Process: &pb.ProcessConfig{Cmd: "sleep", Args: []string{"1001"}, Envs: map[string]string{"A": "1", "B": "2"}, Cwd: &cwd}, Tag: ptr("job-" + codec.name)},
				{Process: &pb.ProcessConfig{Cmd: "sleep", Args: []string{"1002"}}, Tag: ptr("")},
			}
			var pids []uint32
			for _, req := range cfgs {
				r := procStart(t, ctx, c, procReq(req))
				pids = append(pids, r.ev.pid)
			}
			l, err := c.List(ctx, connect.NewRequest(&pb.ListRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			byPID := map[uint32]*pb.ProcessInfo{}
			for _, p := range l.Msg.GetProcesses() {
				byPID[p.GetPid()] = p
			}
			for i, req := range cfgs {
				p := byPID[pids[i]]
				if p == nil {
					t.Fatalf("pid %d not listed", pids[i])
				}
				if (p.Tag == nil) != (req.Tag == nil) || p.GetTag() != req.GetTag() {
					t.Fatalf("tag %v, want %v", p.Tag, req.Tag)
				}
				got := p.GetConfig()
				if got.GetCmd() != req.Process.Cmd || !reflect.DeepEqual(got.GetArgs(), req.Process.Args) ||
					len(got.GetEnvs()) != len(req.Process.Envs) || (got.Cwd == nil) != (req.Process.Cwd == nil) || got.GetCwd() != req.Process.GetCwd() {
					t.Fatalf("config %v, sent %v", got, req.Process)
				}
				for k, v := range req.Process.Envs {
					if got.GetEnvs()[k] != v {
						t.Fatalf("envs %v", got.GetEnvs())
					}
				}
				_, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: procPID(pids[i]), Signal: pb.Signal_SIGNAL_SIGKILL}))
				if err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// Every RPC that selects a process answers the selector errors of
// rpc.md §4.7.
func TestProcess_SelectorErrors(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for _, codec := range procCodecs {
		c := e.Process(codec.opts...)
		ctx := procCtx(t)
		calls := map[string]func(sel *pb.ProcessSelector) error{
			"Connect": func(sel *pb.ProcessSelector) error {
				s, err := c.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: sel}))
				if err != nil {
					return err
				}
				for s.Receive() {
				}
				return s.Err()
			},
			"Update": func(sel *pb.ProcessSelector) error {
				_, err := c.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: sel}))
				return err
			},
			"SendInput": func(sel *pb.ProcessSelector) error {
				_, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("x")}}}))
				return err
			},
			"SendSignal": func(sel *pb.ProcessSelector) error {
				_, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel, Signal: pb.Signal_SIGNAL_SIGTERM}))
				return err
			},
			"CloseStdin": func(sel *pb.ProcessSelector) error {
				_, err := c.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel}))
				return err
			},
			"StreamInput": func(sel *pb.ProcessSelector) error {
				s := c.StreamInput(ctx)
				_ = s.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: sel}}})
				_, err := s.CloseAndReceive()
				return err
			},
		}
		for name, call := range calls {
			t.Run(codec.name+"/"+name, func(t *testing.T) {
				wantCode(t, call(nil), connect.CodeUnimplemented, "invalid input type")
				wantCode(t, call(&pb.ProcessSelector{}), connect.CodeUnimplemented, "invalid input type")
				wantCode(t, call(procPID(999999999)), connect.CodeNotFound, "process with pid 999999999 not found")
				wantCode(t, call(procTag("no-such-tag")), connect.CodeNotFound, "process with tag no-such-tag not found")
				wantCode(t, call(procTag("")), connect.CodeNotFound, "process with tag  not found")
			})
		}
	}
}

func TestProcess_StdinModesAndInputErrors(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for _, codec := range procCodecs {
		t.Run(codec.name, func(t *testing.T) {
			c := e.Process(codec.opts...)
			ctx := procCtx(t)
			stdin := func(pid uint32, b string) error {
				_, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: procPID(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte(b)}}}))
				return err
			}
			closeStdin := func(pid uint32) error {
				_, err := c.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: procPID(pid)}))
				return err
			}
			// Absent and true: a pipe.
			for _, flag := range []*bool{nil, ptr(true)} {
				r := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "cat"}, Stdin: flag}))
				if err := stdin(r.ev.pid, "hello "); err != nil {
					t.Fatal(err)
				}
				if err := stdin(r.ev.pid, "world"); err != nil {
					t.Fatal(err)
				}
				r.until(t, "stdout", "hello world")
				if err := closeStdin(r.ev.pid); err != nil {
					t.Fatal(err)
				}
				ev := r.drain()
				wantEnd(t, ev, 0, true, "exit status 0")
				if ev.stdout() != "hello world" {
					t.Fatalf("stdout %q", ev.stdout())
				}
			}
			// False: /dev/null, so cat ends at once; a live one refuses input.
			ev := procRun(t, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "cat"}, Stdin: ptr(false)}))
			wantEnd(t, ev, 0, true, "exit status 0")
			r := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: procSh("read x; echo got $x"), Stdin: ptr(false)}))
			wantEnd(t, r.drain(), 0, true, "exit status 0")
			r = procStart(t, ctx, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "sleep", Args: []string{"1000"}}, Stdin: ptr(false)}))
			pid := r.ev.pid
			wantCode(t, stdin(pid, "x"), connect.CodeInternal, "error writing to stdin: stdin not enabled or closed")
			if err := closeStdin(pid); err != nil {
				t.Fatalf("close of a disabled stdin: %v", err)
			}
			_, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: procPID(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte("x")}}}))
			wantCode(t, err, connect.CodeInternal, "error writing to tty: tty not assigned to process — input should be written to the stdin, not the tty")
			_, err = c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: procPID(pid)}))
			wantCode(t, err, connect.CodeUnimplemented, "invalid input type")
			_, err = c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: procPID(pid), Input: &pb.ProcessInput{}}))
			wantCode(t, err, connect.CodeUnimplemented, "invalid input type")
			_, err = c.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: procPID(pid), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 10, Rows: 10}}}))
			wantCode(t, err, connect.CodeInternal, "error resizing tty: tty not assigned to process")
			if _, err := c.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: procPID(pid)})); err != nil {
				t.Fatalf("update without pty: %v", err)
			}
			// Stdin closed by the client, then written to.
			r = procStart(t, ctx, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "sleep", Args: []string{"1000"}}}))
			if err := closeStdin(r.ev.pid); err != nil {
				t.Fatal(err)
			}
			if err := closeStdin(r.ev.pid); err != nil {
				t.Fatalf("second close: %v", err)
			}
			wantCode(t, stdin(r.ev.pid, "x"), connect.CodeInternal, "error writing to stdin: stdin not enabled or closed")
			// The child closed its stdin: the write fails with EPIPE.
			r = procStart(t, ctx, c, procReq(&pb.StartRequest{Process: procSh("exec 0<&-; echo closed; sleep 1000")}))
			r.until(t, "stdout", "closed")
			err = stdin(r.ev.pid, "x")
			prefix := "error writing to stdin: error writing to stdin of process '" + strconv.FormatUint(uint64(r.ev.pid), 10) + "': "
			var ce *connect.Error
			if !asConnect(err, &ce) || ce.Code() != connect.CodeInternal || !strings.HasPrefix(ce.Message(), prefix) || !strings.Contains(ce.Message(), "broken pipe") {
				t.Fatalf("EPIPE: %v", err)
			}
		})
	}
}

func asConnect(err error, ce **connect.Error) bool {
	e, ok := err.(*connect.Error)
	if ok {
		*ce = e
	}
	return ok
}

func TestProcess_StreamInput(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for _, codec := range procCodecs {
		t.Run(codec.name, func(t *testing.T) {
			c := e.Process(codec.opts...)
			ctx := procCtx(t)
			data := func(b string) *pb.StreamInputRequest {
				return &pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte(b)}}}}}
			}
			startEv := func(sel *pb.ProcessSelector) *pb.StreamInputRequest {
				return &pb.StreamInputRequest{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: sel}}}
			}
			keep := &pb.StreamInputRequest{Event: &pb.StreamInputRequest_Keepalive{Keepalive: &pb.StreamInputRequest_KeepAlive{}}}
			a := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "cat"}, Tag: ptr("si-a-" + codec.name)}))
			b := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "cat"}}))
			s := c.StreamInput(ctx)
			for _, m := range []*pb.StreamInputRequest{startEv(procTag("si-a-" + codec.name)), data("one "), keep, data("two"), startEv(procPID(b.ev.pid)), data("three")} {
				if err := s.Send(m); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := s.CloseAndReceive(); err != nil {
				t.Fatal(err)
			}
			a.until(t, "stdout", "one two")
			b.until(t, "stdout", "three")
			for _, r := range []uint32{a.ev.pid, b.ev.pid} {
				if _, err := c.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: procPID(r)})); err != nil {
					t.Fatal(err)
				}
			}
			if ev := a.drain(); ev.stdout() != "one two" {
				t.Fatalf("a got %q", ev.stdout())
			}
			if ev := b.drain(); ev.stdout() != "three" {
				t.Fatalf("b got %q", ev.stdout())
			}
			// Errors.
			for _, tc := range []struct {
				msgs []*pb.StreamInputRequest
				code connect.Code
				msg  string
			}{
				{[]*pb.StreamInputRequest{data("x")}, connect.CodeFailedPrecondition, "no start event received"},
				{[]*pb.StreamInputRequest{{}}, connect.CodeUnimplemented, "invalid event type"},
				{[]*pb.StreamInputRequest{startEv(procPID(999999998))}, connect.CodeNotFound, "process with pid 999999998 not found"},
				{[]*pb.StreamInputRequest{startEv(procPID(b.ev.pid))}, connect.CodeNotFound, ""}, // ended
			} {
				s := c.StreamInput(ctx)
				for _, m := range tc.msgs {
					_ = s.Send(m)
				}
				_, err := s.CloseAndReceive()
				wantCode(t, err, tc.code, tc.msg)
			}
			live := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "cat"}}))
			s = c.StreamInput(ctx)
			_ = s.Send(startEv(procPID(live.ev.pid)))
			_ = s.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{}}})
			_, err := s.CloseAndReceive()
			wantCode(t, err, connect.CodeUnimplemented, "invalid input type")
		})
	}
}

func TestProcess_PTY(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for _, codec := range procCodecs {
		t.Run(codec.name, func(t *testing.T) {
			c := e.Process(codec.opts...)
			ctx := procCtx(t)
			// stdin false is ignored with a PTY.
			r := procStart(t, ctx, c, procReq(&pb.StartRequest{
				Process: procSh("stty size; read line; stty size; echo got:$line; tty"),
				Pty:     &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}},
				Stdin:   ptr(false),
				Tag:     ptr("term-" + codec.name),
			}))
			if h := r.ev.header.Get("Envd-Output-Offset"); h != "pty=0" {
				t.Fatalf("offset header %q", h)
			}
			r.until(t, "pty", "24 80")
			sel := procTag("term-" + codec.name)
			if _, err := c.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: sel, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 100, Rows: 30}}})); err != nil {
				t.Fatal(err)
			}
			_, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("x")}}}))
			wantCode(t, err, connect.CodeInternal, "error writing to stdin: tty assigned to process — input should be written to the pty, not the stdin")
			_, err = c.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel}))
			wantCode(t, err, connect.CodeUnknown, "error closing stdin: cannot close stdin for PTY process — send Ctrl+D (0x04) instead")
			if _, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte("hello\r")}}})); err != nil {
				t.Fatal(err)
			}
			ev := r.drain()
			wantEnd(t, ev, 0, true, "exit status 0")
			out := strings.ReplaceAll(ev.pty(), "\r\n", "\n")
			if !strings.HasPrefix(out, "24 80\nhello\n30 100\ngot:hello\n/dev/pts/") || ev.stdout() != "" || ev.stderr() != "" {
				t.Fatalf("terminal output %q", ev.pty())
			}
			// Without a size the terminal is 0 × 0.
			ev = procRun(t, c, procReq(&pb.StartRequest{Process: procSh("stty size"), Pty: &pb.PTY{}}))
			if strings.TrimSpace(ev.pty()) != "0 0" {
				t.Fatalf("no size: %q", ev.pty())
			}
			// Ctrl-D ends an interactive shell's input.
			r = procStart(t, ctx, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "cat"}, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 20, Rows: 5}}}))
			if _, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: procPID(r.ev.pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte("abc\n\x04")}}})); err != nil {
				t.Fatal(err)
			}
			wantEnd(t, r.drain(), 0, true, "exit status 0")
		})
	}
}

func TestProcess_SendSignalInvalid(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for _, codec := range procCodecs {
		c := e.Process(codec.opts...)
		ctx := procCtx(t)
		r := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "sleep", Args: []string{"1000"}}}))
		for sig, msg := range map[pb.Signal]string{
			pb.Signal_SIGNAL_UNSPECIFIED: "invalid signal: SIGNAL_UNSPECIFIED",
			pb.Signal(5):                 "invalid signal: 5",
		} {
			_, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: procPID(r.ev.pid), Signal: sig}))
			wantCode(t, err, connect.CodeUnimplemented, msg)
		}
		if _, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: procPID(r.ev.pid), Signal: pb.Signal_SIGNAL_SIGTERM})); err != nil {
			t.Fatal(err)
		}
		wantEnd(t, r.drain(), -1, false, "signal: terminated")
		// A finished process is not found (the E2B SDK's kill() then
		// returns false).
		_, err := c.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: procPID(r.ev.pid), Signal: pb.Signal_SIGNAL_SIGKILL}))
		wantCode(t, err, connect.CodeNotFound, "process with pid "+strconv.FormatUint(uint64(r.ev.pid), 10)+" not found")
	}
}

func TestProcess_StartErrors(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, codec := range procCodecs {
		t.Run(codec.name, func(t *testing.T) {
			c := e.Process(codec.opts...)
			start := func(req *connect.Request[pb.StartRequest]) error {
				s, err := c.Start(procCtx(t), req)
				if err != nil {
					return err
				}
				ev := newProcReader[pb.StartResponse, *pb.StartResponse](s).drain()
				if len(ev.kinds) != 0 {
					t.Fatalf("events before the error: %v", ev.kinds)
				}
				return ev.err
			}
			cwd := func(p string) *pb.ProcessConfig { return &pb.ProcessConfig{Cmd: "true", Cwd: &p} }
			wantCode(t, start(procReq(&pb.StartRequest{Process: cwd("/no/such/dir")})), connect.CodeInvalidArgument, "cwd '/no/such/dir' does not exist")
			wantCode(t, start(procReq(&pb.StartRequest{Process: cwd("~bob/x")})), connect.CodeInvalidArgument,
				"failed to expand path '~bob/x' for user 'root': cannot expand user-specific home dir")
			wantCode(t, start(procReq(&pb.StartRequest{Process: cwd(file)})), connect.CodeInvalidArgument,
				"error starting process 'true': fork/exec /bin/sh: not a directory")
			wantCode(t, start(procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true", Args: []string{"a", "b"}, Cwd: &file}, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 7, Rows: 3}}})),
				connect.CodeInvalidArgument, "error starting pty with command 'true a b' in dir '"+file+"' with '7' cols and '3' rows: fork/exec /bin/sh: not a directory")
			wantCode(t, start(procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true"}}, "Authorization", basicAuth("no-such-user-42"))),
				connect.CodeUnauthenticated, "invalid username: 'no-such-user-42'")
		})
	}
	// A malformed deadline (raw: the Go client writes its own header).
	for _, v := range []string{"soon", "-1", "12345678901"} {
		resp, body := do(t, "POST", e.URL+"/process.Process/Start", envelope(map[string]any{"process": map[string]any{"cmd": "true"}}),
			map[string]string{"Content-Type": "application/connect+json", "Connect-Timeout-Ms": v})
		if _, _, trailer := readEnvelopes(t, body); resp.StatusCode != 200 || !strings.Contains(trailer, `"code":"invalid_argument"`) {
			t.Fatalf("deadline %q: %d %q", v, resp.StatusCode, body)
		}
	}
	// The default user is looked up per request.
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"defaultUser": "no-such-default-user"}, nil); resp.StatusCode != 204 {
		t.Fatalf("/init %d", resp.StatusCode)
	}
	s, err := e.Process().Start(procCtx(t), procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true"}}))
	if err == nil {
		err = newProcReader[pb.StartResponse, *pb.StartResponse](s).drain().err
	}
	wantCode(t, err, connect.CodeUnauthenticated, "invalid default user: 'no-such-default-user'")
}

func TestProcess_Keepalives(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for _, codec := range procCodecs {
		t.Run(codec.name, func(t *testing.T) {
			t.Parallel() // mostly waiting for keepalives
			c := e.Process(codec.opts...)
			ctx := procCtx(t)
			r := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: procSh("sleep 2.5; echo x; sleep 1.5")}, "Keepalive-Ping-Interval", "1"))
			cr := procConnect(t, ctx, c, procReq(&pb.ConnectRequest{Process: procPID(r.ev.pid)}, "Keepalive-Ping-Interval", "1"))
			for _, ev := range []*procEvents{r.drain(), cr.drain()} {
				wantEnd(t, ev, 0, true, "exit status 0")
				kinds := strings.Join(ev.kinds, " ")
				// ~2 before the data, ~1 after it (the timer restarts after data).
				if ev.keepalives < 2 || !strings.Contains(kinds, "keepalive keepalive data") || !strings.Contains(kinds, "data keepalive") {
					t.Fatalf("events %s", kinds)
				}
			}
			// Without the header the interval is 90 s: none in a short run.
			ev := procRun(t, c, procReq(&pb.StartRequest{Process: procSh("sleep 1.2")}))
			if ev.keepalives != 0 {
				t.Fatalf("keepalives without the header: %v", ev.kinds)
			}
		})
	}
}

// Nothing but stdio reaches a child: everything envd opens is
// close-on-exec (spec rpc.md §4.2 step 9).
func TestProcess_OnlyStdioInherited(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := e.Process()
	// Keep other streams and processes open meanwhile.
	procStart(t, procCtx(t), c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "sleep", Args: []string{"1000"}}}))
	for _, pty := range []*pb.PTY{nil, {Size: &pb.PTY_Size{Cols: 80, Rows: 24}}} {
		// ls opens the directory itself as fd 3.
		ev := procRun(t, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "ls", Args: []string{"/proc/self/fd"}}, Pty: pty}))
		wantEnd(t, ev, 0, true, "exit status 0")
		if got := strings.Fields(ev.stdout() + ev.pty()); strings.Join(got, " ") != "0 1 2 3" {
			t.Fatalf("pty %v: descriptors %v", pty != nil, got)
		}
	}
}

// The streams work over h2c with the gRPC and gRPC-Web protocols too.
func TestProcess_GRPCAndGRPCWeb(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: &http.Transport{Protocols: protocols}}
	for name, opt := range map[string]connect.ClientOption{"grpc": connect.WithGRPC(), "grpcweb": connect.WithGRPCWeb()} {
		t.Run(name, func(t *testing.T) {
			c := processconnect.NewProcessClient(h2, e.URL, opt)
			ev := procRun(t, c, procReq(&pb.StartRequest{Process: procSh("echo over-h2; exit 5")}))
			wantEnd(t, ev, 5, true, "exit status 5")
			if ev.stdout() != "over-h2\n" {
				t.Fatalf("stdout %q", ev.stdout())
			}
			_, err := c.SendSignal(procCtx(t), connect.NewRequest(&pb.SendSignalRequest{Process: procPID(ev.pid), Signal: pb.Signal_SIGNAL_SIGKILL}))
			wantCode(t, err, connect.CodeNotFound, "process with pid "+strconv.FormatUint(uint64(ev.pid), 10)+" not found")
		})
	}
}
