package fsrpc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/keepalive"
	"github.com/envd/envd/internal/rpc"
	"github.com/envd/envd/internal/server"
	"github.com/envd/envd/internal/watch"
)

// Bounds of a WatchDir stream (spec rpc.md §9.3, the rule of §4.5): events
// wait in a bounded queue for the client; when it is full, or one message
// takes longer than DefaultSendStall to write, the stream ends with aborted.
// Watch events are small and come in bursts (an unpacked archive produces
// thousands at once), so the queue holds more events than a process
// subscriber's; 8192 events stay within a few MiB even with entries.
const (
	DefaultQueue     = 8192
	DefaultSendStall = 30 * time.Second
)

// WatchDir streams the events of a directory (spec rpc.md §9.3).
func (s *Service) WatchDir(ctx context.Context, req *connect.Request[filesystem.WatchDirRequest], stream *connect.ServerStream[filesystem.WatchDirResponse]) error {
	c, err := s.caller(ctx)
	if err != nil {
		return err
	}
	p, err := c.resolve(req.Msg.GetPath())
	if err != nil {
		return err
	}
	ws, err := s.watchers.Stream(p, watch.Options{
		Recursive:          req.Msg.GetRecursive(),
		IncludeEntry:       req.Msg.GetIncludeEntry(),
		AllowNetworkMounts: req.Msg.GetAllowNetworkMounts(),
	}, s.queue)
	if err != nil {
		return toConnect(err)
	}
	defer ws.Close()

	snd := newSender(stream.Send, s.sendStall, func(t time.Time) error { return server.SetWriteDeadline(ctx, t) })
	// However the stream ends, connect-go writes its end after this
	// returns: bound that write too, and clear the deadline once it is done
	// so that a kept-alive HTTP/1.1 connection does not carry it on.
	defer func() {
		if snd.setDeadline(time.Now().Add(s.sendStall)) == nil {
			rpc.AfterResponse(ctx, func() { _ = snd.setDeadline(time.Time{}) })
		}
	}()
	if err := snd.send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Start{Start: &filesystem.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	s.log.Debug("watch stream started", "path", p, "recursive", req.Msg.GetRecursive())

	ka := s.gate.NewTimer(keepalive.Interval(req.Header()))
	defer ka.Stop()
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
			}
			return connect.NewError(connect.CodeCanceled, ctx.Err())
		case ev := <-ws.Events():
			err := snd.send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: filesystemEvent(ev)}})
			ws.Taken(ev)
			if err != nil {
				return err
			}
			ka.Reset()
		case <-ka.C:
			if err := snd.send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Keepalive{Keepalive: &filesystem.WatchDirResponse_KeepAlive{}}}); err != nil {
				return err
			}
			ka.Reset()
		case <-ws.Done():
			return streamError(ws.Err())
		}
	}
}

// streamError maps why a watch stream's watcher stopped.
func streamError(err error) error {
	switch {
	case errors.Is(err, watch.ErrQueueFull), errors.Is(err, watch.ErrEventBudget), errors.Is(err, watch.ErrClosed):
		return toConnect(err)
	}
	return toConnect(fsops.Errorf(fsops.KindInternal, err, "watcher error: %v", err))
}

// sender writes stream messages with a stall guard: each message must be
// written within stall, or its write fails (the client stopped reading and
// the flow-control window is full, or the peer vanished). The guard is the
// response's write deadline, so over HTTP/2 only this stream is reset and
// the streams sharing its connection go on; over HTTP/1.1 the connection
// carries only this stream and is closed. The deadline is cleared after
// each message: an HTTP/2 write deadline resets the stream when it passes
// even if nothing is being written, and a stream may be quiet for long.
type sender struct {
	write       func(*filesystem.WatchDirResponse) error
	stall       time.Duration
	setDeadline func(time.Time) error
}

func newSender(write func(*filesystem.WatchDirResponse) error, stall time.Duration, setDeadline func(time.Time) error) *sender {
	return &sender{write: write, stall: stall, setDeadline: setDeadline}
}

func (s *sender) send(msg *filesystem.WatchDirResponse) error {
	start := time.Now()
	_ = s.setDeadline(start.Add(s.stall))
	err := s.write(msg)
	_ = s.setDeadline(time.Time{})
	if err != nil && time.Since(start) >= s.stall {
		return connect.NewError(connect.CodeAborted, fmt.Errorf("subscriber too slow: sending stalled for %s; watch again", s.stall))
	}
	if err != nil {
		return connect.NewError(connect.CodeUnknown, err)
	}
	return nil
}
