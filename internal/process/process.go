package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Read sizes of one data event (spec rpc.md §4.3): one read is one event.
const (
	pipeReadSize = 32 << 10
	ptyReadSize  = 16 << 10
)

// eofGrace is how long envd still waits for the output to reach end of
// file after a signalled process's leader was reaped. SendSignal and the
// deadline kill the whole group, whose pipes then close at once; the grace
// only keeps the last bytes those processes wrote, and bounds the wait when
// something outside the group holds the pipes (spec rpc.md §4.9).
const eofGrace = 200 * time.Millisecond

// Config is a process's configuration as the client sent it; List returns
// it unchanged.
type Config struct {
	Cmd  string
	Args []string
	Envs map[string]string
	// Cwd is nil when the client sent none.
	Cwd *string
}

// Size is a terminal size in character cells.
type Size struct {
	Cols, Rows uint32
}

// Info describes a live process for List.
type Info struct {
	PID    uint32
	Tag    *string
	Config Config
}

// Process is one started process, from its registration in the table until
// its end was distributed. Its output readers publish to its subscribers or,
// when it has none, to its unclaimed-output buffer.
type Process struct {
	m       *Manager
	pid     int
	tag     *string
	cfg     Config
	pty     *os.File             // master side; nil for pipes
	outputs [numStreams]*os.File // read ends: stdout and stderr pipes, or the master

	// input is the lock (a one-slot semaphore) serialising writes to stdin
	// or the terminal, so one blocked write holds up only later writes to
	// the same process; a waiter gives up with its context.
	input chan struct{}

	mu        sync.Mutex
	stdin     *os.File // nil: disabled, closed, or PTY
	subs      map[*Subscription]struct{}
	unclaimed unclaimed
	ring      *ring
	ended     bool
	// paused: every subscriber's queue was full, so output waits until one
	// has drained to half (publish).
	paused bool
	subSeq uint64 // last Subscription.seq handed out

	// Wake-up of output readers waiting for room (publish). flowMu is a
	// leaf lock; flowCh is nil when nobody waits.
	flowMu    sync.Mutex
	flowCh    chan struct{}
	flowArmed atomic.Bool
	// lastTake is when a subscriber last took an item, in nanoseconds
	// since epoch (monotonic), for the stall grace.
	epoch    time.Time
	lastTake atomic.Int64

	readers atomic.Int32
	// outputsClosed: wait closed the read ends (a reader's error then is
	// not worth a log line).
	outputsClosed atomic.Bool
	eof           chan struct{} // closed when every output stream reached EOF
	sigOnce       sync.Once
	signalled     chan struct{} // closed by SendSignal or the deadline
	deadline      *time.Timer
	done          chan struct{} // closed after the end was distributed
}

// PID is the process id (also its process-group id).
func (p *Process) PID() uint32 { return uint32(p.pid) }

// IsPTY reports whether the process runs on a pseudo-terminal.
func (p *Process) IsPTY() bool { return p.pty != nil }

// Done is closed when the process has ended and its end was distributed.
func (p *Process) Done() <-chan struct{} { return p.done }

func (p *Process) info() Info { return Info{PID: uint32(p.pid), Tag: p.tag, Config: p.cfg} }

// subscribe adds a subscriber. For Connect it first hands over the
// unclaimed output (or, with replay, the retained output after from).
// Called with the manager lock held, so the process cannot end meanwhile.
func (p *Process) subscribe(replay *Offsets) (*Subscription, Offsets, Offsets, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var (
		backlog     []entry
		start, gap  Offsets
		isUnclaimed bool
	)
	if replay != nil {
		if err := checkReplay(*replay, p.ring.next); err != nil {
			return nil, start, gap, err
		}
		backlog, start, gap = p.ring.since(*replay)
		unrefAll(p.unclaimed.take()) // claimed by this subscriber's replay
	} else {
		backlog, isUnclaimed = p.unclaimed.take(), true
		start = p.ring.next
	}
	s := newSubscription(p, backlog, isUnclaimed, start)
	p.attach(s)
	return s, start, gap, nil
}

