package watch

import (
	"errors"
	"sync"
)

// ErrQueueFull ends a stream whose client does not take events as fast as
// they come: its bounded queue overflowed.
var ErrQueueFull = errors.New("subscriber too slow: event queue overflow; watch again")

// ErrEventBudget ends a stream whose next event finds no room in the memory
// that all watchers' waiting events share.
var ErrEventBudget = errors.New("subscriber too slow: too many watch events waiting for clients; watch again")

// Stream is a streaming watcher: events arrive on a bounded channel; a full
// channel fails the stream (ErrQueueFull) instead of blocking the watcher
// or buffering without limit.
type Stream struct {
	m  *Manager
	w  *watcher
	ch chan Event

	closeOnce sync.Once

	failOnce sync.Once
	failed   chan struct{}
	err      error // set before failed is closed
}

// Events delivers the translated events in order. The receiver calls
// Taken with each event once it has sent it.
func (s *Stream) Events() <-chan Event { return s.ch }

// Taken gives back the room of an event received from Events.
func (s *Stream) Taken(ev Event) { s.m.budget.give(ev.size()) }

// Done is closed when the stream failed; Err tells why.
func (s *Stream) Done() <-chan struct{} { return s.failed }

// Err is the terminal error once Done is closed: ErrQueueFull, ErrClosed,
// or an inotify failure.
func (s *Stream) Err() error {
	select {
	case <-s.failed:
		return s.err
	default:
		return nil
	}
}

// Close stops the watcher, gives back the room of the events still queued
// and unregisters the stream.
func (s *Stream) Close() {
	s.closeOnce.Do(func() {
		s.w.stop() // no deliver runs after this
		for {
			select {
			case ev := <-s.ch:
				s.Taken(ev)
				continue
			default:
			}
			break
		}
		s.m.mu.Lock()
		delete(s.m.streams, s)
		s.m.mu.Unlock()
	})
}

func (s *Stream) deliver(evs []Event) {
	select {
	case <-s.failed:
		return
	default:
	}
	for _, ev := range evs {
		sz := ev.size()
		if !s.m.budget.take(sz) {
			s.fail(ErrEventBudget)
			return
		}
		select {
		case s.ch <- ev:
		default:
			s.m.budget.give(sz)
			s.fail(ErrQueueFull)
			return
		}
	}
}

func (s *Stream) fail(err error) {
	s.failOnce.Do(func() {
		s.err = err
		close(s.failed)
	})
}
