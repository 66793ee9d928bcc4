package watch

import (
	"errors"
	"sync"
	"time"

	"github.com/envd/envd/internal/fsops"
)

// ErrOverflow is returned once by Events after a polling watcher's buffer
// overflowed and its pending events were dropped (spec rpc.md §9.4, D11).
var ErrOverflow = errors.New("watcher event buffer overflow: events were dropped; call GetWatcherEvents more often")

// Poller is a polling watcher: events accumulate in a bounded buffer until
// the client takes them. When an event arrives at a full buffer (too many
// events, too many bytes, or no room left in the budget all watchers
// share), the pending events are dropped and the overflow is reported
// once; collection goes on.
type Poller struct {
	w        *watcher
	max      int
	maxBytes int64
	budget   *eventBudget

	mu         sync.Mutex
	pending    []Event
	bytes      int64 // size of pending, taken from budget
	overflowed bool
	err        error     // terminal
	polled     time.Time // last Create or Events: the idle expiry counts from here
}

func (p *Poller) deliver(evs []Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ev := range evs {
		sz := ev.size()
		if len(p.pending) >= p.max || p.bytes+sz > p.maxBytes || !p.budget.take(sz) {
			p.dropLocked()
			p.overflowed = true
			if !p.budget.take(sz) {
				continue // the budget is full with other watchers' events
			}
		}
		p.pending = append(p.pending, ev)
		p.bytes += sz
	}
}

// dropLocked discards the pending events and gives their room back.
func (p *Poller) dropLocked() {
	p.pending = nil // release the backing array, not only its length
	p.budget.give(p.bytes)
	p.bytes = 0
}

func (p *Poller) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
	p.dropLocked()
}

// release frees what the poller holds once it is removed.
func (p *Poller) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropLocked()
}

// take returns the terminal error on every call once the watcher failed;
// else ErrOverflow once after an overflow; else every pending event, with
// the function that gives their room back once the caller is done with
// them (its response has been sent).
func (p *Poller) take(now time.Time) ([]Event, func(), error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.polled = now
	if p.err != nil {
		return nil, func() {}, fsops.Errorf(fsops.KindInternal, p.err, "watcher error: %v", p.err)
	}
	if p.overflowed {
		p.overflowed = false
		return nil, func() {}, ErrOverflow
	}
	out, n := p.pending, p.bytes
	p.pending, p.bytes = nil, 0
	var once sync.Once
	return out, func() { once.Do(func() { p.budget.give(n) }) }, nil
}

// idleSince is when the poller was last polled (or created).
func (p *Poller) idleSince() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.polled
}
