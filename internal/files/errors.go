// Package files owns file transfer (spec http.md §10–§13, D9): content-coding
// negotiation for downloads and uploads, opening files for download, the
// atomic upload writer (temporary file in the target directory, ownership
// and metadata applied by descriptor, a rename announced to the watchers,
// then an fchmod and an ftruncate of the final file so that watchers see
// E2B's CREATE, CHMOD, WRITE — spec D17), multipart and raw uploads,
// metadata validation, and compose. It streams everything: no file is ever
// held whole in memory.
package files

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"time"
)

// Kind classifies a transfer failure; the HTTP layer maps each kind to one
// status.
type Kind int

// Failure kinds.
const (
	KindInternal   Kind = iota // 500
	KindBadRequest             // 400
	KindNotFound               // 404
	KindStalled                // 408
	KindNoSpace                // 507
	KindForbidden              // 403: a symlink refused by the protected-symlink rule
)

// Error is a failed transfer step with the message shown to the client.
type Error struct {
	Kind Kind
	Msg  string
	Err  error
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

func errorf(kind Kind, cause error, format string, args ...any) *Error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...), Err: cause}
}

// StallError is returned by a request body whose client sent nothing for
// After (spec http.md §12.5 step 7).
type StallError struct{ After time.Duration }

func (e *StallError) Error() string {
	return fmt.Sprintf("upload stalled: no data received for %ds", int(e.After/time.Second))
}

// noSpace reports ENOSPC or EDQUOT.
func noSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

func notExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}
