package rpc

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"connectrpc.com/connect"
)

// Guard bounds what request bodies of the Connect services can cost (D19):
// each procedure has a limit on the decompressed size of one message, and
// room for every message is reserved in a shared Budget before it is read.
// A message over its limit, or one that finds no room in time, ends the RPC
// with resource_exhausted before anything is allocated for it.
//
// connect-go limits decompressed messages too, but only after inflating
// them into memory up to the limit, with one limit per handler and no
// budget across requests. So the Guard sits in front of the handlers and
// decompresses gzip itself, counting the size before it keeps anything;
// connect-go then sees only uncompressed messages (the gzip flag of an
// envelope cleared, Content-Encoding of a unary request removed). Response
// compression is untouched.
type Guard struct {
	budget       *Budget
	limits       map[string]int64
	defaultLimit int64
}

// GuardOptions configure a Guard; zero values mean envd's limits (rpc.go).
type GuardOptions struct {
	// Budget is shared by every request (default: BudgetBytes).
	Budget *Budget
	// Limits maps procedures ("/process.Process/Start") to their message
	// limit (default: MaxMessageBytes for the bulk-data procedures).
	Limits map[string]int64
	// DefaultLimit is the limit of every other procedure (default:
	// SmallMessageBytes).
	DefaultLimit int64
}

// NewGuard returns a guard.
func NewGuard(opts GuardOptions) *Guard {
	g := &Guard{budget: opts.Budget, limits: opts.Limits, defaultLimit: opts.DefaultLimit}
	if g.budget == nil {
		g.budget = NewBudget(BudgetLimits{Total: BudgetBytes, Reserve: BudgetReserveBytes, SmallBytes: BudgetSmallBytes, Wait: BudgetWait})
	}
	if g.limits == nil {
		g.limits = messageLimits()
	}
	if g.defaultLimit <= 0 {
		g.defaultLimit = SmallMessageBytes
	}
	return g
}

// Budget is the guard's shared budget.
func (g *Guard) Budget() *Budget { return g.budget }

// Wrap guards a Connect handler as returned by a generated New…Handler, so
// that it can be passed straight to mux.Handle.
func (g *Guard) Wrap(path string, h http.Handler) (string, http.Handler) {
	return path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limit, ok := g.limits[r.URL.Path]
		if !ok {
			limit = g.defaultLimit
		}
		t := &ticket{b: g.budget, ctx: r.Context(), procedure: r.URL.Path}
		defer t.finish()
		raw := r.Body
		if raw == nil {
			raw = http.NoBody
		}
		body := &guardedBody{raw: raw, t: t, limit: limit, procedure: r.URL.Path, contentLength: r.ContentLength}
		ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
		ct = strings.ToLower(strings.TrimSpace(ct))
		switch {
		case strings.HasPrefix(ct, "application/grpc"): // gRPC and gRPC-Web
			body.enveloped = true
			body.gzip = r.Header.Get("Grpc-Encoding") == "gzip"
		case strings.HasPrefix(ct, "application/connect+"):
			body.enveloped = true
			body.gzip = r.Header.Get("Connect-Content-Encoding") == "gzip"
		default: // Connect unary: the whole body is one message
			if r.Header.Get("Content-Encoding") == "gzip" {
				body.gzip = true
				r.Header.Del("Content-Encoding")
			}
		}
		r2 := r.WithContext(context.WithValue(r.Context(), ticketKey{}, t))
		r2.Body = body
		h.ServeHTTP(w, r2)
	})
}

type ticketKey struct{}

