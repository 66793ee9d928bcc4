package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/process"

	"github.com/envd/envd/internal/signame"
)

// Selector names a process: by pid, or by tag (the most recently started
// live process with that tag). Create one with PID or Tag.
type Selector struct {
	pid   uint32
	tag   string
	byTag bool
}

// PID selects the process with process id pid.
func PID(pid uint32) Selector { return Selector{pid: pid} }

// Tag selects the most recently started live process tagged tag. The empty
// string is a valid tag.
func Tag(tag string) Selector { return Selector{tag: tag, byTag: true} }

// String renders the selector as "pid 123" or "tag \"web\"".
func (s Selector) String() string {
	if s.byTag {
		return "tag " + strconv.Quote(s.tag)
	}
	return "pid " + strconv.FormatUint(uint64(s.pid), 10)
}

func (s Selector) proto() *process.ProcessSelector {
	if s.byTag {
		return &process.ProcessSelector{Selector: &process.ProcessSelector_Tag{Tag: s.tag}}
	}
	return &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: s.pid}}
}

// StartOption configures Start and Run.
type StartOption func(*startConfig)

type startConfig struct {
	env     map[string]string
	cwd     *string
	tag     *string
	timeout time.Duration
	pty     *process.PTY
	stdin   bool
}

// WithEnv adds environment variables for the process, on top of envd's
// PATH, HOME, USER, LOGNAME and default environment. Several WithEnv
// options merge; later values win.
func WithEnv(env map[string]string) StartOption {
	return func(c *startConfig) {
		if c.env == nil {
			c.env = map[string]string{}
		}
		for k, v := range env {
			c.env[k] = v
		}
	}
}

// WithCwd sets the working directory ("~/x" and relative paths resolve
// against the user's home). Without it envd uses its default workdir, else
// the user's home. A directory that does not exist fails the start.
func WithCwd(dir string) StartOption {
	return func(c *startConfig) { c.cwd = &dir }
}

// WithTag tags the process so that it can be found again with Tag(tag).
func WithTag(tag string) StartOption {
	return func(c *startConfig) { c.tag = &tag }
}

// WithTimeout bounds the process's lifetime: when d has passed envd kills
// the process and its whole process group. Without it the process runs
// until it exits or is signalled, whatever happens to the client.
func WithTimeout(d time.Duration) StartOption {
	return func(c *startConfig) { c.timeout = d }
}

// WithPTY runs the process on a pseudo-terminal of cols × rows. Its output
// is then read from Process.PTY and its input sent with SendPTY.
func WithPTY(cols, rows uint16) StartOption {
	return func(c *startConfig) {
		c.pty = &process.PTY{Size: &process.PTY_Size{Cols: uint32(cols), Rows: uint32(rows)}}
	}
}

// WithStdin gives the process a stdin pipe fed by SendStdin, StreamInput or
// Process.Stdin and closed by CloseStdin. Without it (and without a PTY)
// stdin is /dev/null.
func WithStdin() StartOption {
	return func(c *startConfig) { c.stdin = true }
}

// ExitStatus is how a process ended.
type ExitStatus struct {
	// Code is the exit code, or -1 when the process was killed by a signal.
	Code int `json:"exitCode"`
	// Exited is true when the process exited by itself (not by a signal).
	Exited bool `json:"exited"`
	// Status is envd's description: "exit status 2", "signal: killed".
	Status string `json:"status"`
	// Error is envd's error text; empty for a successful exit.
	Error string `json:"error,omitempty"`
}

// Success reports whether the process exited with code 0.
func (s ExitStatus) Success() bool { return s.Exited && s.Code == 0 }

// Signaled reports whether the process was killed by a signal.
func (s ExitStatus) Signaled() bool { return !s.Exited }

// Signal returns the number of the signal that killed the process, or 0.
func (s ExitStatus) Signal() int {
	if s.Exited {
		return 0
	}
	name := strings.TrimSuffix(s.Status, " (core dumped)")
	if rest, ok := strings.CutPrefix(name, "signal: "); ok {
		return signame.Number(rest)
	}
	return 0
}

