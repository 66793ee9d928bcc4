package lifecycle

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/envd/envd/internal/logging"
)

// shutdownSignals end envd gracefully: SIGTERM (the usual), SIGINT
// (Ctrl-Alt-Del when envd is PID 1) and SIGPWR (power failure).
var shutdownSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGPWR}

// loggedSignals are caught, logged and otherwise ignored. They are caught
// rather than set to "ignore" because an ignored disposition is inherited
// across exec by every child, a caught one is reset to the default.
var loggedSignals = []os.Signal{syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGQUIT}

// Signals routes envd's signals (spec lifecycle.md §3.4): the first
// shutdown signal is delivered on Shutdown, every later one closes Hurry so
// that the shutdown skips its remaining waits; other handled signals,
// including the fault signals sent by other processes (faultSignals), are
// logged, a limited number of lines per interval, and ignored. SIGCHLD
// belongs to the reaper.
type Signals struct {
	log *slog.Logger
	// limit keeps a process that signals envd in a loop from flooding the
	// console.
	limit *logging.Limiter
	// in receives from the signal package, which never blocks: when the
	// buffer is full a signal is dropped, which is harmless because
	// repeated signals mean the same thing.
	in       chan os.Signal
	shutdown chan os.Signal // capacity 1, sent to once
	hurry    chan struct{}
	// seen is set when the first shutdown signal was routed; only the
	// routing goroutine uses it.
	seen bool

	startOnce, stopOnce sync.Once
	mu                  sync.Mutex
	started             bool
	stop, done          chan struct{}
}

// NewSignals returns a router that is not yet listening.
func NewSignals(log *slog.Logger) *Signals {
	return &Signals{
		log:      log,
		limit:    logging.NewLimiter(10*time.Second, 20),
		in:       make(chan os.Signal, 8),
		shutdown: make(chan os.Signal, 1),
		hurry:    make(chan struct{}),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
}

// Start installs the handlers and the routing goroutine.
func (s *Signals) Start() {
	s.startOnce.Do(func() {
		s.mu.Lock()
		s.started = true
		s.mu.Unlock()
		handled := append(append(append([]os.Signal{}, shutdownSignals...), loggedSignals...), faultSignals...)
		signal.Notify(s.in, handled...)
		go s.loop()
	})
}

// Stop removes the handlers (restoring the default dispositions) and ends
// the goroutine.
func (s *Signals) Stop() {
	s.startOnce.Do(func() {}) // a later Start must not install handlers
	s.stopOnce.Do(func() {
		signal.Stop(s.in)
		close(s.stop)
	})
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if started {
		<-s.done
	}
}

// Shutdown delivers the first shutdown signal.
func (s *Signals) Shutdown() <-chan os.Signal { return s.shutdown }

// Hurry is closed by the second shutdown signal.
func (s *Signals) Hurry() <-chan struct{} { return s.hurry }

func (s *Signals) loop() {
	defer close(s.done)
	for !s.route() {
	}
}

// route handles signals until Stop; it reports true when stopped. A panic
// is logged and routing resumes: PID 1 must keep answering signals.
func (s *Signals) route() (stopped bool) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("signal handling panicked", "panic", fmt.Sprint(p))
		}
	}()
	for {
		select {
		case <-s.stop:
			return true
		case sig := <-s.in:
			if !isShutdownSignal(sig) {
				s.logIgnored(sig)
				continue
			}
			if !s.seen {
				s.seen = true
				s.shutdown <- sig
				continue
			}
			select {
			case <-s.hurry:
			default:
				s.log.Info("second shutdown signal: skipping the remaining waits", "signal", sig.String())
				close(s.hurry)
			}
		}
	}
}

// logIgnored logs a signal that envd ignores: at info, or at warn for a
// fault signal, which only another process can have sent.
func (s *Signals) logIgnored(sig os.Signal) {
	ok, suppressed := s.limit.Allow()
	if !ok {
		return
	}
	attrs := []any{"signal", sig.String()}
	if suppressed > 0 {
		attrs = append(attrs, "suppressed", suppressed)
	}
	for _, f := range faultSignals {
		if f == sig {
			s.log.Warn("ignoring fault signal sent by another process", attrs...)
			return
		}
	}
	s.log.Info("ignoring signal", attrs...)
}

func isShutdownSignal(sig os.Signal) bool {
	for _, s := range shutdownSignals {
		if s == sig {
			return true
		}
	}
	return false
}

// Reason is why envd shuts down: a signal, or (not as PID 1) its server
// stopping on its own.
type Reason struct {
	Signal os.Signal
	Err    error
}

// ExitCode is the process exit code for the reason: 0 after a signal, 1
// after a failure.
func (r Reason) ExitCode() int {
	if r.Err != nil {
		return 1
	}
	return 0
}

func (r Reason) String() string {
	switch {
	case r.Signal != nil:
		return r.Signal.String()
	case r.Err != nil:
		return "server failed: " + r.Err.Error()
	}
	return "unknown"
}

// Await blocks until envd must shut down: on the first shutdown signal, or
// when served yields an error and envd is not PID 1. As PID 1 a failed
// server is logged and envd keeps running (init must never exit on an
// error); a signal still ends it.
func (s *Signals) Await(served <-chan error, pid1 bool) Reason {
	for {
		select {
		case sig := <-s.shutdown:
			return Reason{Signal: sig}
		case err := <-served:
			if err == nil {
				err = fmt.Errorf("server stopped")
			}
			s.log.Error("server stopped", "error", err.Error())
			if !pid1 {
				return Reason{Err: err}
			}
			served = nil
		}
	}
}
