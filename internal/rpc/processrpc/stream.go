package processrpc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/keepalive"
	"github.com/envd/envd/internal/process"
	"github.com/envd/envd/internal/server"
)

// DefaultStallTimeout: a message that a client does not take within this
// time disconnects it (spec rpc.md §4.5).
const DefaultStallTimeout = 30 * time.Second

// errStalled ends a stream whose write was given up after the stall
// timeout; the client cannot receive it any more (its stream was reset or
// its connection closed), so it only reaches the log.
var errStalled = connect.NewError(connect.CodeAborted, errors.New("subscriber too slow: a message was not taken within the send timeout"))

// sender writes the events of one stream; each stream has its own. A write
// that does not complete within the stall timeout is ended by moving the
// response's write deadline to the past (abortWrite): over HTTP/2 that
// resets only this stream, over HTTP/1.1 it fails the write and the
// connection, which carries only this stream, is closed. No deadline is
// set while writes complete, so an idle stream (waiting for output) is
// never touched.
type sender struct {
	ctx        context.Context
	send       func(*pb.ProcessEvent) error
	stall      time.Duration
	abortWrite func(context.Context)
	timer      *time.Timer
	// bw gathers runs of ready events (nil: every event is written and
	// flushed by itself).
	bw *batchWriter

	mu      sync.Mutex
	began   time.Time // start of the write in progress; zero when none
	stalled bool      // a write was given up: the stream is dead
}

func newSender(ctx context.Context, stall time.Duration, abortWrite func(context.Context), bw *batchWriter, send func(*pb.ProcessEvent) error) *sender {
	s := &sender{ctx: ctx, send: send, stall: stall, abortWrite: abortWrite, bw: bw}
	s.timer = time.AfterFunc(stall, s.expire)
	s.timer.Stop()
	return s
}

// expire runs on the timer's goroutine when a write may have been in
// progress for the stall timeout.
func (s *sender) expire() {
	defer func() { _ = recover() }() // never let a timer goroutine end envd
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.began.IsZero() || s.stalled {
		return
	}
	if left := s.stall - time.Since(s.began); left > 0 {
		s.timer.Reset(left) // a later write than the one the timer was armed for
		return
	}
	s.stalled = true
	s.abortWrite(s.ctx)
}

// Send writes one message (or, while the sender holds, gathers it); it
// never returns before the message was either written whole, gathered or
// given up.
func (s *sender) Send(ev *pb.ProcessEvent) error {
	return s.timed(func() error { return s.send(ev) })
}

// hold gathers the following messages until release.
func (s *sender) hold() {
	if s.bw != nil {
		s.bw.hold()
	}
}

// release writes and flushes what was gathered, within the send bound.
func (s *sender) release() error {
	if s.bw == nil || !s.bw.held {
		return nil
	}
	return s.timed(s.bw.release)
}

// finish sends the end event. What was gathered before it is written
// first, within the send bound; the end event itself is held back and
// goes out with connect-go's end of the stream (batching), like which it
// is small and written after the handler returned.
func (s *sender) finish(ev *pb.ProcessEvent) error {
	if err := s.release(); err != nil {
		return err
	}
	s.hold()
	return s.Send(ev)
}

// timed runs one write under the stall timeout.
func (s *sender) timed(write func() error) error {
	s.mu.Lock()
	if s.stalled {
		s.mu.Unlock()
		return errStalled
	}
	s.began = time.Now()
	s.mu.Unlock()
	s.timer.Reset(s.stall)
	err := write()
	s.timer.Stop()
	s.mu.Lock()
	s.began = time.Time{}
	stalled := s.stalled
	s.mu.Unlock()
	if stalled {
		return errStalled
	}
	if err != nil {
		if ctxErr := s.ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return connect.NewError(connect.CodeUnknown, fmt.Errorf("error sending event: %w", err))
	}
	return nil
}

