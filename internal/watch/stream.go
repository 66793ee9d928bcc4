package watch

import (
	"errors"
	"sync"
)

// ErrQueueFull ends a stream whose client does not take events as fast as
// they come: its bounded queue overflowed.
var ErrQueueFull = errors.New("subscriber too slow: event queue overflow; watch again")

// Stream is a streaming watcher: events arrive on a bounded channel; a full
// channel fails the stream (ErrQueueFull) instead of blocking the watcher
// or buffering without limit.
type Stream struct {
	m  *Manager
	w  *watcher
	ch chan Event

	failOnce sync.Once
	failed   chan struct{}
	err      error // set before failed is closed
}

// Events delivers the translated events in order.
func (s *Stream) Events() <-chan Event { return s.ch }

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

// Close stops the watcher and unregisters the stream.
func (s *Stream) Close() {
	s.m.mu.Lock()
	delete(s.m.streams, s)
	s.m.mu.Unlock()
	s.w.stop()
}

func (s *Stream) deliver(evs []Event) {
	select {
	case <-s.failed:
		return
	default:
	}
	for _, ev := range evs {
		select {
		case s.ch <- ev:
		default:
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
