package process

import (
	"errors"
	"fmt"
)

// Kind classifies a domain error; the RPC layer maps each kind to one
// Connect code (spec rpc.md §10), so this package never names protocol codes.
type Kind int

const (
	// KindInternal: I/O on a process failed (stdin, tty, kill, resize).
	KindInternal Kind = iota
	// KindInvalidArgument: the request cannot be carried out as given
	// (cwd missing, tilde of another user, spawn failure).
	KindInvalidArgument
	// KindNotFound: no process matches the selector.
	KindNotFound
	// KindPermissionDenied: envd runs unprivileged and the request names
	// another user.
	KindPermissionDenied
	// KindUnknown: closing stdin of a PTY process (E2B's code for it).
	KindUnknown
	// KindAborted: a subscriber was disconnected for being too slow.
	KindAborted
	// KindUnavailable: envd is shutting down and starts nothing new.
	KindUnavailable
)

// Error is the error type of every failure this package reports to callers.
type Error struct {
	Kind Kind
	Msg  string
	// Err is the underlying cause, if any (already part of Msg).
	Err error
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

func newError(k Kind, cause error, format string, args ...any) *Error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, args...), Err: cause}
}

// KindOf returns the kind of err, or KindInternal when err is not an *Error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// ErrSlowSubscriber ends a subscription whose queue overflowed or whose
// sender stalled (spec rpc.md §4.5).
var ErrSlowSubscriber = &Error{Kind: KindAborted, Msg: "subscriber too slow: output queue overflow; reconnect with Connect"}

// ErrShuttingDown refuses new processes once TerminateAll has begun.
var ErrShuttingDown = &Error{Kind: KindUnavailable, Msg: "envd is shutting down"}

// Messages fixed by the specification (rpc.md §4.10–§4.13).
const (
	msgTTYNotAssigned   = "error writing to tty: tty not assigned to process — input should be written to the stdin, not the tty"
	msgStdinIsTTY       = "error writing to stdin: tty assigned to process — input should be written to the pty, not the stdin"
	msgStdinClosed      = "error writing to stdin: stdin not enabled or closed"
	msgResizeNotTTY     = "error resizing tty: tty not assigned to process"
	msgCloseStdinOfTTY  = "error closing stdin: cannot close stdin for PTY process — send Ctrl+D (0x04) instead"
	msgReplayBeyondData = "replay offset %s=%d is beyond the %d bytes the process has written to %s"
)

func notFound(sel Selector) *Error {
	if sel.ByTag {
		return newError(KindNotFound, nil, "process with tag %s not found", sel.Tag)
	}
	return newError(KindNotFound, nil, "process with pid %d not found", sel.PID)
}
