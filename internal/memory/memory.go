// Package memory hands envd's idle heap back to the kernel after a burst
// of work (docs/performance.md, "Memory handed back"). The release is
// event-driven: the process service calls Idle when its last stream ended.
// There is no timer and no sampler (spec lifecycle.md §7.5): nothing runs
// while envd is idle, and in particular nothing while a snapshot is
// prepared.
package memory

import (
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// DefaultSlack: a release is made when the heap holds this much more than
// it held right after the previous quiet release (and at least a quarter
// more): below that a release would cost a collection and return little.
// The quarter keeps the collections releases cost in proportion to the
// live heap when streams end often while much stays live (at most about
// four times the collections the runtime would make by itself). The
// baseline is the heap measured after a release during which no new work
// began (Busy), not the live heap the runtime reports: that is as old as
// its last collection, which may lie in the middle of the burst.
const DefaultSlack = 4 << 20

// Releaser returns the heap envd no longer uses to the kernel when asked
// at a quiet moment (Idle) and the heap grew enough since the last time.
type Releaser struct {
	slack uint64
	log   *slog.Logger
	// release does the work (freeIdle); tests replace it.
	release func()

	mu      sync.Mutex
	running bool
	// again: Idle was called while a release ran; the run looks once more
	// when it is done (that call may have been the end of the burst).
	again    bool
	baseline uint64 // heap held right after the last quiet release
	busy     uint64 // Busy calls so far
	samples  []metrics.Sample
}

// Options configure a Releaser; zero values take the defaults.
type Options struct {
	Slack uint64
	Log   *slog.Logger
}

// New returns a releaser.
func New(o Options) *Releaser {
	r := &Releaser{slack: o.Slack, log: o.Log, release: freeIdle}
	if r.slack == 0 {
		r.slack = DefaultSlack
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.samples = []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"}, // live and dead objects
		{Name: "/memory/classes/heap/unused:bytes"},  // unused parts of spans in use
		{Name: "/memory/classes/heap/free:bytes"},    // free spans not yet returned
	}
	return r
}

// Busy tells the releaser that work began (a stream opened): a release
// that is running meanwhile measures that work too, so it does not set
// the baseline.
func (r *Releaser) Busy() {
	r.mu.Lock()
	r.busy++
	r.mu.Unlock()
}

// freeIdle collects twice and returns every free page to the kernel. The
// first collection only moves what sync.Pools hold (read buffers, batch
// buffers, connect-go's message buffers: most of what a burst leaves
// behind) to their victim caches; the second frees it.
func freeIdle() {
	runtime.GC()
	debug.FreeOSMemory()
}

// Idle tells the releaser that a burst of work ended. If the heap grew by
// the slack (and a quarter) since the last release, a release runs on a
// goroutine of its own; at most one runs at a time, and a call during a
// release is answered when it is done.
func (r *Releaser) Idle() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running {
		r.again = true
		return
	}
	if held := r.held(); r.due(held) {
		r.running = true
		go r.run(held)
	}
}

// due reports whether a heap of held bytes is worth a release. Called
// with r.mu held.
func (r *Releaser) due(held uint64) bool {
	return held >= r.baseline+max(r.slack, r.baseline/4)
}

// held is the heap memory mapped and not returned to the kernel. Called
// with r.mu held.
func (r *Releaser) held() uint64 {
	metrics.Read(r.samples)
	var n uint64
	for _, s := range r.samples {
		if s.Value.Kind() == metrics.KindUint64 {
			n += s.Value.Uint64()
		}
	}
	return n
}

func (r *Releaser) run(before uint64) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("panic while releasing memory", "panic", fmt.Sprint(p))
			r.mu.Lock()
			r.running = false
			r.mu.Unlock()
		}
	}()
	for {
		r.mu.Lock()
		busy := r.busy
		r.mu.Unlock()
		r.release()
		r.mu.Lock()
		after := r.held()
		if r.busy == busy {
			r.baseline = after
		} // else work came in meanwhile: its end (Idle) looks again

		again := r.again
		r.again = false
		var next uint64
		if again {
			next = r.held()
		}
		if !again || !r.due(next) {
			r.running = false
			r.mu.Unlock()
			r.log.Debug("idle memory released", "heap_before_kib", before>>10, "heap_after_kib", after>>10)
			return
		}
		r.mu.Unlock()
		r.log.Debug("idle memory released", "heap_before_kib", before>>10, "heap_after_kib", after>>10)
		before = next
	}
}
