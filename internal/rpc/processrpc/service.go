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
	"syscall"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/gen/process/processconnect"
	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/keepalive"
	"github.com/envd/envd/internal/process"
	"github.com/envd/envd/internal/rpc"
	"github.com/envd/envd/internal/server"
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
}

// Service implements process.Process.
type Service struct {
	procs *process.Manager
	env   *defaults.Store
	gate  *keepalive.Gate
	log   *slog.Logger
	stall time.Duration
	// closeConn drops the connection of a stuck stream (server.CloseConn;
	// tests observe it).
	closeConn func(context.Context) bool
}

var _ processconnect.ProcessHandler = (*Service)(nil)

// New returns the service.
func New(o Options) *Service {
	s := &Service{procs: o.Processes, env: o.Defaults, gate: o.Gate, log: o.Log, stall: o.StallTimeout, closeConn: server.CloseConn}
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
	u, err := rpc.User(ctx, s.env)
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
	return s.pump(ctx, req.Header(), sub, startEvent(p.PID()), func(ev *pb.ProcessEvent) error {
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
	return s.pump(ctx, req.Header(), att.Sub, startEvent(att.PID), func(ev *pb.ProcessEvent) error {
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

func writeInput(p *process.Process, in *pb.ProcessInput) error {
	switch v := in.GetInput().(type) {
	case *pb.ProcessInput_Stdin:
		return toConnect(p.WriteStdin(v.Stdin))
	case *pb.ProcessInput_Pty:
		return toConnect(p.WritePTY(v.Pty))
	}
	return errInvalidInput
}

// SendInput writes to a process's stdin or terminal.
func (s *Service) SendInput(ctx context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	p, err := s.lookup(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := writeInput(p, req.Msg.GetInput()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

// StreamInput writes a stream of inputs, in order, to the selected process.
func (s *Service) StreamInput(ctx context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	var target *process.Process
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
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
			if err := writeInput(target, ev.Data.GetInput()); err != nil {
				return nil, err
			}
		case *pb.StreamInputRequest_Keepalive:
		default:
			return nil, errInvalidEvent
		}
	}
	if err := stream.Err(); err != nil {
		if connect.CodeOf(err) == connect.CodeResourceExhausted {
			return nil, err
		}
		return nil, connect.NewError(connect.CodeUnknown, fmt.Errorf("error streaming input: %w", err))
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
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
