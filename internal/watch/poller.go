package watch

import (
	"errors"
	"sync"

	"github.com/envd/envd/internal/fsops"
)

// ErrOverflow is returned once by Events after a polling watcher's buffer
// overflowed and its pending events were dropped (spec rpc.md §9.4, D11).
var ErrOverflow = errors.New("watcher event buffer overflow: events were dropped; call GetWatcherEvents more often")

// Poller is a polling watcher: events accumulate in a bounded buffer until
// the client takes them. When an event arrives at a full buffer, the pending
// events are dropped and the overflow is reported once; collection goes on.
type Poller struct {
	w   *watcher
	max int

	mu         sync.Mutex
	pending    []Event
	overflowed bool
	err        error // terminal
}

func (p *Poller) deliver(evs []Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ev := range evs {
		if len(p.pending) >= p.max {
			p.pending = nil // release the backing array, not only its length
			p.overflowed = true
		}
		p.pending = append(p.pending, ev)
	}
}

func (p *Poller) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
	p.pending = nil
}

// take returns the terminal error on every call once the watcher failed;
// else ErrOverflow once after an overflow; else every pending event.
func (p *Poller) take() ([]Event, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return nil, fsops.Errorf(fsops.KindInternal, p.err, "watcher error: %v", p.err)
	}
	if p.overflowed {
		p.overflowed = false
		return nil, ErrOverflow
	}
	out := p.pending
	p.pending = nil
	return out, nil
}
