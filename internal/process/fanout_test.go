package process

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envd/envd/internal/defaults"
)

// The fan-out rule (spec rpc.md §4.5, Process.publish) driven directly:
// a process without a child whose output the test publishes itself, so
// that every clause can be checked without timing assumptions.

const mib = 1 << 20

func bareProcess(t *testing.T, grace time.Duration) *Process {
	t.Helper()
	m := New(Options{Spawner: testReaper, Defaults: defaults.New("root"), StallGrace: grace})
	return &Process{
		m:         m,
		pid:       -1,
		subs:      map[*Subscription]struct{}{},
		unclaimed: unclaimed{b: &m.unclaimedB},
		ring:      newRing(&m.ringB, &m.ringHolders),
		eof:       make(chan struct{}),
		signalled: make(chan struct{}),
		done:      make(chan struct{}),
		input:     make(chan struct{}, 1),
		epoch:     time.Now(),
	}
}

func (p *Process) join(t *testing.T) *Subscription {
	t.Helper()
	s, _, _, err := p.subscribe(nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// publishAsync publishes one chunk of n bytes; the channel is closed when
// publish returned.
func publishAsync(p *Process, n int) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.publish(Stdout, make([]byte, n))
	}()
	return done
}

// fill publishes chunks of 1 MiB until every queue is full (8 MiB).
func fill(p *Process) {
	for range queueMaxBytes / mib {
		p.publish(Stdout, make([]byte, mib))
	}
}

func blocked(t *testing.T, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
		t.Fatalf("output went on: %s", what)
	case <-time.After(100 * time.Millisecond):
	}
}

func returns(t *testing.T, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("output still waiting: %s", what)
	}
}

func isDone(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

func take(t *testing.T, s *Subscription, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		it, ok := s.Next()
		if !ok || it.Err != nil || it.End != nil {
			t.Fatalf("take %d: %+v %v", i, it, ok)
		}
	}
}

func member(p *Process, s *Subscription) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.subs[s]
	return ok
}

func wantCut(t *testing.T, s *Subscription, received uint64) {
	t.Helper()
	it, ok := s.Next()
	if !ok || !errors.Is(it.Err, ErrSlowSubscriber) || it.Received[Stdout] != received {
		t.Fatalf("want a cut at stdout=%d, got %+v %v", received, it, ok)
	}
}

// A subscriber whose queue is full while another one has room is cut at
// once; the one with room gets the chunk and the output never waits.
func TestFanout_FullNextToRoomIsCutAtOnce(t *testing.T) {
	p := bareProcess(t, time.Hour)
	fast, slow := p.join(t), p.join(t)
	fill(p)
	take(t, fast, 1)
	returns(t, publishAsync(p, mib), "the fast subscriber has room")
	if member(p, slow) || !member(p, fast) {
		t.Fatal("wrong subscriber cut")
	}
	wantCut(t, slow, 0)
	take(t, fast, 8) // 7 queued + the new chunk
}

// When every queue is full the output waits (nothing dropped, nobody cut)
// until a subscriber has drained to half; then a subscriber that took
// something keeps its place, one that took nothing is cut.
func TestFanout_AllFullWaitsForHalfThenCutsOnlyTheStuck(t *testing.T) {
	for _, other := range []struct {
		took int
		cut  bool
	}{{2, false}, {0, true}} {
		t.Run("other took "+strconv.Itoa(other.took), func(t *testing.T) {
			p := bareProcess(t, time.Hour)
			a, b := p.join(t), p.join(t)
			fill(p)
			done := publishAsync(p, mib)
			blocked(t, done, "every queue is full")
			take(t, a, 1)
			take(t, b, other.took)
			blocked(t, done, "no queue is at half yet")
			take(t, a, 4) // 3 MiB queued: with the new chunk at most half
			returns(t, done, "a drained to half")
			if member(p, b) == other.cut {
				t.Fatalf("b (took %d) member %v", other.took, member(p, b))
			}
			if other.cut {
				wantCut(t, b, 0)
			} else {
				take(t, b, 8-other.took+1)
			}
			take(t, a, 4)
		})
	}
}

// Only when nobody took anything for the stall grace are the stalled
// subscribers cut; the grace counts from the last take of any subscriber,
// and the output then goes on into the unclaimed buffer.
func TestFanout_StallGraceCountsFromTheLastTake(t *testing.T) {
	const grace = time.Second
	p := bareProcess(t, grace)
	a, b := p.join(t), p.join(t)
	fill(p)
	began := time.Now()
	done := publishAsync(p, mib)
	time.Sleep(grace * 6 / 10)
	take(t, b, 1) // progress: the grace starts again
	tookAt := time.Now()
	returns(t, done, "the grace expired")
	if d := time.Since(tookAt); d < grace {
		t.Fatalf("cut %v after the last take, grace %v", d, grace)
	}
	if d := time.Since(began); d < grace*16/10 {
		t.Fatalf("cut %v after the wait began", d)
	}
	wantCut(t, a, 0)
	wantCut(t, b, mib)
	p.mu.Lock()
	n, subs := p.unclaimed.q.len(), len(p.subs)
	p.mu.Unlock()
	if subs != 0 || n != 1 {
		t.Fatalf("after the cut: %d subscribers, %d unclaimed chunks", subs, n)
	}
	returns(t, publishAsync(p, mib), "no subscriber left")
}