// stop ends the sender when its stream ends. If a write was given up, the
// write deadline it set is cleared again: the stream or connection is
// already failed by then, and a kept-alive HTTP/1.1 connection must not
// carry the deadline into its next request.
func (s *sender) stop() {
	s.timer.Stop()
	s.mu.Lock()
	stalled := s.stalled
	s.stalled = true // no write after the stream ended
	s.mu.Unlock()
	if stalled {
		_ = server.SetWriteDeadline(s.ctx, time.Time{})
	}
}

// abortWrite makes the write in progress on the response of ctx fail now.
// Without the response controller (never the case for requests served by
// internal/server) the only way left is to close the connection.
func abortWrite(ctx context.Context) {
	if err := server.SetWriteDeadline(ctx, time.Unix(1, 0)); err != nil {
		server.CloseConn(ctx)
	}
}

// pump sends first (the start event), then the subscription's items until
// the end, with a keepalive whenever nothing was sent for the interval the
// client asked for. It returns the error the stream ends with, nil after
// the end event. A subscriber disconnected for being too slow ends with
// aborted after the last whole message, with the offsets it received in
// the message and in the trailer (spec rpc.md §4.5).
//
// The events that are ready together are sent as one run: the sender
// holds while another item is ready after the one being sent, and the run
// is written with one flush when the subscription has nothing more (or the
// run reaches batchMax). A lone event is never held.
func (s *Service) pump(ctx context.Context, hdr, trailer http.Header, pty bool, sub *process.Subscription, first *pb.ProcessEvent, send func(*pb.ProcessEvent) error) (err error) {
	s.streams.Add(1)
	if s.busy != nil {
		s.busy()
	}
	defer func() {
		if s.streams.Add(-1) == 0 && s.idle != nil {
			s.idle()
		}
	}()
	snd := newSender(ctx, s.stall, s.abortWrite, batchFrom(ctx), send)
	defer snd.stop()
	ended := false
	defer func() {
		// A stream that ends otherwise than with its end event still
		// writes, within the send bound, the whole messages it gathered.
		if !ended {
			if rerr := snd.release(); err == nil && rerr != nil {
				err = toConnect(rerr)
			}
		}
	}()
	if err := snd.Send(first); err != nil {
		return toConnect(err)
	}
	ka := s.gate.NewTimer(keepalive.Interval(hdr))
	defer ka.Stop()
	for {
		it, ok := sub.Next()
		sent := false
		for ok {
			if err := ctx.Err(); err != nil {
				return toConnect(err)
			}
			switch {
			case it.Err != nil:
				return disconnected(it, pty, trailer)
			case it.End != nil:
				ended = true
				if err := snd.finish(endEvent(it.End)); err != nil {
					return toConnect(err)
				}
				// A process killed by the RPC's deadline (rpc.md §4.4) can
				// deliver its end a moment before the handler's context
				// notices the deadline: the stream still ends with
				// deadline_exceeded, whichever came first.
				if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
					return connect.NewError(connect.CodeDeadlineExceeded, context.DeadlineExceeded)
				}
				return nil
			}
			if sub.More() {
				snd.hold()
			}
			if err := snd.Send(dataEvent(it.Chunk)); err != nil {
				return toConnect(err)
			}
			sent = true
			it, ok = sub.Next() // the chunk's buffer is released here, after its send
		}
		if err := snd.release(); err != nil {
			return toConnect(err)
		}
		if sent {
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

// disconnected is the end of a subscription that was cut off: aborted,
// with the offsets the client received in the message and, in the syntax
// of the replay header, in the trailer Envd-Output-Offset.
func disconnected(it process.Item, pty bool, trailer http.Header) error {
	if !errors.Is(it.Err, process.ErrSlowSubscriber) {
		return toConnect(it.Err)
	}
	offsets := formatOffsets(it.Received, pty, false)
	if trailer != nil {
		trailer.Set(OutputOffsetHeader, offsets)
	}
	return connect.NewError(connect.CodeAborted, fmt.Errorf("%s (received %s)", process.ErrSlowSubscriber.Msg, offsets))
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
