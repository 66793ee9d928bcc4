package e2e

// Conformance with Wrenn's host agent (host-expectations.md §1): a client
// that behaves exactly like the host — its two HTTP clients and their
// settings, default Connect-Go clients (binary codec, gzip advertised,
// Connect-Timeout-Ms from context deadlines), the request shapes it sends
// and the statuses it insists on — drives the real binary through the
// host's sequences: create, exec, background processes, PTY sessions, file
// transfer, filesystem RPCs, metrics polling, pause and resume.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/gen/filesystem/filesystemconnect"
	"github.com/envd/envd/gen/process"
	"github.com/envd/envd/gen/process/processconnect"
	"github.com/envd/envd/internal/envdtest"
)

// wrennHost is the host agent's view of one sandbox.
type wrennHost struct {
	t    *testing.T
	base string

	unaryTransport, streamTransport *http.Transport
	// unary: /health, /init, /snapshot/prepare, WriteFile, ReadFile,
	// /metrics and every filesystem RPC; overall timeout 2 min.
	unary *http.Client
	// stream: every process RPC and the streamed file transfers; no
	// overall timeout.
	stream *http.Client

	proc processconnect.ProcessClient       // on the streaming client
	fs   filesystemconnect.FilesystemClient // on the unary client
}

// hostTransport has the settings of both host clients: dial 10 s, TCP
// keep-alive 30 s, 10 idle connections per host, idle 90 s, response
// headers within 30 s of the request being sent. Plain HTTP/1.1.
func hostTransport() *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost:   10,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	}
}

func newWrennHost(t *testing.T, base string) *wrennHost {
	h := &wrennHost{t: t, base: base, unaryTransport: hostTransport(), streamTransport: hostTransport()}
	h.unary = &http.Client{Transport: validated(h.unaryTransport), Timeout: 2 * time.Minute}
	h.stream = &http.Client{Transport: validated(h.streamTransport)}
	// Default Connect-Go clients: Connect protocol, binary codec, gzip
	// accepted, Connect-Timeout-Ms from the context deadline.
	h.proc = processconnect.NewProcessClient(h.stream, base)
	h.fs = filesystemconnect.NewFilesystemClient(h.unary, base)
	t.Cleanup(func() {
		h.unaryTransport.CloseIdleConnections()
		h.streamTransport.CloseIdleConnections()
	})
	return h
}

// waitReady polls GET /health every 100 ms until it answers 200, within 30 s
// (the host's EnvdTimeout); the body is not read.
func (h *wrennHost) waitReady() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.base+"/health", nil)
		resp, err := h.unary.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				if resp.ProtoMajor != 1 || resp.ProtoMinor != 1 {
					h.t.Fatalf("host speaks HTTP/1.1, envd answered %s", resp.Proto)
				}
				return
			}
		}
		select {
		case <-ctx.Done():
			h.t.Fatalf("envd not ready within 30 s (last error %v)", err)
		case <-tick.C:
		}
	}
}

