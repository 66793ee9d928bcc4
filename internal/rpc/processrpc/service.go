// Package processrpc implements the process.Process Connect service (spec
// rpc.md §4) over the process manager: it decodes requests, resolves the
// acting user, maps the manager's typed errors to Connect codes (errors.go)
// and runs the event streams with their keepalives and stall protection
// (stream.go). Processes themselves live in internal/process.
package processrpc

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/gen/process/processconnect"
	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/keepalive"
	"github.com/envd/envd/internal/process"
	"github.com/envd/envd/internal/rpc"
)

// Options configure the service.
type Options struct {
	Processes *process.Manager
	Defaults  *defaults.Store
	// Gate owns the keepalive timers of every stream.
	Gate *keepalive.Gate
	Log  *slog.Logger
	// StallTimeout overrides DefaultStallTimeout (tests).
	StallTimeout time.Duration
	// Users looks up the acting user (identity.LookupUser when nil).
	Users rpc.UserLookup
	// Busy and Idle, if set, are called when a Start or Connect stream
	// opens and whenever the last open one ended: a quiet moment to hand
	// memory back (memory.Releaser).
	Busy, Idle func()
}

// Service implements process.Process.
type Service struct {
	users rpc.UserLookup
	procs *process.Manager
	env   *defaults.Store
	gate  *keepalive.Gate
	log   *slog.Logger
	stall time.Duration
	// abortWrite ends a stream's stuck write (the package function
	// abortWrite; tests observe it).
	abortWrite func(context.Context)
	batches    *batchPool
	busy, idle func()
	streams    atomic.Int64 // open Start and Connect streams
}

var _ processconnect.ProcessHandler = (*Service)(nil)

// New returns the service.
func New(o Options) *Service {
	s := &Service{users: o.Users, procs: o.Processes, env: o.Defaults, gate: o.Gate, log: o.Log, stall: o.StallTimeout, abortWrite: abortWrite, batches: newBatchPool(), busy: o.Busy, idle: o.Idle}
	if s.stall <= 0 {
		s.stall = DefaultStallTimeout
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s
}

func selector(sel *pb.ProcessSelector) (process.Selector, error) {
	switch v := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		return process.ByPID(v.Pid), nil
	case *pb.ProcessSelector_Tag:
		return process.ByTag(v.Tag), nil
	}
	return process.Selector{}, errInvalidInput
}

func (s *Service) lookup(sel *pb.ProcessSelector) (*process.Process, error) {
	ps, err := selector(sel)
	if err != nil {
		return nil, err
	}
	p, err := s.procs.Lookup(ps)
	return p, toConnect(err)
}

// List returns the live processes with their configuration as received.
func (s *Service) List(ctx context.Context, req *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	out := &pb.ListResponse{}
	for _, i := range s.procs.List() {
		out.Processes = append(out.Processes, &pb.ProcessInfo{
			Pid: i.PID,
			Tag: i.Tag,
			Config: &pb.ProcessConfig{
				Cmd:  i.Config.Cmd,
				Args: i.Config.Args,
				Envs: i.Config.Envs,
				Cwd:  i.Config.Cwd,
			},
		})
	}
	return connect.NewResponse(out), nil
}

// Start spawns a process and streams its events. The RPC deadline, if any,
// is also the process's lifetime.
func (s *Service) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	u, err := rpc.User(ctx, s.env, s.users)
	if err != nil {
		return err
	}
	msg := req.Msg
	pc := msg.GetProcess()
	o := process.StartOptions{
		Config: process.Config{Cmd: pc.GetCmd(), Args: pc.GetArgs(), Envs: pc.GetEnvs(), Cwd: copyPtr(pc.Cwd)},
		User:   u,
		Tag:    copyPtr(msg.Tag),
		Stdin:  copyPtr(msg.Stdin),
		Wait:   ctx, // a wait for a frozen group ends with the request
	}
	if msg.Pty != nil {
		sz := msg.Pty.GetSize()
		o.PTY = &process.Size{Cols: sz.GetCols(), Rows: sz.GetRows()}
	}
	if dl, ok := ctx.Deadline(); ok {
		o.Deadline = dl
	}
	p, sub, err := s.procs.Start(o)
	if err != nil {
		return toConnect(err)
	}
	defer sub.Close()
	stream.ResponseHeader().Set(OutputOffsetHeader, formatOffsets(process.Offsets{}, p.IsPTY(), false))
	return s.pump(ctx, req.Header(), stream.ResponseTrailer(), p.IsPTY(), sub, startEvent(p.PID()), func(ev *pb.ProcessEvent) error {
		return stream.Send(&pb.StartResponse{Event: ev})
	})
}

