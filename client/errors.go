package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"connectrpc.com/connect"
)

// Error is the error every Client method returns when envd refused a
// request or could not be reached. Use errors.As to inspect it:
//
//	var e *client.Error
//	if errors.As(err, &e) && e.Code == connect.CodeNotFound { ... }
//
// Both Status and Code are always set, so callers can test either: for plain
// HTTP endpoints Code is derived from the HTTP status; for RPCs, and for
// failures that got no HTTP response at all (connection refused, context
// ended), Status is the HTTP status the Connect protocol assigns to the code
// (stream errors travel inside an HTTP 200 response, so no status is seen on
// the wire there).
type Error struct {
	// Op names the failed operation, e.g. "Stat" or "POST /files".
	Op string
	// Status is the HTTP status of the failure (see above).
	Status int
	// Code is the Connect error code of the failure.
	Code connect.Code
	// Message is envd's error message, or a description of the transport
	// failure.
	Message string
	// Err is the underlying error (a *connect.Error, a network error, a
	// context error), if any.
	Err error

	httpStatus bool // Status was read from a plain HTTP response
}

// Error renders the operation, envd's message and the code (or HTTP
// status).
func (e *Error) Error() string {
	msg := e.Message
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	if e.httpStatus {
		return fmt.Sprintf("envd: %s: %s (HTTP %d)", e.Op, msg, e.Status)
	}
	return fmt.Sprintf("envd: %s: %s (%s)", e.Op, msg, e.Code)
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// CodeOf returns the Connect code of err: the Code of a *Error, of a
// *connect.Error, or connect.CodeUnknown for any other non-nil error; 0 for
// nil.
func CodeOf(err error) connect.Code {
	if err == nil {
		return 0
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return connect.CodeOf(err)
}

// IsNotFound reports whether err says that a path, process or watcher does
// not exist.
func IsNotFound(err error) bool { return CodeOf(err) == connect.CodeNotFound }

// IsAlreadyExists reports whether err says that a directory already exists
// (MakeDir).
func IsAlreadyExists(err error) bool { return CodeOf(err) == connect.CodeAlreadyExists }

// IsUnauthenticated reports whether err is an access-token, signature or
// user failure.
func IsUnauthenticated(err error) bool { return CodeOf(err) == connect.CodeUnauthenticated }

// codeStatus is the HTTP status the Connect protocol gives each code.
var codeStatus = map[connect.Code]int{
	connect.CodeCanceled:           499,
	connect.CodeUnknown:            500,
	connect.CodeInvalidArgument:    400,
	connect.CodeDeadlineExceeded:   504,
	connect.CodeNotFound:           404,
	connect.CodeAlreadyExists:      409,
	connect.CodePermissionDenied:   403,
	connect.CodeResourceExhausted:  429,
	connect.CodeFailedPrecondition: 400,
	connect.CodeAborted:            409,
	connect.CodeOutOfRange:         400,
	connect.CodeUnimplemented:      501,
	connect.CodeInternal:           500,
	connect.CodeUnavailable:        503,
	connect.CodeDataLoss:           500,
	connect.CodeUnauthenticated:    401,
}

// statusCode maps the HTTP statuses of envd's plain endpoints to the code a
// caller would test for.
func statusCode(status int) connect.Code {
	switch status {
	case 400:
		return connect.CodeInvalidArgument
	case 401:
		return connect.CodeUnauthenticated
	case 403:
		return connect.CodePermissionDenied
	case 404:
		return connect.CodeNotFound
	case 408, 504:
		return connect.CodeDeadlineExceeded
	case 409:
		return connect.CodeAlreadyExists
	case 406, 412, 416:
		return connect.CodeFailedPrecondition
	case 429, 507:
		return connect.CodeResourceExhausted
	case 501:
		return connect.CodeUnimplemented
	case 502, 503:
		return connect.CodeUnavailable
	}
	return connect.CodeUnknown
}

// rpcError wraps an error returned by a generated Connect client.
func rpcError(op string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return transportError(op, err)
	}
	code := ce.Code()
	msg := ce.Message()
	// A transport failure under a Connect error: keep the context error
	// recognisable.
	if errors.Is(err, context.Canceled) {
		code = connect.CodeCanceled
	} else if errors.Is(err, context.DeadlineExceeded) {
		code = connect.CodeDeadlineExceeded
	}
	return &Error{Op: op, Status: codeStatus[code], Code: code, Message: msg, Err: err}
}

// transportError wraps a failure to exchange an HTTP request at all.
func transportError(op string, err error) error {
	code := connect.CodeUnavailable
	switch {
	case errors.Is(err, context.Canceled):
		code = connect.CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	}
	return &Error{Op: op, Status: codeStatus[code], Code: code, Message: err.Error(), Err: err}
}

// maxErrorBody bounds how much of an error response is read.
const maxErrorBody = 64 << 10

// httpError builds the error for an unexpected HTTP response and closes its
// body. envd's own handlers answer {"code":<status>,"message":"..."}; the
// Basic-auth check answers a Connect error {"code":"unauthenticated",...};
// /init answers plain text or nothing.
func httpError(op string, resp *http.Response) error {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &Error{Op: op, Status: resp.StatusCode, Code: statusCode(resp.StatusCode), httpStatus: true}
	var j struct {
		Code    json.RawMessage `json:"code"`
		Message *string         `json:"message"`
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") && json.Unmarshal(body, &j) == nil && j.Message != nil {
		e.Message = *j.Message
		var name string
		if json.Unmarshal(j.Code, &name) == nil {
			var c connect.Code
			if c.UnmarshalText([]byte(name)) == nil {
				e.Code = c
			}
		}
	} else if text := strings.TrimSpace(string(body)); text != "" {
		e.Message = text
	}
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	if e.Message == "" {
		e.Message = "HTTP status " + strconv.Itoa(resp.StatusCode)
	}
	return e
}