func checkReplay(from, next Offsets) error {
	for s := range from {
		if from[s] > next[s] {
			st := Stream(s)
			return newError(KindInvalidArgument, nil, msgReplayBeyondData, st, from[s], next[s], st)
		}
	}
	return nil
}

func (p *Process) unsubscribe(s *Subscription) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, member := p.subs[s]
	delete(p.subs, s)
	left := s.detach()
	// The last subscriber's undelivered output was seen by nobody: keep it
	// for the next Connect like any other unclaimed output. (While anyone
	// was attached the unclaimed buffer stayed empty, so order holds.)
	if member && !p.ended && len(p.subs) == 0 {
		for _, e := range left {
			p.unclaimed.add(e)
		}
	}
	unrefAll(left)
	if member {
		p.wakeFlow() // the output may have been waiting for this one
	}
}

// publish distributes one read; see publishBatch.
func (p *Process) publish(s Stream, data []byte) {
	p.publishBatch([]entry{{Chunk: Chunk{Stream: s, Data: data}}})
}

// publishBatch distributes consecutive reads, in order, each as one chunk
// (spec rpc.md §4.5). The chunks that may go on at once are distributed
// under one lock and the subscribers are woken once, after the batch; a
// chunk that must wait is handled by publishWait. Whoever keeps a chunk
// takes a reference of its own; the caller keeps its references.
func (p *Process) publishBatch(chunks []entry) {
	for len(chunks) > 0 {
		p.mu.Lock()
		if p.ended {
			p.mu.Unlock()
			return
		}
		cut, n := 0, 0
		for n < len(chunks) && p.mayProceed(len(chunks[n].Data)) {
			cut += p.distribute(chunks[n])
			n++
		}
		if n > 0 {
			for sub := range p.subs {
				sub.wake()
			}
		}
		p.mu.Unlock()
		p.logCut(cut, "output queue overflow")
		chunks = chunks[n:]
		if len(chunks) > 0 {
			p.publishWait(chunks[0])
			chunks = chunks[1:]
		}
	}
}

// publishWait distributes one read that could not go on at once. With no
// subscriber it goes to the unclaimed buffer. Otherwise the output is
// paced by the fastest subscriber:
//
//   - while every subscriber has room, the chunk is queued for all;
//   - a subscriber whose queue is full is disconnected at once when another
//     one that has room has overtaken it: it joined earlier (so it took
//     more since the full one joined), or it has taken at least leadMin
//     since it joined. The second condition keeps a Connect that was just
//     opened, whose room says nothing about its speed (a client that never
//     reads first fills its socket buffers), from cutting the reader the
//     output is paced by; a fast newcomer leads once it took leadMin;
//   - otherwise reading stops (the child blocks on its pipe) until a
//     subscriber that may overtake the full ones (or, with no full queue
//     left, any subscriber) has drained its queue to half, or a subscriber
//     joins or leaves; the half-way mark keeps the reader from trading
//     single events with a consumer;
//   - only when no subscriber has taken anything for the stall grace are
//     the stalled subscribers disconnected; the output then goes on to the
//     rest, or into the unclaimed buffer.
func (p *Process) publishWait(e entry) {
	size := len(e.Data)
	var (
		wake  <-chan struct{}
		timer *time.Timer
		since time.Time // when this read began to wait
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		p.mu.Lock()
		if p.ended {
			p.mu.Unlock()
			return
		}
		if p.mayProceed(size) {
			cut := p.distribute(e)
			for sub := range p.subs {
				sub.wake()
			}
			p.mu.Unlock()
			p.logCut(cut, "output queue overflow")
			return
		}
		if wake == nil {
			// Arm the wake-up, then look again: a take between the check
			// above and arming would otherwise go unnoticed.
			p.mu.Unlock()
			wake = p.armFlow()
			continue
		}
		p.paused = true
		p.mu.Unlock()
		if timer == nil {
			since = time.Now()
			timer = time.NewTimer(p.m.grace)
		}
		select {
		case <-wake:
			wake = nil
		case <-p.done:
		case <-timer.C:
			if idle := p.idle(since); idle < p.m.grace {
				timer.Reset(p.m.grace - idle)
			} else {
				p.cutStalled(size)
				since = time.Now()
				timer.Reset(p.m.grace)
			}
		}
	}
}

