// Package fsops owns the filesystem operations behind the filesystem
// service (spec rpc.md §6–§7): building EntryInfo-style descriptions of
// paths, Stat, MakeDir, Move, ListDir and Remove, and reading file metadata
// stored as user.e2b.* extended attributes. It knows nothing of RPC: errors
// are typed by Kind and mapped to wire codes by the caller.
package fsops

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
)

// Kind classifies an operation failure; the RPC layer maps each kind to one
// Connect code.
type Kind int

// Failure kinds.
const (
	KindInternal Kind = iota
	KindNotFound
	KindAlreadyExists
	KindInvalidArgument
	KindFailedPrecondition
	// KindPermissionDenied: a symlink refused by the protected-symlink rule
	// (spec http.md §12.5 step 2).
	KindPermissionDenied
)

func (k Kind) String() string {
	switch k {
	case KindNotFound:
		return "not found"
	case KindAlreadyExists:
		return "already exists"
	case KindInvalidArgument:
		return "invalid argument"
	case KindFailedPrecondition:
		return "failed precondition"
	case KindPermissionDenied:
		return "permission denied"
	}
	return "internal"
}

// Error is a failed filesystem operation: its kind and the message shown to
// the client. Err is the underlying cause, if any.
type Error struct {
	Kind Kind
	Msg  string
	Err  error
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an Error whose message is formatted; cause is kept for
// errors.Is/As.
func Errorf(kind Kind, cause error, format string, args ...any) *Error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...), Err: cause}
}

// KindOf returns the kind of err: the Kind of an *Error in its chain, else
// KindInternal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// notExist reports whether err means the path does not exist. ENOTDIR (a
// component of the path is a file) is treated the same way: the path cannot
// exist, and clients such as the E2B SDK's exists() expect "not found".
func notExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}