// Err returns nil for a successful exit and an *ExitError otherwise.
func (s ExitStatus) Err() error {
	if s.Success() {
		return nil
	}
	return &ExitError{Status: s}
}

// ExitError reports a process that did not exit successfully.
type ExitError struct {
	Status ExitStatus
}

// Error says how the process ended.
func (e *ExitError) Error() string { return "process ended: " + e.Status.Status }

// ErrDetached is returned by Wait and by output readers of a Process that
// was closed before its end was received; the process itself may still run.
var ErrDetached = errors.New("envd client: detached from process")

// errNoEnd reports a stream that completed without an end event.
var errNoEnd = errors.New("stream ended without an end event")

// Process is a handle on a process in the guest, obtained from Start or
// Connect. It receives the process's events on a goroutine of its own until
// the process ends or Close is called.
//
// The output readers are fed by that goroutine through bounded buffers
// (1 MiB each). When a buffer is full the goroutine waits for its reader,
// which also holds back the other streams and, eventually, envd disconnects
// the too-slow stream (Wait then reports an aborted error). Read every
// stream you asked for concurrently, or Close the readers you do not want:
// a closed reader discards its stream.
type Process struct {
	c      *Client
	pid    uint32
	stdout *outputBuffer
	stderr *outputBuffer
	pty    *outputBuffer

	cancel      context.CancelFunc
	stopAfter   func() bool
	closeStream func() error

	closeOnce sync.Once
	detached  chan struct{}
	done      chan struct{}
	status    ExitStatus
	err       error
}

// PID is the process id in the guest.
func (p *Process) PID() uint32 { return p.pid }

// Stdout returns the reader of the process's standard output. It returns
// io.EOF after the process ended and all output was read.
func (p *Process) Stdout() io.ReadCloser { return p.stdout }

// Stderr returns the reader of the process's standard error.
func (p *Process) Stderr() io.ReadCloser { return p.stderr }

// PTY returns the reader of the process's terminal output (processes
// started with WithPTY).
func (p *Process) PTY() io.ReadCloser { return p.pty }

// Done is closed when the process's end was received or the stream failed.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits until the process ends and returns its exit status. The error
// is non-nil only when the end could not be learnt: the stream failed (for
// example the WithTimeout deadline passed, code deadline_exceeded, or envd
// disconnected a too-slow reader, code aborted), or Close was called
// (ErrDetached). A non-zero exit is not an error; see ExitStatus.Err.
func (p *Process) Wait() (ExitStatus, error) {
	<-p.done
	return p.status, p.err
}

// Close detaches from the process without affecting it: the event stream
// is closed, output readers return ErrDetached once drained, and Wait
// returns ErrDetached unless the end had already been received. Reconnect
// later with Client.Connect.
func (p *Process) Close() error {
	p.closeOnce.Do(func() {
		close(p.detached)
		p.cancel()
		for _, b := range []*outputBuffer{p.stdout, p.stderr, p.pty} {
			b.finish(ErrDetached)
		}
	})
	<-p.done
	return nil
}

// SendStdin writes data to the process's stdin pipe.
func (p *Process) SendStdin(ctx context.Context, data []byte) error {
	return p.c.SendStdin(ctx, PID(p.pid), data)
}

// SendPTY writes data to the process's terminal, as if typed.
func (p *Process) SendPTY(ctx context.Context, data []byte) error {
	return p.c.SendPTY(ctx, PID(p.pid), data)
}

// CloseStdin closes the process's stdin pipe; the process reads end of file.
func (p *Process) CloseStdin(ctx context.Context) error {
	return p.c.CloseStdin(ctx, PID(p.pid))
}

// Resize changes the size of the process's terminal.
func (p *Process) Resize(ctx context.Context, cols, rows uint16) error {
	return p.c.Resize(ctx, PID(p.pid), cols, rows)
}

