package processrpc

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"github.com/envd/envd/internal/process"
)

// codes maps the process manager's error kinds to Connect codes: the one
// place where domain errors become protocol errors (spec rpc.md §10).
var codes = map[process.Kind]connect.Code{
	process.KindInternal:         connect.CodeInternal,
	process.KindInvalidArgument:  connect.CodeInvalidArgument,
	process.KindNotFound:         connect.CodeNotFound,
	process.KindPermissionDenied: connect.CodePermissionDenied,
	process.KindUnknown:          connect.CodeUnknown,
	process.KindAborted:          connect.CodeAborted,
	process.KindUnavailable:      connect.CodeUnavailable,
}

// toConnect turns any error a handler is about to return into a Connect
// error with the right code; messages pass through unchanged.
func toConnect(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	var pe *process.Error
	if errors.As(err, &pe) {
		return connect.NewError(codes[pe.Kind], errors.New(pe.Msg))
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	}
	return connect.NewError(connect.CodeInternal, err)
}

// Messages fixed by the specification (rpc.md §4.7, §4.11, §4.12).
var (
	errInvalidInput    = connect.NewError(connect.CodeUnimplemented, errors.New("invalid input type"))
	errInvalidEvent    = connect.NewError(connect.CodeUnimplemented, errors.New("invalid event type"))
	errNoStartReceived = connect.NewError(connect.CodeFailedPrecondition, errors.New("no start event received"))
)
