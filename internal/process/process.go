package process

import (
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

// Read sizes of one data event (spec rpc.md §4.3).
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

	// inMu serialises writes to stdin or the terminal, so one blocked write
	// holds up only later writes to the same process.
	inMu sync.Mutex

	mu        sync.Mutex
	stdin     *os.File // nil: disabled, closed, or PTY
	subs      map[*Subscription]struct{}
	unclaimed unclaimed
	ring      *ring
	ended     bool

	readers   atomic.Int32
	eof       chan struct{} // closed when every output stream reached EOF
	sigOnce   sync.Once
	signalled chan struct{} // closed by SendSignal or the deadline
	deadline  *time.Timer
	done      chan struct{} // closed after the end was distributed
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
		p.unclaimed.take() // claimed by this subscriber's replay
	} else {
		backlog, isUnclaimed = p.unclaimed.take(), true
		start = p.ring.next
	}
	s := newSubscription(p, backlog, isUnclaimed)
	p.subs[s] = struct{}{}
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
}

// publish distributes one read. With no subscriber it goes to the
// unclaimed buffer and never waits. A subscriber whose queue is full holds
// the output back while it keeps taking events (the pipe then slows the
// process down, as a terminal would); one that takes nothing for the stall
// grace is cut off, so a dead peer delays nobody for longer than that.
func (p *Process) publish(s Stream, data []byte) {
	var aborts []func()
	for {
		p.mu.Lock()
		if p.ended {
			p.mu.Unlock()
			return
		}
		full := p.fullSubscriber(len(data))
		if full == nil {
			break // p.mu stays held for the distribution below
		}
		p.mu.Unlock()
		if !full.awaitRoom(len(data), p.m.grace, p.done) {
			p.cutOff(full)
		}
	}
	e := p.ring.add(s, data)
	if len(p.subs) == 0 {
		p.unclaimed.add(e)
	}
	for sub := range p.subs {
		keep, abort := sub.push(e)
		if !keep {
			delete(p.subs, sub)
		}
		if abort != nil {
			aborts = append(aborts, abort)
		}
	}
	p.mu.Unlock()
	for _, f := range aborts {
		p.m.safely("abort slow subscriber", f)
	}
}

// fullSubscriber returns a subscriber that cannot take size more bytes
// now, or nil. Called with p.mu held.
func (p *Process) fullSubscriber(size int) *Subscription {
	for sub := range p.subs {
		if !sub.fits(size) {
			return sub
		}
	}
	return nil
}

// cutOff removes a subscriber that stalled with a full queue and ends its
// stream with ErrSlowSubscriber.
func (p *Process) cutOff(sub *Subscription) {
	p.mu.Lock()
	_, member := p.subs[sub]
	delete(p.subs, sub)
	var abort func()
	if member {
		abort = sub.overflow()
	}
	p.mu.Unlock()
	if abort != nil {
		p.m.safely("abort slow subscriber", abort)
	}
}

// read copies one output stream into publish until end of file. It does
// not close f: closing a terminal's master hangs up its session, and a
// program that closed its descriptors is not necessarily gone yet (cat
// closes stdin and stdout before it exits), so wait closes the outputs only
// after the leader was reaped.
func (p *Process) read(s Stream, f *os.File, size int) {
	defer func() {
		if r := recover(); r != nil {
			p.m.log.Error("panic in output reader", "pid", p.pid, "panic", fmt.Sprint(r))
		}
		if p.readers.Add(-1) == 0 {
			close(p.eof)
		}
	}()
	buf := make([]byte, size)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			p.publish(s, append([]byte(nil), buf[:n]...))
		}
		if err != nil {
			// io.EOF for pipes; EIO once the terminal's last slave closed;
			// os.ErrClosed when the waiter gave up on end of file.
			if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EIO) && !errors.Is(err, os.ErrClosed) {
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

// WriteStdin writes to the stdin pipe.
func (p *Process) WriteStdin(b []byte) error {
	if p.pty != nil {
		return newError(KindInternal, nil, msgStdinIsTTY)
	}
	p.inMu.Lock()
	defer p.inMu.Unlock()
	p.mu.Lock()
	f := p.stdin
	p.mu.Unlock()
	if f == nil {
		return newError(KindInternal, nil, msgStdinClosed)
	}
	if _, err := f.Write(b); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return newError(KindInternal, err, msgStdinClosed)
		}
		return newError(KindInternal, err, "error writing to stdin: error writing to stdin of process '%d': %v", p.pid, err)
	}
	return nil
}

// WritePTY writes to the terminal, as if typed.
func (p *Process) WritePTY(b []byte) error {
	if p.pty == nil {
		return newError(KindInternal, nil, msgTTYNotAssigned)
	}
	p.inMu.Lock()
	defer p.inMu.Unlock()
	if _, err := p.pty.Write(b); err != nil {
		return newError(KindInternal, err, "error writing to tty: %v", err)
	}
	return nil
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