// A single subscriber that keeps taking, however slowly, is never cut and
// gets every byte, even with a grace much shorter than the whole transfer.
func TestFanout_SingleSlowReaderNeverCut(t *testing.T) {
	const grace = 3 * time.Second
	p := bareProcess(t, grace)
	s := p.join(t)
	const chunks = 40 // at 100 ms each, longer than the grace
	go func() {
		for i := 0; i < chunks; i++ {
			p.publish(Stdout, make([]byte, mib))
		}
	}()
	var got uint64
	deadline := time.Now().Add(60 * time.Second)
	for got < chunks*mib {
		it, ok := s.Next()
		if !ok {
			if time.Now().After(deadline) {
				t.Fatalf("stuck after %d bytes", got)
			}
			time.Sleep(100 * time.Millisecond) // a thirtieth of the grace per event
			continue
		}
		if it.Err != nil {
			t.Fatalf("slow reader cut after %d bytes", got)
		}
		got += uint64(len(it.Chunk.Data))
		time.Sleep(100 * time.Millisecond)
	}
}

// A subscriber that joins after a full one has room but has proven
// nothing: a client that never reads first fills its socket buffers. It
// does not cut the reader the output is paced by until it has taken
// leadMin since it joined; from then on it leads, and the older reader,
// once full, is cut at the next chunk.
func TestFanout_NewcomerLeadsOnlyAfterLeadMin(t *testing.T) {
	p := bareProcess(t, time.Hour)
	old := p.join(t)
	fill(p)
	joined := p.join(t)
	var oldTook uint64
	for i := 0; joined.taken < leadMin; i++ {
		done := publishAsync(p, mib)
		if i == 0 {
			blocked(t, done, "the newcomer has room but took nothing")
		}
		// Whenever the old reader is full the output waits for it (old is
		// cut if the newcomer led too early), until it drained to half.
		for !isDone(done) {
			if it, ok := old.Next(); ok && it.Err == nil {
				oldTook += uint64(len(it.Chunk.Data))
			}
			time.Sleep(time.Millisecond)
		}
		if !member(p, old) {
			t.Fatalf("old cut after the newcomer took %d", joined.taken)
		}
		for _, ok := joined.Next(); ok; _, ok = joined.Next() {
		}
	}
	// Now the old reader stops; the newcomer keeps taking.
	for member(p, old) {
		returns(t, publishAsync(p, mib), "the newcomer leads")
		for it, ok := joined.Next(); ok; it, ok = joined.Next() {
			if it.Err != nil {
				t.Fatal("the newcomer was cut")
			}
		}
	}
	wantCut(t, old, oldTook)
}

// The waiting output goes on when the subscriber it waits for leaves, and
// when the process ends.
func TestFanout_LeaveOrEndWhilePausedResumes(t *testing.T) {
	p := bareProcess(t, time.Hour)
	s := p.join(t)
	fill(p)
	done := publishAsync(p, mib)
	blocked(t, done, "the only queue is full")
	s.Close()
	returns(t, done, "the subscriber left")

	p = bareProcess(t, time.Hour)
	s = p.join(t)
	fill(p)
	done = publishAsync(p, mib)
	blocked(t, done, "the only queue is full")
	p.m.finish(p, End{Exited: true, Status: "exit status 0"})
	returns(t, done, "the process ended")
	take(t, s, 8)
	if it, _ := s.Next(); it.End == nil {
		t.Fatalf("no end: %+v", it)
	}
}

