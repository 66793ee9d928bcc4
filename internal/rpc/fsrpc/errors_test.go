package fsrpc

import (
	"errors"
	"testing"

	"connectrpc.com/connect"

	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/watch"
)

func TestToConnect(t *testing.T) {
	cases := []struct {
		err  error
		code connect.Code
		msg  string
	}{
		{fsops.Errorf(fsops.KindNotFound, nil, "file not found: x"), connect.CodeNotFound, "file not found: x"},
		{fsops.Errorf(fsops.KindAlreadyExists, nil, "directory already exists: /d"), connect.CodeAlreadyExists, "directory already exists: /d"},
		{fsops.Errorf(fsops.KindInvalidArgument, nil, "bad"), connect.CodeInvalidArgument, "bad"},
		{fsops.Errorf(fsops.KindFailedPrecondition, nil, "cycle"), connect.CodeFailedPrecondition, "cycle"},
		{fsops.Errorf(fsops.KindInternal, errors.New("eio"), "error renaming: eio"), connect.CodeInternal, "error renaming: eio"},
		{errors.New("anything else"), connect.CodeInternal, "anything else"},
		{watch.ErrOverflow, connect.CodeDataLoss, "watcher event buffer overflow: events were dropped; call GetWatcherEvents more often"},
		{watch.ErrQueueFull, connect.CodeAborted, watch.ErrQueueFull.Error()},
		{watch.ErrClosed, connect.CodeUnavailable, watch.ErrClosed.Error()},
		{connect.NewError(connect.CodeUnauthenticated, errors.New("no user specified")), connect.CodeUnauthenticated, "no user specified"},
	}
	for _, c := range cases {
		got := toConnect(c.err)
		var ce *connect.Error
		if !errors.As(got, &ce) || ce.Code() != c.code || ce.Message() != c.msg {
			t.Errorf("%v: got %v", c.err, got)
		}
	}
	// A watcher failure on a stream.
	err := streamError(errors.New("inotify event queue overflowed; events were lost"))
	if connect.CodeOf(err) != connect.CodeInternal || err.(*connect.Error).Message() != "watcher error: inotify event queue overflowed; events were lost" {
		t.Fatalf("%v", err)
	}
}
