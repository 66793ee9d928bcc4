package memory

import (
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"
)

// burst allocates n bytes that are garbage once it returns.
func burst(n int) {
	var held [][]byte
	for range n / (1 << 20) {
		b := make([]byte, 1<<20)
		b[0] = 1 // touched, so resident
		held = append(held, b)
	}
	runtime.KeepAlive(held)
}

// waitIdle waits until no release runs.
func waitIdle(t *testing.T, r *Releaser) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		running := r.running
		r.mu.Unlock()
		if !running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("release still running after 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// After a burst the idle heap is returned: the release runs at the quiet
// moment and the process's resident heap shrinks; a quiet moment without
// a burst costs nothing.
func TestReleaser_ReturnsTheHeapABurstLeft(t *testing.T) {
	r := New(Options{})
	r.Idle() // settles the baseline at today's heap
	waitIdle(t, r)
	base := r.baseline
	runs := 0
	real := r.release
	r.release = func() { runs++; real() }
	r.Idle()
	waitIdle(t, r)
	if runs != 0 {
		t.Fatalf("%d releases without a burst (heap %d, baseline %d)", runs, r.held(), base)
	}
	burst(64 << 20)
	r.mu.Lock()
	before := r.held()
	r.mu.Unlock()
	r.Idle()
	waitIdle(t, r)
	if runs != 1 {
		t.Fatalf("%d releases after a 64 MiB burst", runs)
	}
	if r.baseline > before-32<<20 {
		t.Fatalf("heap held %d before the release, %d after", before, r.baseline)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if held := ms.HeapInuse + ms.HeapIdle - ms.HeapReleased; held > r.baseline+8<<20 {
		t.Fatalf("the runtime still holds %d bytes of heap", held)
	}
}

// A release during which work began does not move the baseline (it
// measured that work), and an Idle that comes while a release runs is
// answered when it is done: the end of a burst is never missed.
func TestReleaser_WorkDuringAReleaseAndTheLastIdle(t *testing.T) {
	r := New(Options{Slack: 1})
	gate := make(chan struct{})
	runs := make(chan struct{}, 10)
	r.release = func() {
		runs <- struct{}{}
		<-gate
	}
	r.baseline = 0
	r.Idle()
	<-runs // the first release is running
	r.Busy()
	r.Idle() // another burst ended meanwhile
	gate <- struct{}{}
	<-runs // so a second release follows at once
	r.mu.Lock()
	if r.baseline != 0 {
		t.Errorf("a release with work going on set the baseline to %d", r.baseline)
	}
	r.mu.Unlock()
	gate <- struct{}{}
	waitIdle(t, r)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.baseline == 0 || len(runs) != 0 {
		t.Fatalf("baseline %d after a quiet release, %d more releases", r.baseline, len(runs))
	}
}

// With much live, releases need a quarter of it in growth: streams that
// end often next to a large live heap do not collect it each time.
func TestReleaser_SlackGrowsWithTheLiveHeap(t *testing.T) {
	r := New(Options{})
	r.baseline = 400 << 20
	if r.due(r.baseline + 50<<20) {
		t.Fatal("50 MiB of growth over 400 MiB is due")
	}
	if !r.due(r.baseline + 100<<20) {
		t.Fatal("100 MiB of growth over 400 MiB is not due")
	}
	r.baseline = 1 << 20
	if r.due(4<<20) || !r.due(5<<20) {
		t.Fatal("the slack over a small heap is not 4 MiB")
	}
}

// What a burst leaves in sync.Pools (read buffers, batch buffers,
// connect-go's buffers) is returned too: one collection only moves a
// pool's contents to its victim cache, the second frees them.
func TestReleaser_ReturnsWhatPoolsHeld(t *testing.T) {
	r := New(Options{})
	r.Idle()
	waitIdle(t, r)
	// No collection of its own in between: the buffers are in the pool,
	// not in its victim cache, when the release begins.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var pool sync.Pool
	for range 48 {
		b := make([]byte, 1<<20)
		b[0] = 1
		pool.Put(&b)
	}
	r.mu.Lock()
	before := r.held()
	r.mu.Unlock()
	r.Idle()
	waitIdle(t, r)
	if r.baseline > before-32<<20 {
		t.Fatalf("heap held %d before the release, %d after: the pooled buffers stayed", before, r.baseline)
	}
	runtime.KeepAlive(&pool)
}
