package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"
)

// ErrBodyTimeout is the error of a bounded request body (BoundBodyRead)
// that did not arrive in time.
var ErrBodyTimeout = errors.New("request body not received in time")

// BoundBodyRead returns body with an absolute deadline: once its first Read
// starts, the whole body must arrive within d, or reads fail with an error
// wrapping ErrBodyTimeout (spec D19: a client sending a small body slowly
// must not hold a goroutine, a connection or a lock for long). The deadline
// is armed lazily so that a handler that reads only when it is its turn
// (/init, under its lock) is not charged for the wait. It is removed when
// the body ends or is closed: the server's own read of the connection after
// the body (which notices a vanished client) must not time out while the
// handler still works, since that would cancel the request's context.
//
// ctx must be the request context of a request served by this package; for
// any other, body is returned unchanged.
func BoundBodyRead(ctx context.Context, body io.ReadCloser, d time.Duration) io.ReadCloser {
	rc, ok := ctx.Value(responseControllerKey{}).(*http.ResponseController)
	if !ok || body == nil || body == http.NoBody {
		return body
	}
	return &boundedBody{body: body, rc: rc, d: d}
}

type boundedBody struct {
	body io.ReadCloser
	rc   *http.ResponseController
	d    time.Duration

	mu          sync.Mutex
	armed, done bool
}

func (b *boundedBody) Read(p []byte) (int, error) {
	b.arm()
	n, err := b.body.Read(p)
	switch {
	case err == io.EOF:
		b.disarm()
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = fmt.Errorf("%w (within %v)", ErrBodyTimeout, b.d)
	}
	return n, err
}

func (b *boundedBody) Close() error { return b.body.Close() }

func (b *boundedBody) arm() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.armed || b.done {
		return
	}
	b.armed = true
	_ = b.rc.SetReadDeadline(time.Now().Add(b.d))
}

func (b *boundedBody) disarm() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.armed && !b.done {
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	b.done = true
}
