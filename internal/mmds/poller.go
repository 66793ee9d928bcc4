package mmds

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/runfiles"
)

// Polling parameters (spec lifecycle.md §4.2).
const (
	attemptInterval = 50 * time.Millisecond
	repollDeadline  = 60 * time.Second
)

// Poller keeps reading MMDS until it yields a sandbox id, then publishes the
// ids as internal variables and files. At most one poll runs at a time; it
// can be paused (no attempts, no timers) while the VM is prepared for a
// snapshot.
type Poller struct {
	client *Client
	env    *defaults.Store
	dir    string
	log    *slog.Logger

	mu       sync.Mutex
	ctx      context.Context // the poller's lifetime, from Start
	running  bool
	deadline time.Time // zero: none (boot poll)
	paused   bool
	resume   chan struct{} // closed on Resume
	cancel   context.CancelFunc
	attempt  context.CancelFunc // cancels the in-flight read on Pause
	done     chan struct{}      // closed when the current run ends
	// restored is the poll state a live upgrade carried, which Start
	// resumes instead of the boot poll; nil at a normal start.
	restored *PollState
}

// NewPoller publishes into env and dir (normally runfiles.Dir).
func NewPoller(client *Client, env *defaults.Store, dir string, log *slog.Logger) *Poller {
	return &Poller{client: client, env: env, dir: dir, log: log}
}

// Start begins the boot poll, which has no deadline; after a live upgrade
// it resumes the carried poll instead (Restore): none, the boot poll, or a
// re-poll with its remaining deadline.
func (p *Poller) Start(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ctx, p.cancel = context.WithCancel(ctx)
	switch st := p.restored; {
	case st == nil || st.Kind == PollBoot:
		p.startLocked(time.Time{})
	case st.Kind == PollRepoll:
		p.startLocked(time.Now().Add(st.Remaining))
	}
}

// PollKind is what the poller is doing.
type PollKind int

// Poll kinds (control-plane.md §8.7 "Miscellaneous").
const (
	PollNone PollKind = iota
	PollBoot
	PollRepoll
)

// PollState is the poller's state as a live upgrade carries it.
type PollState struct {
	Kind PollKind
	// Remaining is a re-poll's time left.
	Remaining time.Duration
}

// State reports what the poller is doing now.
func (p *Poller) State() PollState {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case !p.running:
		return PollState{Kind: PollNone}
	case p.deadline.IsZero():
		return PollState{Kind: PollBoot}
	}
	return PollState{Kind: PollRepoll, Remaining: max(time.Until(p.deadline), 0)}
}

// Restore makes the next Start resume st instead of the boot poll (the
// ids themselves are carried with the internal variables).
func (p *Poller) Restore(st PollState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.restored = &st
}

// Repoll starts a poll with a 60 s deadline after /init, or extends the
// running poll's deadline to 60 s from now.
func (p *Poller) Repoll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx == nil || p.ctx.Err() != nil {
		return
	}
	deadline := time.Now().Add(repollDeadline)
	if p.running {
		if !p.deadline.IsZero() {
			p.deadline = deadline
		}
		return
	}
	p.startLocked(deadline)
}

func (p *Poller) startLocked(deadline time.Time) {
	p.running = true
	p.deadline = deadline
	p.done = make(chan struct{})
	go p.run(p.ctx, p.done)
}

// Pause stops attempts until Resume; an attempt in flight is abandoned.
func (p *Poller) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused {
		return
	}
	p.paused = true
	p.resume = make(chan struct{})
	if p.attempt != nil {
		p.attempt()
	}
}

// Resume lets a paused poll continue.
func (p *Poller) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.paused {
		return
	}
	p.paused = false
	close(p.resume)
}

// Stop ends polling and waits for the running poll to finish.
func (p *Poller) Stop() {
	p.mu.Lock()
	if p.cancel != nil {
		p.cancel()
	}
	done := p.done
	p.mu.Unlock()
	if done != nil {
		<-done
	}
}

// Running reports whether a poll is in progress.
func (p *Poller) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running
}

func (p *Poller) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("mmds poller panicked", "panic", r)
		}
		p.mu.Lock()
		p.running = false
		p.mu.Unlock()
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var failures int
	var lastErr error
	for {
		// Wait for the next attempt slot, or for resume while paused.
		p.mu.Lock()
		paused, resume := p.paused, p.resume
		p.mu.Unlock()
		if paused {
			select {
			case <-resume:
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-timer.C:
		case <-ctx.Done():
			return
		}
		p.mu.Lock()
		if p.paused {
			p.mu.Unlock()
			timer.Reset(0)
			continue
		}
		if !p.deadline.IsZero() && time.Now().After(p.deadline) {
			p.mu.Unlock()
			p.log.Warn("mmds poll gave up", "attempts", failures, "error", errString(lastErr))
			return
		}
		actx, cancel := context.WithCancel(ctx)
		p.attempt = cancel
		p.mu.Unlock()

		md, err := p.client.Fetch(actx)
		cancel()
		p.mu.Lock()
		p.attempt = nil
		p.mu.Unlock()
		if err == nil && md.InstanceID != "" {
			p.publish(md)
			return
		}
		if err == nil {
			err = errEmptyInstance
		}
		failures++
		lastErr = err
		if failures == 1 {
			p.log.Debug("mmds poll attempt failed", "error", err.Error())
		}
		timer.Reset(attemptInterval)
	}
}

type pollError string

func (e pollError) Error() string { return string(e) }

const errEmptyInstance = pollError("metadata has no instanceID yet")

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (p *Poller) publish(md *Metadata) {
	p.env.SetInternal(defaults.SandboxIDVar, md.InstanceID)
	p.env.SetInternal(defaults.TemplateIDVar, md.EnvID)
	if err := runfiles.Write(p.dir, "."+defaults.SandboxIDVar, md.InstanceID, 0o644); err != nil {
		p.log.Warn("cannot publish sandbox id", "error", err.Error())
	}
	if err := runfiles.Write(p.dir, "."+defaults.TemplateIDVar, md.EnvID, 0o644); err != nil {
		p.log.Warn("cannot publish template id", "error", err.Error())
	}
	p.log.Info("metadata read", "sandbox_id", md.InstanceID, "template_id", md.EnvID)
}