// Subscribing, leaving, being cut and the process ending, all at once and
// with a fast producer: every subscription ends with the end or a cut whose
// offsets are exactly the bytes it delivered, and no goroutine is left.
func TestManager_ChurnWithCutsAndExit(t *testing.T) {
	m := New(Options{Spawner: testReaper, Defaults: defaults.New("root"), StallGrace: 200 * time.Millisecond})
	t.Cleanup(func() { checkBuffers(t, m) })
	before := runtime.NumGoroutine()
	const total = 64 << 20
	p, s := start(t, m, StartOptions{Config: sh("exec head -c " + strconv.Itoa(total) + " /dev/zero")})
	var wg sync.WaitGroup
	for g := 0; g < 12; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for {
				a, err := m.Connect(ByPID(p.PID()), nil)
				if err != nil {
					t.Errorf("connect: %v", err)
					return
				}
				got := a.Start[Stdout]
				// Take up to a few hundred items, pausing now and then.
			loop:
				for n := r.IntN(400); n > 0; n-- {
					it, ok := a.Sub.Next()
					switch {
					case !ok:
						select {
						case <-a.Sub.Ready():
						case <-time.After(time.Duration(r.IntN(50)) * time.Millisecond):
						}
					case it.Err != nil:
						if it.Received[Stdout] != got {
							t.Errorf("cut at %d after delivering up to %d", it.Received[Stdout], got)
						}
						break loop
					case it.End != nil:
						break loop
					default:
						got += uint64(len(it.Chunk.Data))
					}
				}
				if g%3 == 0 {
					time.Sleep(time.Duration(r.IntN(300)) * time.Millisecond) // long enough to be cut
				}
				a.Sub.Close()
				select {
				case <-p.Done():
					return
				default:
				}
			}
		}(g)
	}
	r := collect(t, s)
	s.Close()
	wg.Wait()
	<-p.Done()
	switch {
	case r.end != nil && r.out[Stdout].Len() != total:
		t.Fatalf("reader ended after %d bytes", r.out[Stdout].Len())
	case r.err != nil:
		// Outrun by a churning subscriber: cut, with exact offsets.
		it, _ := s.Next()
		if !errors.Is(r.err, ErrSlowSubscriber) || it.Received[Stdout] != uint64(r.out[Stdout].Len()) {
			t.Fatalf("reader: %d bytes, cut %v at %v", r.out[Stdout].Len(), r.err, it.Received)
		}
	}
	waitGoroutines(t, before)
}

// An input write ends with its context, also while it waits for an earlier
// write; the bytes the pipe took stay written, nothing else arrives later,
// no goroutine is left, and the next write goes through.
func TestManager_AbandonedInputEndsWithItsClient(t *testing.T) {
	m := newManager(t, nil)
	dir := t.TempDir()
	goFile, out := filepath.Join(dir, "go"), filepath.Join(dir, "out")
	// stdin is not read until the test creates the go file.
	p, s := start(t, m, StartOptions{Config: sh("while [ ! -e " + goFile + " ]; do sleep 0.05; done; exec cat > " + out)})
	defer s.Close()
	before := runtime.NumGoroutine()
	var wg sync.WaitGroup
	errs := make([]error, 8)
	began := time.Now()
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			errs[i] = p.WriteStdin(ctx, make([]byte, mib))
		}()
	}
	wg.Wait()
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("abandoned writes took %v", d)
	}
	written, waited := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			t.Fatal("a 1 MiB write to a process that does not read succeeded")
		case !errors.Is(err, context.DeadlineExceeded):
			t.Fatalf("error %v", err)
		case strings.Contains(err.Error(), "gave up after writing"):
			written++
		case strings.Contains(err.Error(), "gave up waiting for an earlier write"):
			waited++
		default:
			t.Fatalf("error %v", err)
		}
	}
	if written < 1 || written+waited != len(errs) {
		t.Fatalf("%d partial writes, %d gave up waiting", written, waited)
	}
	waitGoroutines(t, before)
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteStdin(t.Context(), []byte("END")); err != nil {
		t.Fatalf("write after the abandoned ones: %v", err)
	}
	if err := p.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	if r := collect(t, s); r.end == nil || r.end.ExitCode != 0 {
		t.Fatalf("end %+v err %v", r.end, r.err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	// What the pipe had taken (at most its capacity, 64 KiB by default)
	// and then END: the abandoned rest never arrives.
	if !strings.HasSuffix(string(b), "END") || len(b) > 1<<20 {
		t.Fatalf("child read %d bytes (suffix %q)", len(b), b[max(0, len(b)-8):])
	}
}

// The same for a terminal whose program does not read.
func TestManager_AbandonedPTYInputEndsWithItsClient(t *testing.T) {
	m := newManager(t, nil)
	p, s := start(t, m, StartOptions{Config: sh("stty raw -echo; echo ready; exec sleep 1000"), PTY: &Size{Cols: 80, Rows: 24}})
	waitFor(t, s, PTY, "ready")
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := p.WritePTY(ctx, make([]byte, mib))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "error writing to tty: gave up after writing") {
		t.Fatalf("got %v", err)
	}
	// The deadline of the abandoned write does not stay on the terminal:
	// the next write either goes through or really waits for its own
	// deadline (the terminal's buffer is still full).
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	began := time.Now()
	if err := p.WritePTY(ctx2, []byte("x")); err != nil && time.Since(began) < 250*time.Millisecond {
		t.Fatalf("next write failed after %v: %v", time.Since(began), err)
	}
}