// AfterResponse arranges for fn to run once the response of the RPC whose
// context is ctx has been written (or the request failed), for resources
// that a response holds until it is sent (a ListDir's entries). It reports
// false, and does nothing, outside a guarded request: the caller then
// releases them itself.
func AfterResponse(ctx context.Context, fn func()) bool {
	t, ok := ctx.Value(ticketKey{}).(*ticket)
	if !ok {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.after = append(t.after, fn)
	return true
}

// Interceptor ends the reservation of a server stream's request message when
// the handler sends its first response: the request has been acted on
// (for Start: the process spawned), and a stream that lasts for hours must
// not hold budget meanwhile. Unary requests hold theirs until they are
// answered; client streams until the next message is read.
func (g *Guard) Interceptor() connect.Interceptor { return guardInterceptor{} }

type guardInterceptor struct{}

func (guardInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (guardInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (guardInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if t, ok := ctx.Value(ticketKey{}).(*ticket); ok && conn.Spec().StreamType == connect.StreamTypeServer {
			conn = &releaseOnSend{StreamingHandlerConn: conn, t: t}
		}
		return next(ctx, conn)
	}
}

type releaseOnSend struct {
	connect.StreamingHandlerConn
	t    *ticket
	once sync.Once
}

func (c *releaseOnSend) Send(msg any) error {
	c.once.Do(c.t.done)
	return c.StreamingHandlerConn.Send(msg)
}

// Reads beyond a reservation (a message larger than its estimate) grow it
// in steps of at most chunkBytes.
const chunkBytes = 64 << 10

// inflateBound is the most that n bytes of gzip can inflate to: deflate
// cannot do better than 1032:1. It only sizes reservations; a stream that
// inflated further would grow its reservation or fail, never go unaccounted.
func inflateBound(n int64) int64 {
	const ratio = 1032
	if n > (1<<62)/ratio {
		return 1 << 62
	}
	return n*ratio + 1024
}

// guardedBody is the request body connect-go reads: room for each message
// is reserved before it is read, messages are held to the limit, gzip is
// inflated here. It is read by one goroutine at a time (connect-go reads a
// request body sequentially).
type guardedBody struct {
	raw           io.ReadCloser
	t             *ticket
	limit         int64
	procedure     string
	enveloped     bool
	gzip          bool
	contentLength int64 // of the body; -1 when not known

	err error // sticky: once failed, every read fails the same way
	zr  *gzip.Reader

	// The current message: bytes reserved for it and handed over so far.
	reserved int64
	total    int64

	// Unary: the body as handed over (inflated if gzip).
	unary io.Reader

	// Enveloped: the prefix still to hand over, the payload bytes left of
	// the current message, and where they come from.
	prefix  []byte
	left    int64
	payload io.Reader // nil: straight from raw
	started bool      // a message has been read (the next prefix ends it)
}

func (b *guardedBody) Close() error { return b.raw.Close() }

func (b *guardedBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	var n int
	var err error
	if b.enveloped {
		n, err = b.readEnveloped(p)
	} else {
		n, err = b.readUnary(p)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		b.err = err
		b.t.done() // what the message holds is garbage from here on
	}
	return n, err
}

func (b *guardedBody) errTooLarge(size int64) error {
	if size < 0 {
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
			"message is larger than the limit of %d bytes for %s", b.limit, b.procedure))
	}
	return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
		"message size %d is larger than the limit of %d bytes for %s", size, b.limit, b.procedure))
}

func errDecompress(err error) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("decompress: %w", err))
}

// wrapDecompress keeps the guard's own errors (a limit hit while reading
// the compressed body) and reports anything else as corrupt input.
func wrapDecompress(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	return errDecompress(err)
}

// begin reserves room for a message estimated at n bytes.
func (b *guardedBody) begin(n int64) error {
	b.reserved, b.total = n, 0
	if n == 0 {
		return nil
	}
	return b.t.reserve(n)
}

// readInto reads from r into p, within the current message's reservation
// (grown by a chunk when the message outgrows it).
func (b *guardedBody) readInto(r io.Reader, p []byte) (int, error) {
	room := b.reserved - b.total
	if room <= 0 {
		grow := min(int64(len(p)), chunkBytes)
		if err := b.t.extend(grow); err != nil {
			return 0, err
		}
		b.reserved += grow
		room = grow
	}
	n, err := r.Read(p[:min(int64(len(p)), room)])
	b.total += int64(n)
	b.t.use(int64(n))
	return n, err
}

func (b *guardedBody) readUnary(p []byte) (int, error) {
	if b.unary == nil {
		if err := b.startUnary(); err != nil {
			return 0, err
		}
	}
	if len(p) == 0 {
		return 0, nil
	}
	// One byte past the limit tells a message at the limit from one over it.
	if b.total > b.limit {
		return 0, b.errTooLarge(-1)
	}
	n, err := b.readInto(b.unary, p[:min(int64(len(p)), b.limit+1-b.total)])
	if b.total > b.limit {
		return 0, b.errTooLarge(-1)
	}
	if err != nil && !errors.Is(err, io.EOF) && b.gzip {
		err = wrapDecompress(err)
	}
	return n, err
}

// startUnary reserves room for a unary message: its Content-Length if
// known, else its limit; for gzip, what that length can inflate to.
func (b *guardedBody) startUnary() error {
	cl := b.contentLength
	if cl > b.limit {
		return b.errTooLarge(cl)
	}
	estimate := b.limit
	if cl >= 0 {
		estimate = cl
		if b.gzip {
			estimate = min(b.limit, inflateBound(cl))
		}
	}
	if err := b.begin(estimate); err != nil {
		return err
	}
	b.unary = b.raw
	if !b.gzip {
		return nil
	}
	// The compressed bytes pass through gzip's small buffer; only what it
	// inflates is held, by connect-go. The compressed body is held to the
	// limit as well, as connect-go would.
	zr, err := gzip.NewReader(&limitedReader{r: b.raw, n: b.limit, err: b.errTooLarge(-1)})
	if errors.Is(err, io.EOF) {
		b.unary = http.NoBody // an empty body is the empty message, as in connect-go
		return nil
	}
	if err != nil {
		return wrapDecompress(err)
	}
	b.unary = zr
	return nil
}

