package processrpc

import (
	"context"
	"net/http"
	"sync"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/process/processconnect"
)

// batchMax bounds what one stream gathers before it writes (docs/processes.md,
// "Sending output"): eight 32 KiB data events with their envelopes.
const batchMax = 8*(32<<10) + 1024

// batchPool holds the gathering buffers of all streams. A stream takes
// one only while it gathers a run of ready events and gives it back when
// the run is written, so an idle stream holds none.
type batchPool struct{ p sync.Pool }

func newBatchPool() *batchPool {
	bp := &batchPool{}
	bp.p.New = func() any {
		b := make([]byte, 0, batchMax)
		return &b
	}
	return bp
}

type batchKey struct{}

// batchWriter is the response writer of a Start or Connect stream. While
// the stream's sender holds it (a run of events that are all ready), the
// messages connect-go writes are gathered and its per-message flushes are
// skipped; release writes the run at once and flushes once. Without a
// hold every write and flush goes straight through, so a lone event (an
// interactive shell's echo) leaves exactly as before. Every data event
// stays its own message of one read (spec rpc.md §4.3): only the writes
// and flushes are fewer. Only the stream's own goroutine uses it.
type batchWriter struct {
	http.ResponseWriter
	pool *batchPool
	held bool
	buf  *[]byte // gathered bytes; nil when none
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (b *batchWriter) Unwrap() http.ResponseWriter { return b.ResponseWriter }

func (b *batchWriter) Write(p []byte) (int, error) {
	if !b.held {
		return b.ResponseWriter.Write(p)
	}
	if b.buf != nil && len(*b.buf)+len(p) > batchMax {
		if err := b.drain(); err != nil {
			return 0, err
		}
	}
	if len(p) > batchMax {
		return b.ResponseWriter.Write(p)
	}
	if b.buf == nil {
		b.buf = b.pool.p.Get().(*[]byte)
	}
	*b.buf = append(*b.buf, p...)
	return len(p), nil
}

// Flush is skipped while held.
func (b *batchWriter) Flush() {
	if !b.held {
		_ = http.NewResponseController(b.ResponseWriter).Flush()
	}
}

func (b *batchWriter) hold() { b.held = true }

// release ends a hold: what was gathered is written and flushed.
func (b *batchWriter) release() error {
	b.held = false
	if err := b.drain(); err != nil {
		return err
	}
	return http.NewResponseController(b.ResponseWriter).Flush()
}

// drain writes what was gathered and gives the buffer back.
func (b *batchWriter) drain() error {
	if b.buf == nil {
		return nil
	}
	buf := b.buf
	b.buf = nil
	_, err := b.ResponseWriter.Write(*buf)
	*buf = (*buf)[:0]
	b.pool.p.Put(buf)
	return err
}

// batchFrom returns the stream's batchWriter, nil when the handler was not
// wrapped by Handler.
func batchFrom(ctx context.Context) *batchWriter {
	bw, _ := ctx.Value(batchKey{}).(*batchWriter)
	return bw
}

// batching wraps the service's HTTP handler so that the Start and Connect
// streams write through a batchWriter. What a stream still holds when
// connect-go is done (its end event, followed by connect-go's end of the
// stream) is written after the handler returned, and net/http flushes it
// with the end of the response: one write for both.
func (s *Service) batching(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isEventStream(r.URL.Path) {
			h.ServeHTTP(w, r)
			return
		}
		bw := &batchWriter{ResponseWriter: w, pool: s.batches}
		defer func() {
			bw.held = false
			_ = bw.drain() // an error here is the client's going away; nothing is left to tell it
		}()
		h.ServeHTTP(bw, r.WithContext(context.WithValue(r.Context(), batchKey{}, bw)))
	})
}

// Handler returns the service's path and HTTP handler, with the event
// streams' writes batched (batching).
func (s *Service) Handler(opts ...connect.HandlerOption) (string, http.Handler) {
	path, h := processconnect.NewProcessHandler(s, opts...)
	return path, s.batching(h)
}

func isEventStream(path string) bool {
	return path == processconnect.ProcessStartProcedure || path == processconnect.ProcessConnectProcedure
}
