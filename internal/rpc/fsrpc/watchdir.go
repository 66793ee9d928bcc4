package fsrpc

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/keepalive"
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

	snd := newSender(stream.Send, s.sendStall, func() { server.CloseConn(ctx) })
	defer snd.stop()
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
			if err := snd.send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: filesystemEvent(ev)}}); err != nil {
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
	case errors.Is(err, watch.ErrQueueFull), errors.Is(err, watch.ErrClosed):
		return toConnect(err)
	}
	return toConnect(fsops.Errorf(fsops.KindInternal, err, "watcher error: %v", err))
}

// sender writes stream messages with a stall guard: if one send does not
// complete within stall (the client stopped reading and the TCP window is
// full, or the peer vanished), onStall closes the connection, which fails
// the send, and the stream ends with aborted.
type sender struct {
	write   func(*filesystem.WatchDirResponse) error
	stall   time.Duration
	timer   *time.Timer
	stalled atomic.Bool
}

func newSender(write func(*filesystem.WatchDirResponse) error, stall time.Duration, onStall func()) *sender {
	s := &sender{write: write, stall: stall}
	s.timer = time.AfterFunc(time.Hour, func() {
		s.stalled.Store(true)
		onStall()
	})
	s.timer.Stop()
	return s
}

func (s *sender) send(msg *filesystem.WatchDirResponse) error {
	s.timer.Reset(s.stall)
	err := s.write(msg)
	s.timer.Stop()
	if s.stalled.Load() {
		return connect.NewError(connect.CodeAborted, fmt.Errorf("subscriber too slow: sending stalled for %s; watch again", s.stall))
	}
	if err != nil {
		return connect.NewError(connect.CodeUnknown, err)
	}
	return nil
}

func (s *sender) stop() { s.timer.Stop() }
