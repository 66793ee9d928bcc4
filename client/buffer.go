package client

import (
	"io"
	"sync"
)

// outputBufferSize bounds the bytes queued for one output reader of a
// process. When it is full, the goroutine receiving the process's events
// waits (so the stream applies backpressure) until the reader catches up or
// is closed.
const outputBufferSize = 1 << 20

// outputBuffer connects the goroutine that receives a process's events to
// the io.ReadCloser the caller reads one output stream from. Unlike io.Pipe
// it holds up to max bytes, so that a caller reading stdout and stderr one
// after the other does not stall the other stream on every chunk.
type outputBuffer struct {
	mu      sync.Mutex
	cond    sync.Cond
	chunks  [][]byte
	size    int
	max     int
	werr    error // set when the writer is done: io.EOF or the stream's error
	rclosed bool  // the reader closed: further output is dropped
}

func newOutputBuffer(max int) *outputBuffer {
	b := &outputBuffer{max: max}
	b.cond.L = &b.mu
	return b
}

// write queues a copy of p, waiting while the buffer is full. It never
// fails: output for a closed reader, or after finish, is dropped.
func (b *outputBuffer) write(p []byte) {
	if len(p) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.size > 0 && b.size+len(p) > b.max && !b.rclosed && b.werr == nil {
		b.cond.Wait()
	}
	if b.rclosed || b.werr != nil {
		return
	}
	b.chunks = append(b.chunks, append([]byte(nil), p...))
	b.size += len(p)
	b.cond.Broadcast()
}

// finish ends the stream: readers get err (io.EOF for a normal end) after
// the queued bytes, and a blocked write returns.
func (b *outputBuffer) finish(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.werr == nil {
		b.werr = err
	}
	b.cond.Broadcast()
}

// Read implements io.Reader.
func (b *outputBuffer) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.size == 0 && b.werr == nil && !b.rclosed {
		b.cond.Wait()
	}
	if b.rclosed {
		return 0, io.ErrClosedPipe
	}
	if b.size == 0 {
		return 0, b.werr
	}
	if len(p) == 0 {
		return 0, nil
	}
	n := 0
	for n < len(p) && len(b.chunks) > 0 {
		c := copy(p[n:], b.chunks[0])
		n += c
		if c == len(b.chunks[0]) {
			b.chunks[0] = nil
			b.chunks = b.chunks[1:]
		} else {
			b.chunks[0] = b.chunks[0][c:]
		}
	}
	b.size -= n
	b.cond.Broadcast()
	return n, nil
}

// Close discards queued and future output of this stream.
func (b *outputBuffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rclosed = true
	b.chunks = nil
	b.size = 0
	b.cond.Broadcast()
	return nil
}
