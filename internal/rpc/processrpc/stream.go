package processrpc

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/keepalive"
	"github.com/envd/envd/internal/process"
)

// DefaultStallTimeout: a message that a client does not take within this
// time disconnects it (spec rpc.md §4.5).
const DefaultStallTimeout = 30 * time.Second

// sender writes the events of one stream. Each write is watched: if it
// does not complete within the stall timeout, or the subscription is cut
// off for overflow while a write is stuck, the connection is closed, which
// is the only way to end a write that a vanished peer will never take.
type sender struct {
	ctx     context.Context
	close   func(context.Context) bool
	send    func(*pb.ProcessEvent) error
	stall   time.Duration
	timer   *time.Timer
	sending atomic.Bool
	cut     atomic.Bool
}

func newSender(ctx context.Context, stall time.Duration, closeConn func(context.Context) bool, send func(*pb.ProcessEvent) error) *sender {
	s := &sender{ctx: ctx, close: closeConn, send: send, stall: stall}
	s.timer = time.AfterFunc(stall, s.drop)
	s.timer.Stop()
	return s
}

// drop closes the connection under a stuck write.
func (s *sender) drop() {
	defer func() { _ = recover() }() // runs on a timer goroutine: never let it end envd
	s.cut.Store(true)
	s.close(s.ctx)
}

// abort is the subscription's overflow hook: a write in progress means the
// client stopped taking data, so its connection is dropped; otherwise the
// stream loop sees the error and ends the stream with it.
func (s *sender) abort() {
	if s.sending.Load() {
		s.drop()
	}
}

func (s *sender) Send(ev *pb.ProcessEvent) error {
	s.sending.Store(true)
	s.timer.Reset(s.stall)
	err := s.send(ev)
	s.timer.Stop()
	s.sending.Store(false)
	if s.cut.Load() {
		return process.ErrSlowSubscriber
	}
	if err != nil {
		if ctxErr := s.ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return connect.NewError(connect.CodeUnknown, fmt.Errorf("error sending event: %w", err))
	}
	return nil
}

func (s *sender) stop() { s.timer.Stop() }

// pump sends first (the start event), then the subscription's items until
// the end, with a keepalive whenever nothing was sent for the interval the
// client asked for. It returns the error the stream ends with, nil after
// the end event.
func (s *Service) pump(ctx context.Context, hdr http.Header, sub *process.Subscription, first *pb.ProcessEvent, send func(*pb.ProcessEvent) error) error {
	snd := newSender(ctx, s.stall, s.closeConn, send)
	defer snd.stop()
	sub.OnAbort(snd.abort)
	if err := snd.Send(first); err != nil {
		return toConnect(err)
	}
	ka := s.gate.NewTimer(keepalive.Interval(hdr))
	defer ka.Stop()
	for {
		for {
			if err := ctx.Err(); err != nil {
				return toConnect(err)
			}
			it, ok := sub.Next()
			if !ok {
				break
			}
			switch {
			case it.Err != nil:
				return toConnect(it.Err)
			case it.End != nil:
				return toConnect(snd.Send(endEvent(it.End)))
			}
			if err := snd.Send(dataEvent(it.Chunk)); err != nil {
				return toConnect(err)
			}
			ka.Reset()
		}
		select {
		case <-sub.Ready():
		case <-ka.C:
			if err := snd.Send(keepaliveEvent); err != nil {
				return toConnect(err)
			}
			ka.Reset()
		case <-ctx.Done():
			return toConnect(ctx.Err())
		}
	}
}

var keepaliveEvent = &pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}

func startEvent(pid uint32) *pb.ProcessEvent {
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: pid}}}
}

func dataEvent(c process.Chunk) *pb.ProcessEvent {
	d := &pb.ProcessEvent_DataEvent{}
	switch c.Stream {
	case process.Stdout:
		d.Output = &pb.ProcessEvent_DataEvent_Stdout{Stdout: c.Data}
	case process.Stderr:
		d.Output = &pb.ProcessEvent_DataEvent_Stderr{Stderr: c.Data}
	default:
		d.Output = &pb.ProcessEvent_DataEvent_Pty{Pty: c.Data}
	}
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: d}}
}

func endEvent(e *process.End) *pb.ProcessEvent {
	end := &pb.ProcessEvent_EndEvent{ExitCode: e.ExitCode, Exited: e.Exited, Status: e.Status}
	if e.HasError {
		msg := e.Error
		end.Error = &msg
	}
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: end}}
}