// Signal sends sig to the process's whole process group.
func (p *Process) Signal(ctx context.Context, sig Signal) error {
	return p.c.Signal(ctx, PID(p.pid), sig)
}

// Kill sends SIGKILL to the process's whole process group.
func (p *Process) Kill(ctx context.Context) error {
	return p.c.Kill(ctx, PID(p.pid))
}

// Stdin returns a writer that streams to the process's stdin (StreamInput)
// and, when closed, closes the process's stdin. For processes started with
// WithStdin.
func (p *Process) Stdin(ctx context.Context) (io.WriteCloser, error) {
	s, err := p.c.StreamInput(ctx, PID(p.pid), InputStdin)
	if err != nil {
		return nil, err
	}
	return &stdinWriter{s: s, p: p, ctx: ctx}, nil
}

type stdinWriter struct {
	s   *InputStream
	p   *Process
	ctx context.Context
}

func (w *stdinWriter) Write(b []byte) (int, error) { return w.s.Write(b) }

func (w *stdinWriter) Close() error {
	if err := w.s.Close(); err != nil {
		return err
	}
	return w.p.CloseStdin(w.ctx)
}

// processEvents adapts the Start and Connect streams, whose messages both
// carry a ProcessEvent.
func processEvents[T any, PT interface {
	*T
	GetEvent() *process.ProcessEvent
}](s *connect.ServerStreamForClient[T]) func() (*process.ProcessEvent, error) {
	return func() (*process.ProcessEvent, error) {
		if s.Receive() {
			return PT(s.Msg()).GetEvent(), nil
		}
		if err := s.Err(); err != nil {
			return nil, err
		}
		return nil, io.EOF
	}
}

// Start starts cmd with args in the guest, as the client's user. cmd is not
// a shell command line: it is looked up in PATH; use
// Start(ctx, "/bin/sh", []string{"-c", line}) for shell syntax.
//
// ctx bounds only the start and this client's view of the process:
// cancelling it detaches (as Close does) and the process keeps running. To
// bound the process itself, use WithTimeout.
func (c *Client) Start(ctx context.Context, cmd string, args []string, opts ...StartOption) (*Process, error) {
	var cfg startConfig
	for _, o := range opts {
		o(&cfg)
	}
	stdin := cfg.stdin
	msg := &process.StartRequest{
		Process: &process.ProcessConfig{Cmd: cmd, Args: args, Envs: cfg.env, Cwd: cfg.cwd},
		Pty:     cfg.pty,
		Tag:     cfg.tag,
		Stdin:   &stdin,
	}
	// A deadline on the Start request is the process's lifetime in envd, so
	// the caller's ctx deadline must not leak into it: the stream runs on a
	// context of its own, cancelled with ctx, with the WithTimeout deadline.
	base := context.WithoutCancel(ctx)
	var sctx context.Context
	var cancel context.CancelFunc
	if cfg.timeout > 0 {
		sctx, cancel = context.WithTimeout(base, cfg.timeout)
	} else {
		sctx, cancel = context.WithCancel(base)
	}
	stopAfter := context.AfterFunc(ctx, cancel)
	stream, err := c.proc.Start(sctx, newRequest(c, msg, true, true))
	if err != nil {
		stopAfter()
		cancel()
		return nil, rpcError("Start", err)
	}
	return c.attach("Start", stream.Close, cancel, stopAfter, processEvents(stream))
}

// Connect attaches to a running process (or to one that ended in the last
// 30 s, whose end and unread output envd still keeps). Output produced
// while no client was attached is delivered first. Cancelling ctx detaches.
func (c *Client) Connect(ctx context.Context, sel Selector) (*Process, error) {
	sctx, cancel := context.WithCancel(ctx)
	stream, err := c.proc.Connect(sctx, newRequest(c, &process.ConnectRequest{Process: sel.proto()}, false, true))
	if err != nil {
		cancel()
		return nil, rpcError("Connect", err)
	}
	return c.attach("Connect", stream.Close, cancel, func() bool { return true }, processEvents(stream))
}