// Connect attaches to a live process, or to the retained exit of one that
// ended, and streams its events.
func (s *Service) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], stream *connect.ServerStream[pb.ConnectResponse]) error {
	sel, err := selector(req.Msg.GetProcess())
	if err != nil {
		return err
	}
	var replay *process.Offsets
	if vs, ok := req.Header()[http.CanonicalHeaderKey(ReplayFromHeader)]; ok {
		from, err := parseOffsets(strings.Join(vs, ","))
		if err != nil {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid %s header: %w", ReplayFromHeader, err))
		}
		replay = &from
	}
	att, err := s.procs.Connect(sel, replay)
	if err != nil {
		return toConnect(err)
	}
	defer att.Sub.Close()
	if replay != nil {
		h := stream.ResponseHeader()
		h.Set(OutputOffsetHeader, formatOffsets(att.Start, att.PTY, false))
		if gap := formatOffsets(att.Gap, att.PTY, true); gap != "" {
			h.Set(ReplayGapHeader, gap)
		}
	}
	return s.pump(ctx, req.Header(), stream.ResponseTrailer(), att.PTY, att.Sub, startEvent(att.PID), func(ev *pb.ProcessEvent) error {
		return stream.Send(&pb.ConnectResponse{Event: ev})
	})
}

// Update resizes a process's terminal.
func (s *Service) Update(ctx context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	p, err := s.lookup(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if req.Msg.Pty != nil {
		sz := req.Msg.Pty.GetSize()
		if err := p.Resize(process.Size{Cols: sz.GetCols(), Rows: sz.GetRows()}); err != nil {
			return nil, toConnect(err)
		}
	}
	return connect.NewResponse(&pb.UpdateResponse{}), nil
}

// writeInput writes one input; the write ends with ctx (the client's
// deadline, or the client going away), see process.WriteStdin.
func writeInput(ctx context.Context, p *process.Process, in *pb.ProcessInput) error {
	switch v := in.GetInput().(type) {
	case *pb.ProcessInput_Stdin:
		return toConnect(p.WriteStdin(ctx, v.Stdin))
	case *pb.ProcessInput_Pty:
		return toConnect(p.WritePTY(ctx, v.Pty))
	}
	return errInvalidInput
}

// SendInput writes to a process's stdin or terminal.
func (s *Service) SendInput(ctx context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	p, err := s.lookup(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := writeInput(ctx, p, req.Msg.GetInput()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

// StreamInput writes a stream of inputs, in order, to the selected process.
// The next message is received while an input is being written, so that a
// client that goes away is noticed even over HTTP/1.1, where the request's
// context ends only with the deadline: a failed receive abandons the write
// in progress (see process.WriteStdin).
func (s *Service) StreamInput(ctx context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in := s.receiveAhead(ctx, cancel, stream)
	var target *process.Process
	for m := range in.msgs {
		switch ev := m.GetEvent().(type) {
		case *pb.StreamInputRequest_Start:
			p, err := s.lookup(ev.Start.GetProcess())
			if err != nil {
				return nil, err
			}
			target = p
		case *pb.StreamInputRequest_Data:
			if target == nil {
				return nil, errNoStartReceived
			}
			if err := writeInput(ctx, target, ev.Data.GetInput()); err != nil {
				if rerr := in.failure(); rerr != nil {
					return nil, receiveError(rerr)
				}
				return nil, err
			}
		case *pb.StreamInputRequest_Keepalive:
		default:
			return nil, errInvalidEvent
		}
	}
	if err := in.failure(); err != nil {
		return nil, receiveError(err)
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

func receiveError(err error) error {
	if connect.CodeOf(err) == connect.CodeResourceExhausted {
		return err
	}
	return connect.NewError(connect.CodeUnknown, fmt.Errorf("error streaming input: %w", err))
}

// inputStream receives a client stream one message ahead of its consumer.
type inputStream struct {
	msgs chan *pb.StreamInputRequest // closed after the last message
	err  atomic.Pointer[error]       // the receive error, set before msgs is closed
}

// receiveAhead starts the receiving goroutine. It holds at most one
// message its consumer has not taken, stops when ctx ends (the handler
// returned: it then ends with its current Receive, which the framework's
// closing of the request body unblocks), and calls cancel when receiving
// fails.
func (s *Service) receiveAhead(ctx context.Context, cancel context.CancelFunc, stream *connect.ClientStream[pb.StreamInputRequest]) *inputStream {
	in := &inputStream{msgs: make(chan *pb.StreamInputRequest)}
	go func() {
		defer func() {
			if r := recover(); r != nil {
				s.log.Error("panic while receiving input", "panic", fmt.Sprint(r))
			}
		}()
		defer close(in.msgs)
		for stream.Receive() {
			select {
			case in.msgs <- stream.Msg():
			case <-ctx.Done():
				return
			}
		}
		if err := stream.Err(); err != nil {
			in.err.Store(&err)
			cancel() // the client is gone: abandon the write in progress
		}
	}()
	return in
}

// failure is the receive error, if receiving failed.
func (in *inputStream) failure() error {
	if p := in.err.Load(); p != nil {
		return *p
	}
	return nil
}

// SendSignal sends SIGTERM or SIGKILL to a process's whole group.
func (s *Service) SendSignal(ctx context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	p, err := s.lookup(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	var sig syscall.Signal
	switch req.Msg.GetSignal() {
	case pb.Signal_SIGNAL_SIGTERM:
		sig = syscall.SIGTERM
	case pb.Signal_SIGNAL_SIGKILL:
		sig = syscall.SIGKILL
	default:
		return nil, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("invalid signal: %s", req.Msg.GetSignal()))
	}
	if err := p.Signal(sig); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

// CloseStdin closes a process's stdin pipe.
func (s *Service) CloseStdin(ctx context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	p, err := s.lookup(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := p.CloseStdin(); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}

func copyPtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}