// mayProceed reports whether a chunk of size bytes can be distributed now
// (publish): every subscriber has room, or every full one has been
// overtaken by one with room. Once the output had to wait, "room" means a
// queue at most half full with the chunk. Called with p.mu held.
func (p *Process) mayProceed(size int) bool {
	var (
		anyRoom, provenRoom bool
		firstRoom           = ^uint64(0) // seq of the oldest subscriber with room
		lastFull            uint64       // seq of the newest full subscriber
		full                bool
	)
	for sub := range p.subs {
		r := sub.room(size)
		if !r.fits {
			full = true
			lastFull = max(lastFull, sub.seq)
			continue
		}
		if r.half || !p.paused {
			anyRoom = true
			provenRoom = provenRoom || r.proven
			firstRoom = min(firstRoom, sub.seq)
		}
	}
	switch {
	case !full:
		return anyRoom || len(p.subs) == 0
	case provenRoom:
		return true
	}
	return firstRoom < lastFull
}

// attach adds a subscriber to the set. Called with p.mu held.
func (p *Process) attach(s *Subscription) {
	p.subSeq++
	s.seq = p.subSeq
	p.subs[s] = struct{}{}
	p.wakeFlow() // a new subscriber may let waiting output go on
}

// distribute records a chunk in the ring and queues it for every
// subscriber that has room; the others are cut off. The caller wakes the
// subscribers and logs the number cut (returned). Called with p.mu held.
func (p *Process) distribute(e entry) int {
	p.paused = false
	e = p.ring.add(e)
	if len(p.subs) == 0 {
		p.unclaimed.add(e)
	}
	cut := 0
	for sub := range p.subs {
		if !sub.push(e) {
			delete(p.subs, sub)
			sub.cut()
			cut++
		}
	}
	return cut
}

func (p *Process) logCut(n int, reason string) {
	if n > 0 {
		p.m.log.Info("subscriber disconnected", "pid", p.pid, "reason", reason, "subscribers", n)
	}
}

// cutStalled disconnects, once no subscriber took anything for the stall
// grace, every subscriber that holds the output back.
func (p *Process) cutStalled(size int) {
	p.mu.Lock()
	cut := 0
	for sub := range p.subs {
		if !sub.room(size).half {
			delete(p.subs, sub)
			sub.cut()
			cut++
		}
	}
	p.paused = false
	p.mu.Unlock()
	p.logCut(cut, "no output taken for "+p.m.grace.String())
}

// took records that a subscriber took an item; half reports that its queue
// is now at most half full, which wakes a waiting output reader.
func (p *Process) took(half bool) {
	p.lastTake.Store(int64(time.Since(p.epoch)))
	if half && p.flowArmed.Load() {
		p.wakeFlow()
	}
}

// idle is how long no subscriber has taken anything, counted from since at
// the earliest.
func (p *Process) idle(since time.Time) time.Duration {
	last := p.epoch.Add(time.Duration(p.lastTake.Load()))
	if last.Before(since) {
		last = since
	}
	return time.Since(last)
}

// armFlow returns a channel that is closed at the next wake-up of waiting
// output readers (a queue drained to half, a subscriber joined or left).
func (p *Process) armFlow() <-chan struct{} {
	p.flowMu.Lock()
	defer p.flowMu.Unlock()
	if p.flowCh == nil {
		p.flowCh = make(chan struct{})
		p.flowArmed.Store(true)
	}
	return p.flowCh
}