// attach waits for the start event and hands the rest of the stream to a
// Process.
func (c *Client) attach(op string, closeStream func() error, cancel context.CancelFunc, stopAfter func() bool, recv func() (*process.ProcessEvent, error)) (*Process, error) {
	fail := func(err error) (*Process, error) {
		stopAfter()
		cancel()
		_ = closeStream()
		return nil, err
	}
	ev, err := recv()
	if err == io.EOF {
		return fail(&Error{Op: op, Status: 500, Code: connect.CodeInternal, Message: "stream ended before the start event"})
	}
	if err != nil {
		return fail(rpcError(op, err))
	}
	start := ev.GetStart()
	if start == nil {
		return fail(&Error{Op: op, Status: 500, Code: connect.CodeInternal, Message: fmt.Sprintf("expected a start event, got %T", ev.GetEvent())})
	}
	p := &Process{
		c:           c,
		pid:         start.GetPid(),
		stdout:      newOutputBuffer(outputBufferSize),
		stderr:      newOutputBuffer(outputBufferSize),
		pty:         newOutputBuffer(outputBufferSize),
		cancel:      cancel,
		stopAfter:   stopAfter,
		closeStream: closeStream,
		detached:    make(chan struct{}),
		done:        make(chan struct{}),
	}
	go p.receive(op, recv)
	return p, nil
}

// receive is the Process's goroutine: it routes events until the stream
// ends, then releases the stream.
func (p *Process) receive(op string, recv func() (*process.ProcessEvent, error)) {
	ended := false
	var err error
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("envd client: panic while receiving process events: %v", r)
		}
		select {
		case <-p.detached:
			if !ended {
				err = ErrDetached
			}
		default:
		}
		if ended {
			err = nil
		}
		p.stopAfter()
		p.cancel()
		_ = p.closeStream()
		p.err = err
		final := err
		if final == nil {
			final = io.EOF
		}
		for _, b := range []*outputBuffer{p.stdout, p.stderr, p.pty} {
			b.finish(final)
		}
		close(p.done)
	}()
	for {
		ev, e := recv()
		if e != nil {
			if e == io.EOF {
				if !ended {
					err = &Error{Op: op, Status: 500, Code: connect.CodeInternal, Message: errNoEnd.Error(), Err: errNoEnd}
				}
			} else {
				err = rpcError(op, e)
			}
			return
		}
		switch x := ev.GetEvent().(type) {
		case *process.ProcessEvent_Data:
			switch o := x.Data.GetOutput().(type) {
			case *process.ProcessEvent_DataEvent_Stdout:
				p.stdout.write(o.Stdout)
			case *process.ProcessEvent_DataEvent_Stderr:
				p.stderr.write(o.Stderr)
			case *process.ProcessEvent_DataEvent_Pty:
				p.pty.write(o.Pty)
			}
		case *process.ProcessEvent_End:
			p.status = ExitStatus{
				Code:   int(x.End.GetExitCode()),
				Exited: x.End.GetExited(),
				Status: x.End.GetStatus(),
				Error:  x.End.GetError(),
			}
			ended = true
		}
	}
}

// Result is the outcome of Run.
type Result struct {
	PID uint32 `json:"pid"`
	ExitStatus
	// Stdout holds standard output, or the terminal output of a process run
	// with WithPTY.
	Stdout []byte `json:"stdout"`
	Stderr []byte `json:"stderr"`
}

