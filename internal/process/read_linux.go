package process

import (
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// The output read path (docs/processes.md, "Reading output").
const (
	// readBatch: while output is flowing (a read filled its buffer), up to
	// this many reads that need no waiting are made before the batch is
	// published. Every read stays one data event of at most pipeReadSize
	// or ptyReadSize bytes (spec rpc.md §4.3); the batch only lets a
	// subscriber's sender take them together and write them with one
	// flush.
	readBatch = 8

	// pipeGrowSize is the capacity a stdout or stderr pipe is given once
	// output flows through it (at most /proc/sys/fs/pipe-max-size): a
	// producer faster than one read can then write ahead instead of
	// blocking every 64 KiB, which would cost a wake-up of each side per
	// 64 KiB.
	pipeGrowSize = 1 << 20
	// pipeGrowTotal bounds the enlarged pipe capacity of all processes
	// together. A full pipe holds kernel memory, and envd, as root, is not
	// held to the per-user pipe limits (pipe-user-pages-soft/-hard).
	pipeGrowTotal = 16 << 20
)

// bufPool hands out read buffers of one size. A process's readers take a
// buffer only once their descriptor is readable, and give it back right
// after the read or hand it over as a chunk, so a process that is waiting
// for output holds no buffer. A buffer handed over comes back when the last
// holder of its chunk lets go (chunkBuf), so a flowing stream reads into
// the same few buffers instead of allocating (and zeroing) one per read.
type bufPool struct {
	size int
	p    sync.Pool
	// overReleased counts references dropped below zero (a bug; tests
	// assert it stays 0); made counts the buffers allocated.
	overReleased atomic.Int64
	made         atomic.Int64
}

func newBufPool(size int) *bufPool {
	bp := &bufPool{size: size}
	bp.p.New = func() any {
		bp.made.Add(1)
		return &chunkBuf{b: make([]byte, size), pool: bp}
	}
	return bp
}

// get returns a buffer that nothing references, with one reference: the
// caller's.
func (bp *bufPool) get() *chunkBuf {
	c := bp.p.Get().(*chunkBuf)
	c.refs.Store(1)
	return c
}

// keep turns the first n bytes of a buffer from get into a chunk's data,
// with the caller's reference on the returned buffer (nil when the data
// was copied). A read that filled most of its buffer keeps the buffer (no
// copy); a shorter one is copied to its own size and the buffer goes back
// at once, so that many small chunks (an interactive shell) never hold
// whole read buffers. Chunks are accounted for by their capacity (cost),
// so a kept buffer costs at most a third more than its payload.
func (bp *bufPool) keep(c *chunkBuf, n int) ([]byte, *chunkBuf) {
	if n >= len(c.b)-len(c.b)/4 {
		return c.b[:n], c
	}
	d := make([]byte, n)
	copy(d, c.b)
	c.unref()
	return d, nil
}

// pipeMaxSize is the kernel's /proc/sys/fs/pipe-max-size, or 0 when it
// cannot be read (then pipes are never grown).
func pipeMaxSize() int {
	b, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// outputReader reads one output stream of a process.
type outputReader struct {
	p    *Process
	s    Stream
	rc   syscall.RawConn
	pool *bufPool
	// grown: the pipe was considered for growing (once per reader);
	// reserved is what it holds of the manager's pipe budget.
	grown    bool
	reserved int
}

func newOutputReader(p *Process, s Stream, f *os.File, pool *bufPool) (*outputReader, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &outputReader{p: p, s: s, rc: rc, pool: pool}, nil
}

// next waits until the descriptor is readable and appends to batch the
// reads that follow without waiting: one read, or while reads fill their
// buffer, up to readBatch of them. Each entry carries the caller's
// reference on its buffer. It returns io.EOF at end of file (EIO of a
// terminal whose last slave closed is reported as is), or the error of the
// descriptor being closed.
func (r *outputReader) next(batch []entry) ([]entry, error) {
	var rerr error
	err := r.rc.Read(func(fd uintptr) bool {
		for len(batch) < readBatch {
			c := r.pool.get()
			n, err := unix.Read(int(fd), c.b)
			switch {
			case err == unix.EINTR:
				c.unref()
				continue
			case err == unix.EAGAIN:
				c.unref()
				return len(batch) > 0 // nothing yet: wait for the poller
			case err != nil:
				c.unref()
				rerr = err
				return true
			case n == 0:
				c.unref()
				rerr = io.EOF
				return true
			}
			full := n == len(c.b)
			data, buf := r.pool.keep(c, n)
			batch = append(batch, entry{Chunk: Chunk{Stream: r.s, Data: data}, buf: buf})
			if !full {
				return true // the pipe is most likely empty now
			}
			r.grow(fd)
		}
		return true
	})
	if err != nil {
		return batch, err
	}
	return batch, rerr
}

// grow enlarges a pipe whose reads fill their buffer (output is flowing)
// to pipeGrowSize, bounded by pipe-max-size and the manager's budget. A
// refusal (EPERM for an unprivileged envd over the per-user limits, EBUSY)
// leaves the pipe as it is.
func (r *outputReader) grow(fd uintptr) {
	if r.grown || r.s == PTY {
		return
	}
	r.grown = true
	m := r.p.m
	size := m.pipeGrow
	if size <= 0 {
		return
	}
	if cur, err := unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0); err != nil || cur >= size {
		return
	}
	if !m.pipeB.reserve(size) {
		return
	}
	if _, err := unix.FcntlInt(fd, unix.F_SETPIPE_SZ, size); err != nil {
		m.pipeB.release(size)
		return
	}
	r.reserved = size
}

// close gives back what the reader holds of the pipe budget.
func (r *outputReader) close() {
	if r.reserved > 0 {
		r.p.m.pipeB.release(r.reserved)
		r.reserved = 0
	}
}