// wakeFlow wakes every waiting output reader. flowMu is a leaf lock: it may
// be taken with any other lock held.
func (p *Process) wakeFlow() {
	p.flowMu.Lock()
	defer p.flowMu.Unlock()
	if p.flowCh != nil {
		close(p.flowCh)
		p.flowCh = nil
		p.flowArmed.Store(false)
	}
}

// read copies one output stream into publish until end of file, in
// batches of the reads that are ready (outputReader.next). It does not
// close f: closing a terminal's master hangs up its session, and a program
// that closed its descriptors is not necessarily gone yet (cat closes stdin
// and stdout before it exits), so wait closes the outputs only after the
// leader was reaped.
func (p *Process) read(s Stream, f *os.File, pool *bufPool) {
	var r *outputReader
	defer func() {
		if rec := recover(); rec != nil {
			p.m.log.Error("panic in output reader", "pid", p.pid, "panic", fmt.Sprint(rec))
		}
		if r != nil {
			r.close()
		}
		if p.readers.Add(-1) == 0 {
			close(p.eof)
		}
	}()
	r, err := newOutputReader(p, s, f, pool)
	if err != nil {
		p.m.log.Debug("output read failed", "pid", p.pid, "stream", s.String(), "error", err.Error())
		return
	}
	var batch []entry
	for {
		batch, err = r.next(batch[:0])
		if len(batch) > 0 {
			p.publishBatch(batch)
			unrefAll(batch)
			clear(batch)
		}
		if err != nil {
			// io.EOF for pipes; EIO once the terminal's last slave closed;
			// the descriptor closed when the waiter gave up on end of file.
			if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EIO) && !p.outputsClosed.Load() {
				p.m.log.Debug("output read failed", "pid", p.pid, "stream", s.String(), "error", err.Error())
			}
			return
		}
	}
}

// wait turns the reaped status into the end: after end of file of every
// output stream, or shortly after the reap when the process was signalled.
func (p *Process) wait(status <-chan unix.WaitStatus) {
	defer func() {
		if r := recover(); r != nil {
			p.m.log.Error("panic while finishing process", "pid", p.pid, "panic", fmt.Sprint(r))
		}
	}()
	ws := <-status
	select {
	case <-p.eof:
	case <-p.signalled:
		t := time.NewTimer(eofGrace)
		select {
		case <-p.eof:
		case <-t.C:
		}
		t.Stop()
	}
	p.outputsClosed.Store(true)
	for _, f := range p.outputs {
		if f != nil {
			_ = f.Close() // also unblocks a reader still waiting for EOF
		}
	}
	p.m.finish(p, endOf(ws))
}

func (p *Process) markSignalled() { p.sigOnce.Do(func() { close(p.signalled) }) }

// Signal sends sig to the process's whole group. A group that is gone is
// not an error. After any signal the end no longer waits for end of file
// once the leader is reaped.
func (p *Process) Signal(sig syscall.Signal) error {
	p.markSignalled()
	p.mu.Lock()
	ended := p.ended
	p.mu.Unlock()
	if ended {
		return nil
	}
	if err := unix.Kill(-p.pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return newError(KindInternal, err, "error sending signal: %v", err)
	}
	return nil
}

