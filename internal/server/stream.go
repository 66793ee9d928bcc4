package server

import (
	"context"
	"errors"
	"net/http"
	"time"
)

type responseControllerKey struct{}

// withResponseController stores the request's http.ResponseController in
// its context, so that a Connect stream handler, which never sees the
// http.ResponseWriter, can bound its own writes (SetWriteDeadline).
func withResponseController(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := context.WithValue(r.Context(), responseControllerKey{}, http.NewResponseController(w))
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// ErrNoResponseController is returned by SetWriteDeadline for a context that
// did not come from a request served by this package.
var ErrNoResponseController = errors.New("no response controller in the request context")

// SetWriteDeadline bounds the writes of the response whose request context
// is ctx: a write still blocked at t fails. Over HTTP/2 this resets only that
// stream, never the connection that other streams share; over HTTP/1.1 the
// connection carries only this response and is closed after it. The zero
// time removes the deadline; a stream clears it before it ends so that a
// kept-alive HTTP/1.1 connection does not carry it into the next request
// (the server has no write timeout of its own that would reset it).
func SetWriteDeadline(ctx context.Context, t time.Time) error {
	rc, ok := ctx.Value(responseControllerKey{}).(*http.ResponseController)
	if !ok {
		return ErrNoResponseController
	}
	return rc.SetWriteDeadline(t)
}
