package process

import (
	"bytes"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/identity"
)

// The output read path (read_linux.go): pooled read buffers shared by
// reference, batches of ready reads, pipes grown while output flows.

// patternLine is what the pattern producers repeat; its length (63) does
// not divide the read size, so a buffer reused under a holder's feet would
// show other bytes at the holder's offsets.
const patternLine = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXY\n"

func patternScript(n int) string {
	return "yes '" + patternLine[:len(patternLine)-1] + "' | head -c " + strconv.Itoa(n)
}

// patternChecker verifies that the bytes it is given are the pattern at
// the offsets they claim.
type patternChecker struct {
	t    *testing.T
	name string
	off  uint64
	bad  bool
}

func (c *patternChecker) check(data []byte) {
	c.t.Helper()
	for i, b := range data {
		if want := patternLine[(c.off+uint64(i))%uint64(len(patternLine))]; b != want && !c.bad {
			c.bad = true
			c.t.Errorf("%s: byte %d is %q, want %q", c.name, c.off+uint64(i), b, want)
		}
	}
	c.off += uint64(len(data))
}

// consume reads s to its end or cut, checking every chunk, pausing pause
// after each item and stopping early (detaching) after max items if max >
// 0. It returns whether it saw the end.
func consume(t *testing.T, s *Subscription, c *patternChecker, pause time.Duration, max int) (ended bool) {
	deadline := time.After(60 * time.Second)
	for n := 0; max <= 0 || n < max; {
		it, ok := s.Next()
		if !ok {
			select {
			case <-s.Ready():
			case <-deadline:
				t.Errorf("%s: no end within 60 s", c.name)
				return false
			}
			continue
		}
		switch {
		case it.End != nil:
			return true
		case it.Err != nil:
			if it.Received[Stdout] != c.off {
				t.Errorf("%s: cut at offset %d after delivering up to %d", c.name, it.Received[Stdout], c.off)
			}
			return false
		}
		if it.Chunk.Stream != Stdout || len(it.Chunk.Data) > pipeReadSize || len(it.Chunk.Data) == 0 {
			t.Errorf("%s: chunk of %d bytes of %v", c.name, len(it.Chunk.Data), it.Chunk.Stream)
		}
		c.check(it.Chunk.Data)
		n++
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	return false
}

// Read buffers go round: a stream of 32 MiB read by a fast subscriber, a
// replaying Connect, a slow Connect that is cut and one that leaves early
// gets every byte right at its offset, while the reads use a few hundred
// buffers instead of one per read; no reference is ever dropped twice
// (checkBuffers).
func TestOutput_RecycledBuffersKeepEveryByte(t *testing.T) {
	m := newManager(t, nil)
	const total = 32 << 20
	p, s := start(t, m, StartOptions{Config: sh("read go; " + patternScript(total))})
	defer s.Close()
	var wg sync.WaitGroup
	run := func(name string, sub *Subscription, from uint64, pause time.Duration, max int, wantEnd bool) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer sub.Close()
			c := &patternChecker{t: t, name: name, off: from}
			ended := consume(t, sub, c, pause, max)
			if wantEnd && (!ended || c.off != total) {
				t.Errorf("%s: ended %v after %d of %d bytes", name, ended, c.off, total)
			}
		}()
	}
	run("start", s, 0, 0, 0, true)
	if err := p.WriteStdin(t.Context(), []byte("\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // some output first
	connect := func(replay *Offsets) *Attachment {
		a, err := m.Connect(ByPID(p.PID()), replay)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	// A later subscriber that falls a queue behind the first is cut (the
	// fan-out rule); what it got must still be right, up to its offsets.
	a := connect(&Offsets{})
	run("replay", a.Sub, a.Start[Stdout], 0, 0, false)
	a = connect(nil)
	run("slow", a.Sub, a.Start[Stdout], 5*time.Millisecond, 0, false)
	a = connect(nil)
	run("leaver", a.Sub, a.Start[Stdout], 0, 100, false)
	wg.Wait()
	<-p.Done()
	reads := total / pipeReadSize
	if made := m.pipeBufs.made.Load(); !raceEnabled && made > int64(reads/2) {
		t.Fatalf("%d read buffers made for about %d reads: they are not reused", made, reads)
	}
}

// A process waiting for output holds no read buffer: buffers are taken
// only once a descriptor is readable.
func TestOutput_IdleProcessesHoldNoReadBuffers(t *testing.T) {
	db, err := identity.NewCache(identity.SystemFiles).Load()
	if err != nil {
		t.Fatal(err)
	}
	// The user databases once, not re-read while the test runs (a file
	// changed less than 2 s ago is read on every use).
	m := New(Options{Spawner: testReaper, Defaults: defaults.New("root"), Users: func() (*identity.Database, error) { return db, nil }})
	t.Cleanup(func() { checkBuffers(t, m) })
	u, err := db.Lookup("root")
	if err != nil {
		t.Fatal(err)
	}
	_, warm := start(t, m, StartOptions{Config: sh("true"), User: u}) // the poller, the first fork
	collect(t, warm)
	warm.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const n = 20
	var subs []*Subscription
	for range n {
		_, s := start(t, m, StartOptions{Config: sh("exec sleep 60"), User: u})
		subs = append(subs, s)
	}
	time.Sleep(100 * time.Millisecond) // every reader waits in the poller
	runtime.ReadMemStats(&after)
	for _, s := range subs {
		s.Close()
	}
	if made := m.pipeBufs.made.Load(); !raceEnabled && made > 4 {
		t.Fatalf("%d read buffers made for %d idle processes", made, n)
	}
	// Two 32 KiB read buffers per process were 64 KiB of the 70 KiB
	// allocated per spawn; the rest is a few KiB (8 KiB measured, 25 KiB
	// under the race detector).
	per := (after.TotalAlloc - before.TotalAlloc) / n
	if per > 32<<10 {
		t.Fatalf("%d bytes allocated per idle process", per)
	}
}

func pipeSize(t *testing.T, p *Process, s Stream) int {
	t.Helper()
	rc, err := p.outputs[s].SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var size int
	var serr error
	if err := rc.Control(func(fd uintptr) { size, serr = unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	return size
}

// A pipe grows when output flows through it (a read filled its buffer),
// within the budget of grown capacity; one that carries little output, a
// process over the budget and a terminal keep their size; the budget comes
// back when the process ends.
func TestOutput_PipeGrowsWhileOutputFlows(t *testing.T) {
	m := newManager(t, nil)
	if pipeMaxSize() < 256<<10 {
		t.Skip("pipe-max-size below 256 KiB")
	}
	m.pipeGrow, m.pipeB.limit = 256<<10, 256<<10 // room for one pipe
	flowing := func() (*Process, *Subscription) {
		p, s := start(t, m, StartOptions{Config: sh("head -c 4194304 /dev/zero; echo small >&2; read x")})
		waitBytes(t, s, Stdout, 4<<20)
		return p, s
	}
	p1, s1 := flowing()
	defer s1.Close()
	if got := pipeSize(t, p1, Stdout); got != 256<<10 {
		t.Fatalf("flowing stdout pipe holds %d bytes", got)
	}
	if got := pipeSize(t, p1, Stderr); got != 64<<10 {
		t.Fatalf("stderr with a line of output holds %d bytes", got)
	}
	p2, s2 := flowing()
	defer s2.Close()
	if got := pipeSize(t, p2, Stdout); got != 64<<10 {
		t.Fatalf("a pipe beyond the budget holds %d bytes", got)
	}
	if err := p1.WriteStdin(t.Context(), []byte("\n")); err != nil {
		t.Fatal(err)
	}
	<-p1.Done()
	if used := m.pipeB.used.Load(); used != 0 {
		t.Fatalf("%d bytes of the pipe budget still held after the process ended", used)
	}
	if err := p2.WriteStdin(t.Context(), []byte("\n")); err != nil {
		t.Fatal(err)
	}
	<-p2.Done()
}

// waitBytes reads s until n bytes of stream st arrived.
func waitBytes(t *testing.T, s *Subscription, st Stream, n int) {
	t.Helper()
	got := 0
	deadline := time.After(20 * time.Second)
	for got < n {
		if it, ok := s.Next(); ok {
			if it.End != nil || it.Err != nil {
				t.Fatalf("ended after %d of %d bytes: %+v %v", got, n, it.End, it.Err)
			}
			if it.Chunk.Stream == st {
				got += len(it.Chunk.Data)
			}
			continue
		}
		select {
		case <-s.Ready():
		case <-deadline:
			t.Fatalf("only %d of %d bytes within 20 s", got, n)
		}
	}
}

// Small reads are copied to their own size, so a chunk never holds a whole
// read buffer for a few bytes (the ring and the unclaimed buffer account
// for chunks by capacity).
func TestOutput_SmallReadsDoNotHoldBuffers(t *testing.T) {
	m := newManager(t, nil)
	p, s := start(t, m, StartOptions{Config: sh("for i in 1 2 3 4 5; do echo line$i; sleep 0.02; done")})
	defer s.Close()
	var out bytes.Buffer
	deadline := time.After(20 * time.Second)
	for {
		it, ok := s.Next()
		if !ok {
			select {
			case <-s.Ready():
			case <-deadline:
				t.Fatal("no end")
			}
			continue
		}
		if it.End != nil {
			break
		}
		if cap(it.Chunk.Data) >= pipeReadSize/2 {
			t.Fatalf("a %d-byte chunk holds %d bytes", len(it.Chunk.Data), cap(it.Chunk.Data))
		}
		out.Write(it.Chunk.Data)
	}
	if out.String() != "line1\nline2\nline3\nline4\nline5\n" {
		t.Fatalf("output %q", out.String())
	}
	<-p.Done()
}