func (b *guardedBody) readEnveloped(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(b.prefix) == 0 && b.left == 0 {
		if err := b.nextEnvelope(); err != nil {
			return 0, err
		}
	}
	if len(b.prefix) > 0 {
		n := copy(p, b.prefix)
		b.prefix = b.prefix[n:]
		return n, nil
	}
	p = p[:min(int64(len(p)), b.left)]
	var n int
	var err error
	if b.payload == nil {
		n, err = b.readInto(b.raw, p)
	} else {
		// Inflated bytes were accounted for while counting them.
		n, err = b.payload.Read(p)
	}
	b.left -= int64(n)
	if errors.Is(err, io.EOF) {
		if b.left > 0 {
			return n, io.ErrUnexpectedEOF
		}
		err = nil
	}
	if b.left == 0 {
		b.payload = nil
	}
	return n, err
}

// nextEnvelope reads the next envelope's prefix. The previous message has
// been handled by now (connect-go reads the next one only when asked to),
// so its reservation ends. A gzip-compressed message is read and inflated
// here, so that its real size is known, and accounted for, before
// connect-go sees it.
func (b *guardedBody) nextEnvelope() error {
	if b.started {
		b.t.done()
	}
	var pre [5]byte
	if _, err := io.ReadFull(b.raw, pre[:]); err != nil {
		return err // io.EOF at a message boundary is the end of the stream
	}
	b.started = true
	flags := pre[0]
	size := int64(binary.BigEndian.Uint32(pre[1:]))
	if size > b.limit {
		return b.errTooLarge(size)
	}
	if flags&flagCompressed == 0 || !b.gzip || size == 0 {
		if err := b.begin(size); err != nil {
			return err
		}
		b.prefix, b.left = pre[:], size
		return nil
	}
	if err := b.begin(size + min(b.limit, inflateBound(size))); err != nil {
		return err
	}
	compressed, err := b.readCompressed(size)
	if err != nil {
		return err
	}
	inflated, err := b.inflatedSize(compressed)
	if err != nil {
		return err
	}
	if over := size + inflated - b.reserved; over > 0 {
		if err := b.t.extend(over); err != nil {
			return err
		}
	}
	b.t.shrink(size + inflated)
	b.t.use(inflated)
	if err := b.zreset(bytes.NewReader(compressed)); err != nil {
		return errDecompress(err)
	}
	binary.BigEndian.PutUint32(pre[1:], uint32(inflated))
	pre[0] = flags &^ flagCompressed
	b.prefix, b.left, b.payload = pre[:], inflated, b.zr
	return nil
}

// flagCompressed marks an envelope whose payload is compressed.
const flagCompressed = 0x01

// readCompressed reads a compressed payload of size bytes (reserved). The
// buffer grows as bytes arrive, so a sender that stalls holds only what it
// sent.
func (b *guardedBody) readCompressed(size int64) ([]byte, error) {
	buf := make([]byte, 0, min(size, chunkBytes))
	for int64(len(buf)) < size {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(size, 2*int64(cap(buf))))
			copy(grown, buf)
			buf = grown
		}
		n, err := b.raw.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		b.t.use(int64(n))
		if err != nil && int64(len(buf)) < size {
			if errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return buf, nil
}

// inflatedSize inflates compressed once without keeping the output: a
// bomb is refused when it passes the limit, having cost CPU only.
func (b *guardedBody) inflatedSize(compressed []byte) (int64, error) {
	if err := b.zreset(bytes.NewReader(compressed)); err != nil {
		return 0, errDecompress(err)
	}
	n, err := io.Copy(io.Discard, io.LimitReader(b.zr, b.limit+1))
	if err != nil {
		return 0, errDecompress(err)
	}
	if n > b.limit {
		return 0, b.errTooLarge(-1)
	}
	return n, nil
}

func (b *guardedBody) zreset(r io.Reader) error {
	if b.zr == nil {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return err
		}
		b.zr = zr
		return nil
	}
	return b.zr.Reset(r)
}

// limitedReader fails with err once more than n bytes were read.
type limitedReader struct {
	r   io.Reader
	n   int64
	err error
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		return 0, l.err
	}
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	if l.n < 0 {
		return 0, l.err
	}
	return n, err
}
