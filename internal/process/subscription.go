package process

import (
	"sync"
	"time"
)

// Item is what a subscription yields next: a chunk of output, or, last,
// the end of the process or the error that ended the subscription.
type Item struct {
	Chunk Chunk
	// End is set on the final item of a process that ended.
	End *End
	// Err is set on the final item of a subscription that was cut off
	// (ErrSlowSubscriber).
	Err error
}

func payload(e entry) int { return len(e.Data) }

// Subscription is one consumer of a process's output: a Start or Connect
// stream. The consumer (one goroutine) takes items with Next and waits on
// Ready. Its queue holds at most queueMaxEvents or queueMaxBytes; when it is
// full the process's output waits while the consumer keeps taking items,
// and a consumer that takes nothing for the stall grace is cut off with
// ErrSlowSubscriber and removed from the process.
type Subscription struct {
	p *Process // nil when attached to a retention record

	mu      sync.Mutex
	backlog []entry // delivered first: unclaimed or replayed output
	// backlogUnclaimed: the backlog came from the unclaimed buffer, so
	// what is left of it goes back there on Close.
	backlogUnclaimed bool
	q                fifo // live output; bytes counts payload
	end              *End
	err              error
	closed           bool
	onAbort          func()
	ready            chan struct{}
	taken            uint64        // live items handed out by Next (progress, for the stall grace)
	room             chan struct{} // signalled when Next drains the queue below half
}

func newSubscription(p *Process, backlog []entry, unclaimed bool) *Subscription {
	return &Subscription{p: p, backlog: backlog, backlogUnclaimed: unclaimed, ready: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

// Ready receives a value whenever new items may be available.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

func (s *Subscription) wake() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Next returns the next item without waiting; ok is false when there is
// none yet. After a final item (End or Err) it keeps returning that item.
func (s *Subscription) Next() (it Item, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case len(s.backlog) > 0:
		e := s.backlog[0]
		s.backlog[0] = entry{}
		s.backlog = s.backlog[1:]
		return Item{Chunk: e.Chunk}, true
	case s.err != nil:
		return Item{Err: s.err}, true
	case s.q.len() > 0:
		it := Item{Chunk: s.q.pop(payload).Chunk}
		s.taken++
		if s.belowHalf(0) {
			select {
			case s.room <- struct{}{}:
			default:
			}
		}
		return it, true
	case s.end != nil:
		return Item{End: s.end}, true
	}
	return Item{}, false
}

// OnAbort registers f to be called (once, without locks held, from the
// goroutine producing output) when the subscription is cut off for being
// too slow. The consumer uses it to drop a connection whose writes are
// stuck. If the subscription was already cut off, f runs at once.
func (s *Subscription) OnAbort(f func()) {
	s.mu.Lock()
	aborted := s.err != nil
	if !aborted {
		s.onAbort = f
	}
	s.mu.Unlock()
	if aborted {
		f()
	}
}

// Close detaches the subscription; it is idempotent and safe at any time,
// also after the process ended.
func (s *Subscription) Close() {
	if s.p != nil {
		s.p.unsubscribe(s)
		return
	}
	s.mu.Lock()
	s.closed = true
	s.backlog = nil
	s.mu.Unlock()
}

// fits reports whether a chunk of size bytes can be queued now. A closed or
// cut-off subscription "fits": push drops it from the process.
func (s *Subscription) fits(size int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.err != nil {
		return true
	}
	return s.q.len() < queueMaxEvents && s.q.bytes+size <= queueMaxBytes
}

// belowHalf reports whether the queue, with size more bytes, is at most half
// full. Called with s.mu held.
func (s *Subscription) belowHalf(size int) bool {
	return s.q.len() <= queueMaxEvents/2 && s.q.bytes+size <= queueMaxBytes/2
}

// progress is the number of live items the consumer has taken so far.
func (s *Subscription) progress() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.taken
}

// awaitRoom waits, once the queue is full, until it has drained to half (so
// that the producer then queues a burst instead of trading single events
// with the consumer). It gives up, reporting false, when the consumer took
// nothing at all for grace; it returns true at once when done is closed
// (the process ended) or the subscription was closed.
func (s *Subscription) awaitRoom(size int, grace time.Duration, done <-chan struct{}) bool {
	t := time.NewTimer(grace)
	defer t.Stop()
	last := s.progress()
	for {
		s.mu.Lock()
		ok := s.closed || s.err != nil || s.belowHalf(size)
		s.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-s.room:
		case <-t.C:
			n := s.progress()
			if n == last {
				return s.fits(size)
			}
			last = n
			t.Reset(grace)
		case <-done:
			return true
		}
	}
}

// overflow cuts the subscription off and returns its abort hook (to run
// without locks). Called with the process lock held.
func (s *Subscription) overflow() func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.err != nil {
		return nil
	}
	return s.overflowLocked()
}

func (s *Subscription) overflowLocked() func() {
	s.err = ErrSlowSubscriber
	s.q = fifo{}
	s.wake()
	f := s.onAbort
	s.onAbort = nil
	return f
}

// push appends a live chunk. It reports false when the subscription must
// leave the process's set: it was closed, or it overflowed (then abort is
// the hook to run once the caller released its locks). Called with the
// process lock held.
func (s *Subscription) push(e entry) (keep bool, abort func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.err != nil {
		return false, nil
	}
	if s.q.len() >= queueMaxEvents || s.q.bytes+len(e.Data) > queueMaxBytes {
		return false, s.overflowLocked() // publish waits for room first; kept as a bound
	}
	s.q.push(e, len(e.Data))
	s.wake()
	return true, nil
}

// finish delivers the end after everything queued. Called with the process
// lock held.
func (s *Subscription) finish(end End) {
	s.mu.Lock()
	if !s.closed && s.err == nil {
		s.end = &end
	}
	s.onAbort = nil
	s.mu.Unlock()
	s.wake()
}

// detach marks the subscription closed and returns the output nobody has
// seen through it: what is left of an unclaimed backlog and the live output
// not yet handed out (nothing if it was cut off). Called with the process
// lock held.
func (s *Subscription) detach() []entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.onAbort = nil
	var out []entry
	if s.backlogUnclaimed {
		out = s.backlog
	}
	s.backlog = nil
	if s.err == nil {
		out = append(out, s.q.drain()...)
	}
	s.q = fifo{}
	return out
}
