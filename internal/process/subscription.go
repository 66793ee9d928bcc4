package process

import (
	"sync"
)

// Item is what a subscription yields next: a chunk of output, or, last,
// the end of the process or the error that ended the subscription.
type Item struct {
	Chunk Chunk
	// End is set on the final item of a process that ended.
	End *End
	// Err is set on the final item of a subscription that was disconnected
	// (ErrSlowSubscriber).
	Err error
	// Received, on an Err item, is per stream the offset of the first byte
	// this subscription did not hand out: the consumer has everything
	// before it that the subscription ever delivered, so a Connect that
	// replays from these offsets continues without loss or duplicate
	// (spec rpc.md §4.5).
	Received Offsets
}

func payload(e entry) int { return len(e.Data) }

// Subscription is one consumer of a process's output: a Start or Connect
// stream. The consumer (one goroutine) takes items with Next and waits on
// Ready. Its queue holds at most queueMaxEvents or queueMaxBytes. The
// process (publish) decides when a subscriber is too slow and cuts it off
// with ErrSlowSubscriber; see Process.publish for the rule.
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
	ready            chan struct{}
	// next is per stream the offset of the next byte the subscription
	// would hand out (Item.Received).
	next Offsets
	// seq orders the subscriptions of a process by when they joined
	// (Process.attach); taken counts the payload bytes the consumer took.
	// Together they say whether this subscriber may overtake a full one
	// (Process.mayProceed).
	seq   uint64
	taken uint64
	// out is the entry of the item handed out last: its data stays valid
	// (referenced) until the next Next or Close.
	out entry
}

// newSubscription returns a subscription that delivers backlog first and
// then live output starting at offsets start. It takes over the backlog
// entries' references.
func newSubscription(p *Process, backlog []entry, unclaimed bool, start Offsets) *Subscription {
	s := &Subscription{p: p, backlog: backlog, backlogUnclaimed: unclaimed, ready: make(chan struct{}, 1), next: start}
	// The first byte of a stream this subscription hands out is the first
	// backlog chunk of that stream, if there is one (unclaimed output
	// precedes start and may have holes before it).
	var seen [numStreams]bool
	for _, e := range backlog {
		if !seen[e.Stream] {
			seen[e.Stream] = true
			s.next[e.Stream] = e.Offset
		}
	}
	return s
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
// A subscription that was cut off yields its error at once, before any
// backlog or queued output. The data of an item is valid only until the
// next call of Next or Close: its read buffer may then be reused.
func (s *Subscription) Next() (it Item, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.out.unref()
	s.out = entry{}
	switch {
	case s.err != nil:
		return Item{Err: s.err, Received: s.next}, true
	case len(s.backlog) > 0:
		e := s.backlog[0]
		s.backlog[0] = entry{}
		s.backlog = s.backlog[1:]
		s.advance(e)
		s.out = e
		if s.p != nil {
			s.p.took(false)
		}
		return Item{Chunk: e.Chunk}, true
	case s.q.len() > 0:
		e := s.q.pop(payload)
		s.advance(e)
		s.out = e
		if s.p != nil {
			s.p.took(s.belowHalf(0))
		}
		return Item{Chunk: e.Chunk}, true
	case s.end != nil:
		return Item{End: s.end}, true
	}
	return Item{}, false
}

// More reports whether Next has an item now.
func (s *Subscription) More() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err != nil || len(s.backlog) > 0 || s.q.len() > 0 || s.end != nil
}

func (s *Subscription) advance(e entry) {
	s.next[e.Stream] = e.Offset + uint64(len(e.Data))
	s.taken += uint64(len(e.Data))
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
	unrefAll(s.backlog)
	s.backlog = nil
	s.out.unref()
	s.out = entry{}
	s.mu.Unlock()
}

// roomInfo is a subscription's state as publish sees it.
type roomInfo struct {
	fits   bool // a chunk of the size can be queued now
	half   bool // with it, the queue is at most half full
	proven bool // the consumer took more than any transport could buffer
}

// room describes the subscription for a chunk of size bytes. Called with
// the process lock held.
func (s *Subscription) room(size int) roomInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return roomInfo{
		fits:   s.q.len() < queueMaxEvents && s.q.bytes+size <= queueMaxBytes,
		half:   s.belowHalf(size),
		proven: s.taken >= leadMin,
	}
}

// belowHalf reports whether the queue, with size more bytes, is at most half
// full. Called with s.mu held.
func (s *Subscription) belowHalf(size int) bool {
	return s.q.len() <= queueMaxEvents/2 && s.q.bytes+size <= queueMaxBytes/2
}

// cut disconnects the subscription: its queue is dropped and the consumer's
// next item is ErrSlowSubscriber with the offsets it reached. Called with
// the process lock held, after the subscription left the process's set.
func (s *Subscription) cut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.err != nil || s.end != nil {
		return
	}
	s.err = ErrSlowSubscriber
	unrefAll(s.q.drain())
	unrefAll(s.backlog)
	s.backlog = nil
	s.wake()
}

// push appends a live chunk, with a reference of its own, if it fits;
// false means the subscription must be cut off (or was closed). The caller
// wakes the consumer (once per batch of chunks). Called with the process
// lock held.
func (s *Subscription) push(e entry) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.err != nil {
		return false
	}
	if s.q.len() >= queueMaxEvents || s.q.bytes+len(e.Data) > queueMaxBytes {
		return false
	}
	e.ref()
	s.q.push(e, len(e.Data))
	return true
}

// finish delivers the end after everything queued. Called with the process
// lock held.
func (s *Subscription) finish(end End) {
	s.mu.Lock()
	if !s.closed && s.err == nil {
		s.end = &end
	}
	s.mu.Unlock()
	s.wake()
}

// detach marks the subscription closed and returns the output nobody has
// seen through it, with its references: what is left of an unclaimed
// backlog and the live output not yet handed out (nothing if it was cut
// off). Called with the process lock held.
func (s *Subscription) detach() []entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.out.unref()
	s.out = entry{}
	var out []entry
	if s.backlogUnclaimed {
		out = s.backlog
	} else {
		unrefAll(s.backlog)
	}
	s.backlog = nil
	out = append(out, s.q.drain()...) // empty after a cut
	s.q = fifo{}
	return out
}