// Run starts cmd like Start, collects its output and waits for it to end.
// If ctx is done first, Run kills the process (SIGKILL to its process
// group) and returns ctx's error. A non-zero exit is reported in the
// Result, not as an error.
func (c *Client) Run(ctx context.Context, cmd string, args []string, opts ...StartOption) (*Result, error) {
	p, err := c.Start(ctx, cmd, args, opts...)
	if err != nil {
		return nil, err
	}
	var stdout, stderr, tty bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); _, _ = io.Copy(&stdout, p.Stdout()) }()
	go func() { defer wg.Done(); _, _ = io.Copy(&stderr, p.Stderr()) }()
	go func() { defer wg.Done(); _, _ = io.Copy(&tty, p.PTY()) }()
	select {
	case <-p.Done():
	case <-ctx.Done():
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		_ = p.Kill(kctx)
		cancel()
		_ = p.Close()
		wg.Wait()
		return nil, rpcError("Run", ctx.Err())
	}
	wg.Wait()
	st, err := p.Wait()
	if err != nil {
		return nil, err
	}
	if tty.Len() > 0 {
		stdout.Write(tty.Bytes())
	}
	return &Result{PID: p.pid, ExitStatus: st, Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}, nil
}

// ProcessInfo describes a running process (List).
type ProcessInfo struct {
	PID uint32 `json:"pid"`
	// Tag is the process's tag; Tagged tells a tag "" from no tag.
	Tag    string            `json:"tag"`
	Tagged bool              `json:"tagged"`
	Cmd    string            `json:"cmd"`
	Args   []string          `json:"args"`
	Env    map[string]string `json:"env,omitempty"`
	// Cwd is the working directory as requested at start ("" if none was).
	Cwd string `json:"cwd,omitempty"`
}

// List returns the running processes in the order they were started.
func (c *Client) List(ctx context.Context) ([]ProcessInfo, error) {
	resp, err := c.proc.List(ctx, newRequest(c, &process.ListRequest{}, false, false))
	if err != nil {
		return nil, rpcError("List", err)
	}
	out := make([]ProcessInfo, 0, len(resp.Msg.GetProcesses()))
	for _, p := range resp.Msg.GetProcesses() {
		cfg := p.GetConfig()
		out = append(out, ProcessInfo{
			PID:    p.GetPid(),
			Tag:    p.GetTag(),
			Tagged: p.Tag != nil,
			Cmd:    cfg.GetCmd(),
			Args:   cfg.GetArgs(),
			Env:    cfg.GetEnvs(),
			Cwd:    cfg.GetCwd(),
		})
	}
	return out, nil
}

// SendStdin writes data to the stdin pipe of the selected process.
func (c *Client) SendStdin(ctx context.Context, sel Selector, data []byte) error {
	return c.sendInput(ctx, sel, &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: data}})
}

// SendPTY writes data to the terminal of the selected process.
func (c *Client) SendPTY(ctx context.Context, sel Selector, data []byte) error {
	return c.sendInput(ctx, sel, &process.ProcessInput{Input: &process.ProcessInput_Pty{Pty: data}})
}

func (c *Client) sendInput(ctx context.Context, sel Selector, in *process.ProcessInput) error {
	_, err := c.proc.SendInput(ctx, newRequest(c, &process.SendInputRequest{Process: sel.proto(), Input: in}, false, false))
	return rpcError("SendInput", err)
}

// CloseStdin closes the stdin pipe of the selected process. It fails for
// processes on a terminal (send Ctrl-D, 0x04, with SendPTY instead).
func (c *Client) CloseStdin(ctx context.Context, sel Selector) error {
	_, err := c.proc.CloseStdin(ctx, newRequest(c, &process.CloseStdinRequest{Process: sel.proto()}, false, false))
	return rpcError("CloseStdin", err)
}

// Resize sets the terminal size of the selected process; the process
// receives SIGWINCH.
func (c *Client) Resize(ctx context.Context, sel Selector, cols, rows uint16) error {
	msg := &process.UpdateRequest{
		Process: sel.proto(),
		Pty:     &process.PTY{Size: &process.PTY_Size{Cols: uint32(cols), Rows: uint32(rows)}},
	}
	_, err := c.proc.Update(ctx, newRequest(c, msg, false, false))
	return rpcError("Update", err)
}

// Signal is a signal envd can deliver.
type Signal int