// version fetches GET /health and decodes {"version"}; anything but 200
// with a decodable body is an error for the host.
func (h *wrennHost) version() (string, error) {
	resp, err := h.unary.Get(h.base + "/health")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("health status %d", resp.StatusCode)
	}
	var v struct {
		Version string `json:"version"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return "", fmt.Errorf("decode health: %w", err)
	}
	return v.Version, nil
}

// initEnvd posts /init: with body nil, no body and no Content-Type at all;
// otherwise JSON. The host's own budget is 30 s. It returns the status.
func (h *wrennHost) initEnvd(body map[string]any) int {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var req *http.Request
	if body == nil {
		req, _ = http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/init", nil)
	} else {
		b, _ := json.Marshal(body)
		req, _ = http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/init", bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := h.unary.Do(req)
	if err != nil {
		h.t.Fatalf("POST /init: %v", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// prepareSnapshot posts /snapshot/prepare (no body, no Content-Type) with
// the host's 3 s timeout, right after closing its idle connections.
func (h *wrennHost) prepareSnapshot() int {
	h.t.Helper()
	h.unaryTransport.CloseIdleConnections()
	h.streamTransport.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/snapshot/prepare", nil)
	resp, err := h.unary.Do(req)
	if err != nil {
		h.t.Fatalf("POST /snapshot/prepare within 3 s: %v", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// metrics reads GET /metrics and returns mem_used, which must be an integer.
func (h *wrennHost) metrics() (int64, error) {
	resp, err := h.unary.Get(h.base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("metrics status %d", resp.StatusCode)
	}
	var m struct {
		MemUsed *json.Number `json:"mem_used"`
	}
	dec := json.NewDecoder(resp.Body)
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return 0, err
	}
	if m.MemUsed == nil {
		return 0, errors.New("mem_used missing")
	}
	return m.MemUsed.Int64()
}

func hostFilesURL(base, path string) string {
	return base + "/files?" + url.Values{"path": {path}, "username": {"root"}}.Encode()
}

// writeFile is the host's WriteFile: one multipart part, form name "file",
// filename "upload", known Content-Length, username=root; only 200 is
// success. It returns the decoded body.
func (h *wrennHost) writeFile(path string, data []byte) ([]map[string]any, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	part, err := mw.CreateFormFile("file", "upload")
	if err != nil {
		return nil, err
	}
	_, _ = part.Write(data)
	_ = mw.Close()
	req, _ := http.NewRequest(http.MethodPost, hostFilesURL(h.base, path), &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	if req.ContentLength != int64(body.Len()) {
		return nil, errors.New("request without a known Content-Length")
	}
	resp, err := h.unary.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("write file: status %d: %s", resp.StatusCode, b)
	}
	var entries []map[string]any
	if err := json.Unmarshal(b, &entries); err != nil {
		return nil, fmt.Errorf("write file: body %q: %w", b, err)
	}
	return entries, nil
}

// writeFileStream is the host's streamed upload: the same part layout
// produced through a pipe, so the body is chunked with no Content-Length;
// 200 or 204 is success.
func (h *wrennHost) writeFileStream(path string, src io.Reader) (int, error) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		part, err := mw.CreateFormFile("file", "upload")
		if err == nil {
			_, err = io.Copy(part, src)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	req, _ := http.NewRequest(http.MethodPost, hostFilesURL(h.base, path), pr)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	if req.ContentLength != 0 && req.ContentLength != -1 {
		return 0, errors.New("streamed upload must be chunked")
	}
	resp, err := h.stream.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent {
		return resp.StatusCode, fmt.Errorf("streamed write: status %d: %s", resp.StatusCode, b)
	}
	if len(resp.TransferEncoding) > 0 && resp.TransferEncoding[0] != "chunked" {
		return resp.StatusCode, fmt.Errorf("unexpected transfer encoding %v", resp.TransferEncoding)
	}
	return resp.StatusCode, nil
}

// readFile is the host's ReadFile on the unary client. Go's transport adds
// Accept-Encoding: gzip by itself and gunzips transparently; gzipped
// reports whether that happened. Any status but 200 is an error carrying
// the body text.
func (h *wrennHost) readFile(path string) (data []byte, gzipped bool, err error) {
	resp, err := h.unary.Get(hostFilesURL(h.base, path))
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, false, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, false, fmt.Errorf("read file: status %d: %s", resp.StatusCode, b)
	}
	return b, resp.Uncompressed, nil
}

// readFileStream relays the download in 64 KiB chunks (streaming client).
func (h *wrennHost) readFileStream(path string, dst io.Writer) error {
	resp, err := h.stream.Get(hostFilesURL(h.base, path))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("read file stream: status %d: %s", resp.StatusCode, b)
	}
	buf := make([]byte, 64<<10)
	_, err = io.CopyBuffer(dst, resp.Body, buf)
	return err
}

type hostExecResult struct {
	pid            uint32
	stdout, stderr []byte
	end            *process.ProcessEvent_EndEvent
}

// exec is the host's Exec: Start{process{cmd, args}, stdin:false} with no
// envs, cwd, tag or pty, under a context deadline (30 s by default), which
// Connect-Go sends as Connect-Timeout-Ms. It collects stdout and stderr and
// requires the stream to finish normally after the end event.
func (h *wrennHost) exec(timeout time.Duration, cmd string, args ...string) (hostExecResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stream, err := h.proc.Start(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: cmd, Args: args},
		Stdin:   hostPtr(false),
	}))
	if err != nil {
		return hostExecResult{}, err
	}
	defer stream.Close()
	var res hostExecResult
	first := true
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if first && ev.GetStart() == nil {
			return res, fmt.Errorf("first event is %T, not start", ev.GetEvent())
		}
		first = false
		switch e := ev.GetEvent().(type) {
		case *process.ProcessEvent_Start:
			res.pid = e.Start.GetPid()
		case *process.ProcessEvent_Data:
			res.stdout = append(res.stdout, e.Data.GetStdout()...)
			res.stderr = append(res.stderr, e.Data.GetStderr()...)
		case *process.ProcessEvent_End:
			res.end = e.End
		}
	}
	if err := stream.Err(); err != nil {
		return res, err
	}
	if res.end == nil {
		return res, errors.New("stream finished without an end event")
	}
	return res, nil
}

// startBackground is the host's background start: it reads events until
// start, takes the pid and closes the stream, cancelling the request.
func (h *wrennHost) startBackground(cfg *process.ProcessConfig, tag string) (uint32, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := h.proc.Start(ctx, connect.NewRequest(&process.StartRequest{Process: cfg, Tag: &tag, Stdin: hostPtr(false)}))
	if err != nil {
		return 0, err
	}
	defer stream.Close()
	for stream.Receive() {
		if s := stream.Msg().GetEvent().GetStart(); s != nil {
			return s.GetPid(), nil
		}
	}
	if err := stream.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("stream ended before the start event")
}

func hostTag(tag string) *process.ProcessSelector {
	return &process.ProcessSelector{Selector: &process.ProcessSelector_Tag{Tag: tag}}
}

// connectByTag is the host's Connect: start (ignored), output, end.
func (h *wrennHost) connectByTag(ctx context.Context, tag string, onStart func()) (hostExecResult, error) {
	stream, err := h.proc.Connect(ctx, connect.NewRequest(&process.ConnectRequest{Process: hostTag(tag)}))
	if err != nil {
		return hostExecResult{}, err
	}
	defer stream.Close()
	var res hostExecResult
	for stream.Receive() {
		switch e := stream.Msg().GetEvent().GetEvent().(type) {
		case *process.ProcessEvent_Start:
			res.pid = e.Start.GetPid()
			if onStart != nil {
				onStart()
				onStart = nil
			}
		case *process.ProcessEvent_Data:
			res.stdout = append(res.stdout, e.Data.GetStdout()...)
			res.stderr = append(res.stderr, e.Data.GetStderr()...)
			res.stdout = append(res.stdout, e.Data.GetPty()...)
		case *process.ProcessEvent_End:
			res.end = e.End
		}
	}
	return res, stream.Err()
}

func (h *wrennHost) signal(tag string, sig process.Signal) error {
	_, err := h.proc.SendSignal(context.Background(), connect.NewRequest(&process.SendSignalRequest{Process: hostTag(tag), Signal: sig}))
	return err
}

func (h *wrennHost) list() []*process.ProcessInfo {
	h.t.Helper()
	resp, err := h.proc.List(context.Background(), connect.NewRequest(&process.ListRequest{}))
	if err != nil {
		h.t.Fatalf("List: %v", err)
	}
	return resp.Msg.GetProcesses()
}

func hostFindTag(procs []*process.ProcessInfo, tag string) *process.ProcessInfo {
	for _, p := range procs {
		if p.Tag != nil && p.GetTag() == tag {
			return p
		}
	}
	return nil
}

func hostPtr[T any](v T) *T { return &v }

// hostStreamOutput collects a PTY stream's output in the background.
type hostStreamOutput struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	end     *process.ProcessEvent_EndEvent
	err     error
	done    chan struct{}
	started chan struct{} // closed at the first event
	first   string
}

// waitStarted waits for the stream's first event, i.e. until envd has
// attached the subscriber.
func (o *hostStreamOutput) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case <-o.started:
	case <-o.done:
		t.Fatalf("stream ended before its first event: %v", o.err)
	case <-time.After(15 * time.Second):
		t.Fatal("no first event within 15 s")
	}
}

func (o *hostStreamOutput) text() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

func (o *hostStreamOutput) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(o.text(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("PTY output never contained %q; got %q", s, o.text())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type hostEventStream interface {
	Receive() bool
	Err() error
	Close() error
}

func hostCollect[T interface{ GetEvent() *process.ProcessEvent }](stream interface {
	hostEventStream
	Msg() T
}) *hostStreamOutput {
	o := &hostStreamOutput{done: make(chan struct{}), started: make(chan struct{})}
	go func() {
		defer close(o.done)
		first := true
		for stream.Receive() {
			ev := stream.Msg().GetEvent()
			o.mu.Lock()
			if first {
				o.first = fmt.Sprintf("%T", ev.GetEvent())
				first = false
				close(o.started)
			}
			if d := ev.GetData(); d != nil {
				// The host takes pty output, and accepts stdout/stderr too.
				o.buf.Write(d.GetPty())
				o.buf.Write(d.GetStdout())
				o.buf.Write(d.GetStderr())
			}
			if e := ev.GetEnd(); e != nil {
				o.end = e
			}
			o.mu.Unlock()
		}
		o.mu.Lock()
		o.err = stream.Err()
		o.mu.Unlock()
	}()
	return o
}

func startWrennHost(t *testing.T, opts envdtest.Options) (*envdtest.Envd, *wrennHost) {
	t.Helper()
	e := envdtest.Start(t, opts)
	h := newWrennHost(t, e.URL)
	h.waitReady()
	return e, h
}

// ---------------------------------------------------------------------------

func TestWrennHost_CreateSequence_ReadyVersionInit(t *testing.T) {
	u := envdtest.EnsureUser(t, "wrenntpl")
	_, h := startWrennHost(t, envdtest.Options{})

	v, err := h.version()
	if err != nil {
		t.Fatalf("version fetch: %v", err)
	}
	if v != envdtest.Version(t) {
		t.Fatalf("version %q, want %q", v, envdtest.Version(t))
	}

	// Template restore: /init with no body and no Content-Type.
	if st := h.initEnvd(nil); st != http.StatusNoContent {
		t.Fatalf("/init without body: %d, want 204 exactly", st)
	}
	// Template defaults after create.
	if st := h.initEnvd(map[string]any{"defaultUser": u.Name, "envVars": map[string]string{"TPL_A": "1", "TPL_B": "two words"}}); st != http.StatusNoContent {
		t.Fatalf("/init with defaults: %d, want 204 exactly", st)
	}
	res, err := h.exec(30*time.Second, "/bin/sh", "-c", `id -un; echo "$TPL_A|$TPL_B|$HOME"; pwd`)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%s\n1|two words|%s\n%s\n", u.Name, u.Home, u.Home); string(res.stdout) != want || res.end.GetExitCode() != 0 {
		t.Fatalf("exec after /init defaults: %q (exit %d), want %q", res.stdout, res.end.GetExitCode(), want)
	}
	// Either key may be absent.
	if st := h.initEnvd(map[string]any{"envVars": map[string]string{"TPL_C": "3"}}); st != http.StatusNoContent {
		t.Fatalf("/init envVars only: %d", st)
	}
	if st := h.initEnvd(map[string]any{"defaultUser": "root"}); st != http.StatusNoContent {
		t.Fatalf("/init defaultUser only: %d", st)
	}
	res, err = h.exec(30*time.Second, "/bin/sh", "-c", `id -un; echo "${TPL_A:-unset}|$TPL_C"`)
	if err != nil {
		t.Fatal(err)
	}
	if string(res.stdout) != "root\nunset|3\n" {
		t.Fatalf("env vars must be replaced and the user switched: %q", res.stdout)
	}
	if st := h.initEnvd(map[string]any{}); st != http.StatusNoContent {
		t.Fatalf("/init {}: %d", st)
	}
}

func TestWrennHost_Exec(t *testing.T) {
	_, h := startWrennHost(t, envdtest.Options{})

	res, err := h.exec(30*time.Second, "/bin/sh", "-c", "echo out; echo err >&2; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	if res.pid == 0 || string(res.stdout) != "out\n" || string(res.stderr) != "err\n" {
		t.Fatalf("exec output: pid %d stdout %q stderr %q", res.pid, res.stdout, res.stderr)
	}
	if res.end.GetExitCode() != 3 || !res.end.GetExited() || res.end.GetStatus() != "exit status 3" || res.end.GetError() != "exit status 3" {
		t.Fatalf("end event %v", res.end)
	}

	// The host execs without stdin: the process reads end of file at once.
	res, err = h.exec(30*time.Second, "/bin/cat")
	if err != nil || res.end.GetExitCode() != 0 || len(res.stdout) != 0 {
		t.Fatalf("cat with stdin:false: %v %v %q", err, res.end, res.stdout)
	}

	// What a template build runs, and the sync before flattening.
	res, err = h.exec(30*time.Second, "/bin/sh", "-c", "set -e\nmkdir -p /tmp/wrenn-build\necho built > /tmp/wrenn-build/out\ncat /tmp/wrenn-build/out")
	if err != nil || string(res.stdout) != "built\n" || res.end.GetExitCode() != 0 {
		t.Fatalf("build script: %v %q %v", err, res.stdout, res.end)
	}
	if res, err = h.exec(10*time.Second, "/bin/sync"); err != nil || res.end.GetExitCode() != 0 {
		t.Fatalf("sync: %v %v", err, res.end)
	}

	// Large output through the binary codec with gzip advertised.
	res, err = h.exec(30*time.Second, "/bin/sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' 'x'")
	if err != nil || len(res.stdout) != 5000000 || strings.Trim(string(res.stdout), "x") != "" {
		t.Fatalf("large output: %v, %d bytes", err, len(res.stdout))
	}

	// Exec (streamed): no deadline, events forwarded as they arrive. The
	// second line is only printed once the first one has reached the host,
	// so buffering until the end would hang (cut off after 30 s).
	gate := filepath.Join(t.TempDir(), "gate")
	sctx, scancel := context.WithCancel(context.Background())
	defer scancel()
	stop := time.AfterFunc(30*time.Second, scancel)
	defer stop.Stop()
	stream, err := h.proc.Start(sctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "echo first; while [ ! -e " + gate + " ]; do sleep 0.02; done; echo second"}},
		Stdin:   hostPtr(false),
	}))
	if err != nil {
		t.Fatal(err)
	}
	var streamed []byte
	var ended bool
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if d := ev.GetData(); d != nil {
			streamed = append(streamed, d.GetStdout()...)
			if string(streamed) == "first\n" {
				if err := os.WriteFile(gate, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		if ev.GetEnd() != nil {
			ended = true
		}
	}
	if err := stream.Err(); err != nil || string(streamed) != "first\nsecond\n" || !ended {
		t.Fatalf("streamed exec: %v %q ended %v", err, streamed, ended)
	}

	// The context deadline reaches envd as Connect-Timeout-Ms and ends the
	// process there.
	start := time.Now()
	res, err = h.exec(time.Second, "/bin/sh", "-c", "echo started; sleep 60")
	if connect.CodeOf(err) != connect.CodeDeadlineExceeded {
		t.Fatalf("exec past its deadline: %v (%v)", err, res.end)
	}
	if time.Since(start) > 20*time.Second {
		t.Fatalf("deadline honoured only after %v", time.Since(start))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		alive := false
		for _, p := range h.list() {
			if p.GetPid() == res.pid {
				alive = true
			}
		}
		if !alive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still listed after its deadline", res.pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWrennHost_BackgroundProcess_ConnectListSignal(t *testing.T) {
	_, h := startWrennHost(t, envdtest.Options{})
	dir := t.TempDir()
	gate := filepath.Join(dir, "go")

	cfg := &process.ProcessConfig{
		Cmd:  "/bin/bash",
		Args: []string{"-c", fmt.Sprintf(`while [ ! -e %s ]; do sleep 0.05; done; echo "running in $PWD with $BG_VAR"; echo finishing; echo warn >&2; exit 4`, gate)},
		Envs: map[string]string{"BG_VAR": "bg-value"},
		Cwd:  hostPtr(dir),
	}
	pid, err := h.startBackground(cfg, "proc-bg1")
	if err != nil || pid == 0 {
		t.Fatalf("background start: pid %d, %v", pid, err)
	}
	// The stream is gone; the process must keep running and be listed.
	p := hostFindTag(h.list(), "proc-bg1")
	if p == nil || p.GetPid() != pid {
		t.Fatalf("background process not listed by tag: %v", h.list())
	}
	if p.GetConfig().GetCmd() != "/bin/bash" || len(p.GetConfig().GetArgs()) != 2 || p.GetConfig().GetArgs()[0] != "-c" {
		t.Fatalf("listed config %v", p.GetConfig())
	}

	// Connect by tag: start, output, end. The process writes only once the
	// host is attached.
	type result struct {
		res hostExecResult
		err error
	}
	attached := make(chan struct{})
	got := make(chan result, 1)
	go func() {
		r, err := h.connectByTag(context.Background(), "proc-bg1", func() { close(attached) })
		got <- result{r, err}
	}()
	select {
	case <-attached:
	case r := <-got:
		t.Fatalf("Connect by tag ended before its start event: %v", r.err)
	case <-time.After(15 * time.Second):
		t.Fatal("Connect by tag sent no start event")
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("Connect by tag did not finish")
	}
	if r.err != nil {
		t.Fatalf("Connect by tag: %v", r.err)
	}
	if r.res.pid != pid || r.res.end == nil || r.res.end.GetExitCode() != 4 {
		t.Fatalf("Connect result pid %d end %v", r.res.pid, r.res.end)
	}
	if want := fmt.Sprintf("running in %s with bg-value\nfinishing\n", dir); string(r.res.stdout) != want || string(r.res.stderr) != "warn\n" {
		t.Fatalf("Connect output %q / %q, want %q", r.res.stdout, r.res.stderr, want)
	}

	// SendSignal by tag: SIGTERM and SIGKILL.
	for _, tc := range []struct {
		tag    string
		sig    process.Signal
		status string
	}{
		{"proc-term", process.Signal_SIGNAL_SIGTERM, "signal: terminated"},
		{"proc-kill", process.Signal_SIGNAL_SIGKILL, "signal: killed"},
	} {
		if _, err := h.startBackground(&process.ProcessConfig{Cmd: "/bin/sleep", Args: []string{"300"}}, tc.tag); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		got := make(chan result, 1)
		attached := make(chan struct{})
		go func() {
			r, err := h.connectByTag(ctx, tc.tag, func() { close(attached) })
			got <- result{r, err}
		}()
		<-attached
		if err := h.signal(tc.tag, tc.sig); err != nil {
			t.Fatalf("SendSignal %s by tag: %v", tc.sig, err)
		}
		r := <-got
		cancel()
		if r.err != nil || r.res.end == nil || r.res.end.GetExitCode() != -1 || r.res.end.GetExited() || r.res.end.GetStatus() != tc.status {
			t.Fatalf("%s: %v %v", tc.tag, r.err, r.res.end)
		}
		if hostFindTag(h.list(), tc.tag) != nil {
			t.Fatalf("%s still listed after its end", tc.tag)
		}
	}

	// Without a known tag the host selects by pid.
	pidGate := filepath.Join(dir, "pid-go")
	pidSleep, err := h.startBackground(&process.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "while [ ! -e " + pidGate + " ]; do sleep 0.05; done; echo by-pid; exec sleep 300"}}, "proc-bypid")
	if err != nil {
		t.Fatal(err)
	}
	byPid := &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pidSleep}}
	pidCtx, pidCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer pidCancel()
	pidStream, err := h.proc.Connect(pidCtx, connect.NewRequest(&process.ConnectRequest{Process: byPid}))
	if err != nil {
		t.Fatal(err)
	}
	pidOut := hostCollect[*process.ConnectResponse](pidStream)
	pidOut.waitStarted(t)
	if err := os.WriteFile(pidGate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	pidOut.waitFor(t, "by-pid")
	if _, err := h.proc.SendSignal(context.Background(), connect.NewRequest(&process.SendSignalRequest{Process: byPid, Signal: process.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatalf("SendSignal by pid: %v", err)
	}
	<-pidOut.done
	if pidOut.err != nil || pidOut.end == nil || pidOut.end.GetStatus() != "signal: killed" {
		t.Fatalf("Connect by pid after kill: %v %v", pidOut.err, pidOut.end)
	}

	// The control plane normally sets a tag; an empty one is still a tag.
	if _, err := h.startBackground(&process.ProcessConfig{Cmd: "/bin/sleep", Args: []string{"300"}}, ""); err != nil {
		t.Fatal(err)
	}
	if p := hostFindTag(h.list(), ""); p == nil {
		t.Fatal("process with empty tag not listed with tag \"\"")
	}
	if err := h.signal("", process.Signal_SIGNAL_SIGKILL); err != nil {
		t.Fatalf("SendSignal by empty tag: %v", err)
	}
	// Errors are returned to the caller: an unknown tag is not_found.
	if err := h.signal("proc-none", process.Signal_SIGNAL_SIGKILL); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("signal to unknown tag: %v", err)
	}
}

func TestWrennHost_PTYSession(t *testing.T) {
	_, h := startWrennHost(t, envdtest.Options{})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := h.proc.Start(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-i", "-l"}, Envs: map[string]string{"TERM": "xterm-256color"}},
		Pty:     &process.PTY{Size: &process.PTY_Size{Cols: 80, Rows: 24}},
		Tag:     hostPtr("pty-term1"),
		Stdin:   hostPtr(true),
	}))
	if err != nil {
		t.Fatal(err)
	}
	out := hostCollect[*process.StartResponse](stream)
	out.waitStarted(t)
	input := func(s string) {
		t.Helper()
		_, err := h.proc.SendInput(context.Background(), connect.NewRequest(&process.SendInputRequest{
			Process: hostTag("pty-term1"),
			Input:   &process.ProcessInput{Input: &process.ProcessInput_Pty{Pty: []byte(s)}},
		}))
		if err != nil {
			t.Fatalf("SendInput by tag: %v", err)
		}
	}
	input("echo \"size=$(stty size) sum=$((40+2))\"\n")
	out.waitFor(t, "size=24 80 sum=42")
	if out.first != "*process.ProcessEvent_Start" {
		t.Fatalf("first PTY event %s, want start", out.first)
	}

	if _, err := h.proc.Update(context.Background(), connect.NewRequest(&process.UpdateRequest{
		Process: hostTag("pty-term1"),
		Pty:     &process.PTY{Size: &process.PTY_Size{Cols: 120, Rows: 40}},
	})); err != nil {
		t.Fatalf("Update (resize) by tag: %v", err)
	}
	input("echo \"now=$(stty size)\"\n")
	out.waitFor(t, "now=40 120")

	// The host's terminal websocket goes away; later it reconnects by tag.
	cancel()
	<-out.done
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	cstream, err := h.proc.Connect(ctx2, connect.NewRequest(&process.ConnectRequest{Process: hostTag("pty-term1")}))
	if err != nil {
		t.Fatal(err)
	}
	again := hostCollect[*process.ConnectResponse](cstream)
	again.waitStarted(t)
	input("echo \"back=$((1+1))\"\n")
	again.waitFor(t, "back=2")
	if again.first != "*process.ProcessEvent_Start" {
		t.Fatalf("first Connect event %s, want start", again.first)
	}

	if err := h.signal("pty-term1", process.Signal_SIGNAL_SIGKILL); err != nil {
		t.Fatalf("PTY kill by tag: %v", err)
	}
	select {
	case <-again.done:
	case <-time.After(15 * time.Second):
		t.Fatal("PTY stream did not end after kill")
	}
	if again.err != nil || again.end == nil || again.end.GetExitCode() != -1 || again.end.GetError() != "signal: killed" {
		t.Fatalf("PTY end: %v %v", again.err, again.end)
	}
}

func TestWrennHost_FileTransfer(t *testing.T) {
	_, h := startWrennHost(t, envdtest.Options{})
	dir := t.TempDir()

	// WriteFile: 200 exactly, JSON array body.
	small := []byte("hello from the host\n")
	target := filepath.Join(dir, "nested", "small.txt")
	entries, err := h.writeFile(target, small)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0]["path"] != target || entries[0]["name"] != "small.txt" || entries[0]["type"] != "file" {
		t.Fatalf("upload response %v", entries)
	}
	st, err := os.Stat(target)
	if err != nil {
		t.Fatal(err)
	}
	if owner := hostFileOwner(st); owner != 0 {
		t.Fatalf("username=root upload owned by uid %d", owner)
	}

	// ReadFile: the transport's own gzip negotiation is the production path.
	text := bytes.Repeat([]byte("compressible host data\n"), 20000)
	if _, err := h.writeFile(filepath.Join(dir, "big.txt"), text); err != nil {
		t.Fatal(err)
	}
	got, gzipped, err := h.readFile(filepath.Join(dir, "big.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, text) || !gzipped {
		t.Fatalf("download: %d bytes (want %d), gzip-encoded %v", len(got), len(text), gzipped)
	}
	if got, _, err = h.readFile(target); err != nil || !bytes.Equal(got, small) {
		t.Fatalf("read back small file: %v %q", err, got)
	}
	empty := filepath.Join(dir, "empty")
	if _, err := h.writeFile(empty, nil); err != nil {
		t.Fatal(err)
	}
	if got, _, err = h.readFile(empty); err != nil || len(got) != 0 {
		t.Fatalf("empty file: %v %q", err, got)
	}
	// Any other status is an error carrying the body text.
	if _, _, err := h.readFile(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "status 404") || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing file: %v", err)
	}

	// Streamed upload (chunked, through a pipe) and streamed download.
	const size = 48 << 20
	src := io.LimitReader(newHostPattern(), size)
	hasher := sha256.New()
	streamed := filepath.Join(dir, "streamed.bin")
	if _, err := h.writeFileStream(streamed, io.TeeReader(src, hasher)); err != nil {
		t.Fatal(err)
	}
	want := hasher.Sum(nil)
	down := sha256.New()
	n := &hostCounter{w: down}
	if err := h.readFileStream(streamed, n); err != nil {
		t.Fatal(err)
	}
	if n.n != size || !bytes.Equal(down.Sum(nil), want) {
		t.Fatalf("streamed round trip: %d bytes, digest match %v", n.n, bytes.Equal(down.Sum(nil), want))
	}
	// An overwrite through the same path replaces the content.
	if _, err := h.writeFile(streamed, small); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := h.readFile(streamed); !bytes.Equal(got, small) {
		t.Fatal("overwrite did not replace the content")
	}
}

func TestWrennHost_FilesystemRPCs(t *testing.T) {
	_, h := startWrennHost(t, envdtest.Options{})
	base := filepath.Join(t.TempDir(), "fsrpc")
	ctx := context.Background()

	mk, err := h.fs.MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: base + "/a/b"}))
	if err != nil {
		t.Fatalf("MakeDir: %v", err)
	}
	if e := mk.Msg.GetEntry(); e.GetName() != "b" || e.GetPath() != base+"/a/b" || e.GetType() != filesystem.FileType_FILE_TYPE_DIRECTORY {
		t.Fatalf("MakeDir entry %v", e)
	}
	if err := os.WriteFile(base+"/a/file.txt", []byte("12345"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("file.txt", base+"/a/link"); err != nil {
		t.Fatal(err)
	}

	ls, err := h.fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: base, Depth: 2}))
	if err != nil {
		t.Fatalf("ListDir: %v", err)
	}
	var paths []string
	byName := map[string]*filesystem.EntryInfo{}
	for _, e := range ls.Msg.GetEntries() {
		paths = append(paths, strings.TrimPrefix(e.GetPath(), base+"/"))
		byName[e.GetName()] = e
	}
	if strings.Join(paths, ",") != "a,a/b,a/file.txt,a/link" {
		t.Fatalf("ListDir depth 2: %v", paths)
	}
	f := byName["file.txt"]
	if f.GetType() != filesystem.FileType_FILE_TYPE_FILE || f.GetSize() != 5 || f.GetMode() != 0o640 || f.GetPermissions() != "-rw-r-----" ||
		f.GetOwner() != "root" || f.GetGroup() != "root" || f.GetModifiedTime() == nil || f.SymlinkTarget != nil {
		t.Fatalf("file entry %v", f)
	}
	l := byName["link"]
	if l.GetSymlinkTarget() != base+"/a/file.txt" || l.GetType() != filesystem.FileType_FILE_TYPE_FILE {
		t.Fatalf("symlink entry %v", l)
	}
	if d := byName["a"]; d.GetType() != filesystem.FileType_FILE_TYPE_DIRECTORY || d.GetPermissions() != "drwxr-xr-x" {
		t.Fatalf("dir entry %v", d)
	}
	ls1, err := h.fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: base, Depth: 1}))
	if err != nil || len(ls1.Msg.GetEntries()) != 1 {
		t.Fatalf("ListDir depth 1: %v %v", err, ls1)
	}

	if _, err := h.fs.Remove(ctx, connect.NewRequest(&filesystem.RemoveRequest{Path: base + "/a"})); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := os.Lstat(base + "/a"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Remove left %v", err)
	}
	if _, err := h.fs.Remove(ctx, connect.NewRequest(&filesystem.RemoveRequest{Path: base + "/a"})); err != nil {
		t.Fatalf("Remove of a missing path must succeed: %v", err)
	}
	if _, err := h.fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: base + "/missing"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("ListDir of a missing directory: %v", err)
	}
}

func TestWrennHost_MetricsPolling(t *testing.T) {
	_, h := startWrennHost(t, envdtest.Options{})
	for i := 0; i < 5; i++ {
		used, err := h.metrics()
		if err != nil {
			t.Fatalf("poll %d: %v", i, err)
		}
		if used <= 0 {
			t.Fatalf("mem_used %d", used)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestWrennHost_PauseResumeSequence runs envd in Firecracker mode against a
// fake MMDS and walks the host's pause and resume sequences (§1.3).
func TestWrennHost_PauseResumeSequence(t *testing.T) {
	u := envdtest.EnsureUser(t, "wrenntpl")
	e, fake := fcWithMMDS(t, map[string]any{"instanceID": "sb-before", "envID": "tpl-1"}, envdtest.Options{})
	h := newWrennHost(t, e.URL)
	h.waitReady()
	if st := h.initEnvd(map[string]any{"defaultUser": u.Name}); st != http.StatusNoContent {
		t.Fatalf("/init: %d", st)
	}
	hostWaitEnv(t, h, "WRENN_SANDBOX_ID", "sb-before")

	// A long-running process and an attached stream before the pause.
	if _, err := h.startBackground(&process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-c", "while true; do echo tick; sleep 0.2; done"}}, "proc-survivor"); err != nil {
		t.Fatal(err)
	}
	attachedCtx, cancelAttached := context.WithCancel(context.Background())
	defer cancelAttached()
	attached, err := h.proc.Connect(attachedCtx, connect.NewRequest(&process.ConnectRequest{Process: hostTag("proc-survivor")}))
	if err != nil {
		t.Fatal(err)
	}
	attachedOut := hostCollect[*process.ConnectResponse](attached)
	attachedOut.waitFor(t, "tick")

	// Pause: stop metrics sampling, close idle connections, prepare (204
	// exactly, within 3 s). The newest host reads /metrics once while
	// prepared.
	if st := h.prepareSnapshot(); st != http.StatusNoContent {
		t.Fatalf("/snapshot/prepare: %d, want 204 exactly", st)
	}
	if st := h.prepareSnapshot(); st != http.StatusNoContent {
		t.Fatalf("second /snapshot/prepare: %d", st)
	}
	if used, err := h.metrics(); err != nil || used <= 0 {
		t.Fatalf("/metrics while prepared: %d %v", used, err)
	}

	// Resume in a new slot: MMDS rewritten, readiness (first /health runs
	// recovery), /init with the template defaults, version.
	fake.Set(map[string]any{"instanceID": "sb-after", "envID": "tpl-2"})
	h.waitReady()
	if st := h.initEnvd(map[string]any{"defaultUser": u.Name, "envVars": map[string]string{"RESUMED": "yes"}}); st != http.StatusNoContent {
		t.Fatalf("/init after resume: %d, want 204 exactly", st)
	}
	if v, err := h.version(); err != nil || v != envdtest.Version(t) {
		t.Fatalf("version after resume: %q %v", v, err)
	}

	// Streams that crossed the snapshot are closed at recovery.
	select {
	case <-attachedOut.done:
	case <-time.After(15 * time.Second):
		t.Fatal("a stream open across the snapshot was not closed at recovery")
	}

	// /init re-polled MMDS: the new ids reach new processes.
	hostWaitEnv(t, h, "WRENN_SANDBOX_ID", "sb-after")
	hostWaitEnv(t, h, "WRENN_TEMPLATE_ID", "tpl-2")
	res, err := h.exec(30*time.Second, "/bin/sh", "-c", `echo "$WRENN_SANDBOX_ID $WRENN_TEMPLATE_ID $RESUMED $(id -un)"`)
	if err != nil {
		t.Fatal(err)
	}
	if want := "sb-after tpl-2 yes " + u.Name + "\n"; string(res.stdout) != want {
		t.Fatalf("exec after resume: %q, want %q", res.stdout, want)
	}

	// The process survived and is reachable again by tag.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	again, err := h.proc.Connect(ctx, connect.NewRequest(&process.ConnectRequest{Process: hostTag("proc-survivor")}))
	if err != nil {
		t.Fatal(err)
	}
	againOut := hostCollect[*process.ConnectResponse](again)
	againOut.waitFor(t, "tick")
	if err := h.signal("proc-survivor", process.Signal_SIGNAL_SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-againOut.done

	// Template restore: /init with no body after the next resume.
	if st := h.prepareSnapshot(); st != http.StatusNoContent {
		t.Fatalf("/snapshot/prepare: %d", st)
	}
	h.waitReady()
	if st := h.initEnvd(nil); st != http.StatusNoContent {
		t.Fatalf("/init (template restore): %d", st)
	}
	if _, err := h.metrics(); err != nil {
		t.Fatal(err)
	}
}

// hostWaitEnv waits until /envs maps name to want (the MMDS re-poll after /init
// is asynchronous).
func hostWaitEnv(t *testing.T, h *wrennHost, name, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var got map[string]string
	for time.Now().Before(deadline) {
		resp, err := h.unary.Get(h.base + "/envs")
		if err == nil {
			got = nil
			_ = json.NewDecoder(resp.Body).Decode(&got)
			resp.Body.Close()
			if got[name] == want {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("/envs %s never became %q (last %v)", name, want, got)
}

// hostPattern is an endless, deterministic, incompressible-enough byte source.
type hostPattern struct{ state uint64 }

func newHostPattern() *hostPattern { return &hostPattern{state: 0x9e3779b97f4a7c15} }

func (p *hostPattern) Read(b []byte) (int, error) {
	for i := range b {
		p.state ^= p.state << 13
		p.state ^= p.state >> 7
		p.state ^= p.state << 17
		b[i] = byte(p.state)
	}
	return len(b), nil
}

type hostCounter struct {
	w io.Writer
	n int64
}

func (c *hostCounter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

func hostFileOwner(fi os.FileInfo) uint32 { return fi.Sys().(*syscall.Stat_t).Uid }