// WriteStdin writes to the stdin pipe. The write ends with ctx (the
// client's deadline or its going away), also while it waits for an earlier
// write to the same process: the bytes the pipe took by then stay written,
// the rest is dropped, and the error says how many were written.
func (p *Process) WriteStdin(ctx context.Context, b []byte) error {
	if p.pty != nil {
		return newError(KindInternal, nil, msgStdinIsTTY)
	}
	if err := p.lockInput(ctx); err != nil {
		return fmt.Errorf("error writing to stdin: gave up waiting for an earlier write to process '%d': %w", p.pid, err)
	}
	defer p.unlockInput()
	p.mu.Lock()
	f := p.stdin
	p.mu.Unlock()
	if f == nil {
		return newError(KindInternal, nil, msgStdinClosed)
	}
	n, err := writeCtx(ctx, f, b)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded):
		p.m.log.Debug("input write abandoned", "pid", p.pid, "written", n, "size", len(b))
		return fmt.Errorf("error writing to stdin: gave up after writing %d of %d bytes to process '%d': %w", n, len(b), p.pid, ctx.Err())
	case errors.Is(err, os.ErrClosed):
		return newError(KindInternal, err, msgStdinClosed)
	}
	return newError(KindInternal, err, "error writing to stdin: error writing to stdin of process '%d': %v", p.pid, err)
}

// WritePTY writes to the terminal, as if typed. It ends with ctx like
// WriteStdin.
func (p *Process) WritePTY(ctx context.Context, b []byte) error {
	if p.pty == nil {
		return newError(KindInternal, nil, msgTTYNotAssigned)
	}
	if err := p.lockInput(ctx); err != nil {
		return fmt.Errorf("error writing to tty: gave up waiting for an earlier write to process '%d': %w", p.pid, err)
	}
	defer p.unlockInput()
	n, err := writeCtx(ctx, p.pty, b)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded):
		p.m.log.Debug("input write abandoned", "pid", p.pid, "written", n, "size", len(b))
		return fmt.Errorf("error writing to tty: gave up after writing %d of %d bytes to process '%d': %w", n, len(b), p.pid, ctx.Err())
	}
	return newError(KindInternal, err, "error writing to tty: %v", err)
}

func (p *Process) lockInput(ctx context.Context) error {
	select {
	case p.input <- struct{}{}:
		return nil
	default:
	}
	select {
	case p.input <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *Process) unlockInput() { <-p.input }

// writeCtx writes b to f (non-blocking, registered with Go's poller: the
// stdin pipe and the terminal master are) and gives up when ctx ends by
// moving f's write deadline to the past. Writes to one file are serialised
// by the caller, so the deadline belongs to this write alone; it is cleared
// before returning.
func writeCtx(ctx context.Context, f *os.File, b []byte) (int, error) {
	if ctx.Done() == nil {
		return f.Write(b)
	}
	if ctx.Err() != nil {
		return 0, os.ErrDeadlineExceeded // the client is gone: write nothing
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		_ = f.SetWriteDeadline(time.Unix(1, 0))
	})
	n, err := f.Write(b)
	if !stop() {
		<-fired
		_ = f.SetWriteDeadline(time.Time{})
	}
	return n, err
}

// CloseStdin closes the stdin pipe; the child reads end of file. Closing a
// closed or disabled stdin succeeds.
func (p *Process) CloseStdin() error {
	if p.pty != nil {
		return newError(KindUnknown, nil, msgCloseStdinOfTTY)
	}
	p.mu.Lock()
	f := p.stdin
	p.stdin = nil
	p.mu.Unlock()
	if f != nil {
		_ = f.Close() // also unblocks a write stuck on a full pipe
	}
	return nil
}

// Resize sets the terminal size; the kernel sends SIGWINCH to the
// terminal's foreground process group.
func (p *Process) Resize(sz Size) error {
	if p.pty == nil {
		return newError(KindInternal, nil, msgResizeNotTTY)
	}
	if err := setWinsize(p.pty, sz); err != nil {
		return newError(KindInternal, err, "error resizing tty: %v", err)
	}
	return nil
}

// release closes what the process still holds once it ended.
func (p *Process) release() {
	p.mu.Lock()
	f := p.stdin
	p.stdin = nil
	p.mu.Unlock()
	if f != nil {
		_ = f.Close()
	}
	if p.pty != nil {
		_ = p.pty.Close() // also unblocks a write the terminal never took
	}
}
