package fsrpc

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/watch"
)

// toConnect maps a domain error to its Connect code (spec rpc.md §10). The
// message is the domain's, which is the client-facing text.
func toConnect(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	switch {
	case errors.Is(err, fsops.ErrListTooLarge), errors.Is(err, watch.ErrTooManyWatchers):
		return connect.NewError(connect.CodeResourceExhausted, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, watch.ErrOverflow):
		return connect.NewError(connect.CodeDataLoss, err)
	case errors.Is(err, watch.ErrQueueFull), errors.Is(err, watch.ErrEventBudget):
		return connect.NewError(connect.CodeAborted, err)
	case errors.Is(err, watch.ErrClosed):
		return connect.NewError(connect.CodeUnavailable, err)
	}
	code := connect.CodeInternal
	switch fsops.KindOf(err) {
	case fsops.KindNotFound:
		code = connect.CodeNotFound
	case fsops.KindAlreadyExists:
		code = connect.CodeAlreadyExists
	case fsops.KindInvalidArgument:
		code = connect.CodeInvalidArgument
	case fsops.KindFailedPrecondition:
		code = connect.CodeFailedPrecondition
	case fsops.KindPermissionDenied:
		code = connect.CodePermissionDenied
	}
	return connect.NewError(code, err)
}