// The signals envd delivers.
const (
	SIGTERM Signal = 15
	SIGKILL Signal = 9
)

// String returns "SIGTERM", "SIGKILL" or "signal N".
func (s Signal) String() string {
	switch s {
	case SIGTERM:
		return "SIGTERM"
	case SIGKILL:
		return "SIGKILL"
	}
	return "signal " + strconv.Itoa(int(s))
}

// Signal sends sig to the whole process group of the selected process. A
// process that is already gone is reported as not found (IsNotFound).
func (c *Client) Signal(ctx context.Context, sel Selector, sig Signal) error {
	msg := &process.SendSignalRequest{Process: sel.proto(), Signal: process.Signal(sig)}
	_, err := c.proc.SendSignal(ctx, newRequest(c, msg, false, false))
	return rpcError("SendSignal", err)
}

// Kill sends SIGKILL to the whole process group of the selected process.
func (c *Client) Kill(ctx context.Context, sel Selector) error {
	return c.Signal(ctx, sel, SIGKILL)
}

// InputKind says where streamed input goes.
type InputKind int

// Input destinations.
const (
	InputStdin InputKind = iota // the stdin pipe
	InputPTY                    // the terminal
)

// maxInputMessage bounds the payload of one StreamInput message.
const maxInputMessage = 1 << 20

// InputStream streams input to one process (StreamInput). Writes are sent
// in order; errors from envd (for example a process that has no stdin pipe)
// surface at the latest on Close. Not safe for concurrent use.
type InputStream struct {
	s    *connect.ClientStreamForClient[process.StreamInputRequest, process.StreamInputResponse]
	kind InputKind
	err  error
}

// StreamInput opens an input stream to the selected process.
func (c *Client) StreamInput(ctx context.Context, sel Selector, kind InputKind) (*InputStream, error) {
	s := c.proc.StreamInput(ctx)
	c.setHeaders(s.RequestHeader(), false, false)
	in := &InputStream{s: s, kind: kind}
	start := &process.StreamInputRequest{Event: &process.StreamInputRequest_Start{
		Start: &process.StreamInputRequest_StartEvent{Process: sel.proto()},
	}}
	if err := s.Send(start); err != nil {
		return nil, in.fail(err)
	}
	return in, nil
}

// fail turns a send error into envd's answer: a send reports io.EOF when
// the server ended the call, and the reason is in the response.
func (in *InputStream) fail(err error) error {
	if errors.Is(err, io.EOF) {
		_, err = in.s.CloseAndReceive()
		if err == nil {
			err = io.ErrClosedPipe
		}
	} else {
		_, _ = in.s.CloseAndReceive()
	}
	in.err = rpcError("StreamInput", err)
	return in.err
}

// Write sends p (split into messages of at most 1 MiB).
func (in *InputStream) Write(p []byte) (int, error) {
	if in.err != nil {
		return 0, in.err
	}
	n := 0
	for n < len(p) {
		chunk := p[n:min(len(p), n+maxInputMessage)]
		input := &process.ProcessInput{Input: &process.ProcessInput_Stdin{Stdin: chunk}}
		if in.kind == InputPTY {
			input = &process.ProcessInput{Input: &process.ProcessInput_Pty{Pty: chunk}}
		}
		msg := &process.StreamInputRequest{Event: &process.StreamInputRequest_Data{
			Data: &process.StreamInputRequest_DataEvent{Input: input},
		}}
		if err := in.s.Send(msg); err != nil {
			return n, in.fail(err)
		}
		n += len(chunk)
	}
	return n, nil
}

// Close ends the stream and returns envd's verdict on everything sent.
func (in *InputStream) Close() error {
	if in.err != nil {
		if in.err == errInputClosed {
			return nil
		}
		return in.err
	}
	_, err := in.s.CloseAndReceive()
	if err != nil {
		in.err = rpcError("StreamInput", err)
		return in.err
	}
	in.err = errInputClosed
	return nil
}

var errInputClosed = errors.New("envd client: input stream closed")
