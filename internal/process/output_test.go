package process

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func chunk(s Stream, n int, fill byte) []byte { return bytes.Repeat([]byte{fill}, n) }

func ent(s Stream, data []byte) entry { return entry{Chunk: Chunk{Stream: s, Data: data}} }

func TestUnclaimed_PerProcessLimitDropsOldestWholeChunks(t *testing.T) {
	b := &budget{limit: unclaimedTotal}
	u := unclaimed{b: b}
	const size = 32 << 10
	for i := 0; i < 40; i++ { // 40 × 32 KiB > 1 MiB
		u.add(entry{Chunk: Chunk{Stream: Stdout, Data: chunk(Stdout, size, byte(i))}, Offset: uint64(i * size)})
	}
	if u.q.bytes > unclaimedPerProcess {
		t.Fatalf("buffer holds %d bytes, limit %d", u.q.bytes, unclaimedPerProcess)
	}
	got := u.take()
	// The newest chunks survive, in order, whole.
	if last := got[len(got)-1]; last.Data[0] != 39 || len(last.Data) != size {
		t.Fatalf("newest chunk lost: %d", last.Data[0])
	}
	for i := 1; i < len(got); i++ {
		if got[i].Data[0] != got[i-1].Data[0]+1 {
			t.Fatalf("chunks out of order or with holes: %d after %d", got[i].Data[0], got[i-1].Data[0])
		}
	}
	if want := (unclaimedPerProcess) / (size + entryOverhead); len(got) != want {
		t.Fatalf("kept %d chunks, want %d", len(got), want)
	}
	if b.used.Load() != 0 {
		t.Fatalf("take left %d bytes reserved", b.used.Load())
	}
}

func TestUnclaimed_GlobalBudget(t *testing.T) {
	b := &budget{limit: 3 * (100 + entryOverhead)}
	u1, u2 := unclaimed{b: b}, unclaimed{b: b}
	for i := 0; i < 3; i++ {
		u1.add(entry{Chunk: Chunk{Data: chunk(Stdout, 100, byte(i))}})
	}
	// Budget full: u2 has nothing to drop, so its new chunk is dropped.
	u2.add(entry{Chunk: Chunk{Data: chunk(Stdout, 100, 9)}})
	if u2.q.len() != 0 {
		t.Fatal("a buffer with nothing to drop must drop the new chunk")
	}
	// u1 makes room by dropping its own oldest.
	u1.add(entry{Chunk: Chunk{Data: chunk(Stdout, 100, 3)}})
	got := u1.take()
	if len(got) != 3 || got[0].Data[0] != 1 || got[2].Data[0] != 3 {
		t.Fatalf("got %d chunks starting %d", len(got), got[0].Data[0])
	}
	u2.add(entry{Chunk: Chunk{Data: chunk(Stdout, 100, 9)}})
	if u2.q.len() != 1 {
		t.Fatal("released budget not reusable")
	}
}

func TestRing_ReplayOffsetsAndGaps(t *testing.T) {
	var holders atomic.Int64
	b := &budget{limit: ringTotal}
	r := newRing(b, &holders)
	r.add(ent(Stdout, []byte("hello ")))
	r.add(ent(Stderr, []byte("oops")))
	r.add(ent(Stdout, []byte("world")))
	if r.next != (Offsets{11, 4, 0}) {
		t.Fatalf("next %v", r.next)
	}
	out, start, gap := r.since(Offsets{3, 0, 0})
	if start != (Offsets{3, 0, 0}) || gap != (Offsets{}) {
		t.Fatalf("start %v gap %v", start, gap)
	}
	var so, se string
	for _, e := range out {
		if e.Stream == Stdout {
			so += string(e.Data)
		} else {
			se += string(e.Data)
		}
	}
	if so != "lo world" || se != "oops" {
		t.Fatalf("replayed %q %q", so, se)
	}
	// Fill beyond the ring's capacity: old bytes become a reported gap.
	big := make([]byte, 32<<10)
	for i := 0; i < 40; i++ {
		r.add(ent(Stdout, big))
	}
	if r.q.bytes > ringMax {
		t.Fatalf("ring holds %d", r.q.bytes)
	}
	out, start, gap = r.since(Offsets{0, 0, 0})
	if gap[Stdout] == 0 || start[Stdout] != r.first[Stdout] || gap[Stderr] != 4 {
		t.Fatalf("start %v gap %v", start, gap)
	}
	var n uint64
	for _, e := range out {
		n += uint64(len(e.Data))
	}
	if start[Stdout]+n != r.next[Stdout] {
		t.Fatalf("replay not contiguous up to the end: %d+%d != %d", start[Stdout], n, r.next[Stdout])
	}
	r.free()
	if b.used.Load() != 0 || holders.Load() != 0 {
		t.Fatalf("free left %d bytes, %d holders", b.used.Load(), holders.Load())
	}
}

func TestRing_NoHolesWhenBudgetExhausted(t *testing.T) {
	var holders atomic.Int64
	b := &budget{limit: 2 * (10 + entryOverhead)}
	r := newRing(b, &holders)
	other := newRing(b, &holders)
	other.add(ent(Stdout, make([]byte, 10)))
	other.add(ent(Stdout, make([]byte, 10))) // the budget is now full
	r.add(ent(Stdout, make([]byte, 10)))     // nothing to evict: not kept
	r.add(ent(Stderr, make([]byte, 5)))
	if r.q.len() != 0 || r.first != r.next {
		t.Fatalf("ring kept data beyond the budget: %d chunks, first %v next %v", r.q.len(), r.first, r.next)
	}
	_, _, gap := r.since(Offsets{})
	if gap != (Offsets{10, 5, 0}) {
		t.Fatalf("gap %v", gap)
	}
}

func TestRing_FairShare(t *testing.T) {
	var holders atomic.Int64
	b := &budget{limit: ringTotal}
	rings := make([]*ring, 200)
	for i := range rings {
		rings[i] = newRing(b, &holders)
	}
	if c := rings[0].capacity(); c != ringTotal/200 {
		t.Fatalf("capacity %d with 200 rings", c)
	}
	for range 5000 {
		rings = append(rings, newRing(b, &holders))
	}
	if c := rings[0].capacity(); c != ringMin {
		t.Fatalf("capacity %d, want the floor %d", c, ringMin)
	}
}

func TestSubscription_FullQueueRefusesAndCutReportsOffsets(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
		n    int
	}{
		{"events", 1, queueMaxEvents},
		{"bytes", 1 << 20, queueMaxBytes >> 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSubscription(nil, nil, false, Offsets{Stdout: 100, Stderr: 7})
			var off uint64 = 100
			for i := 0; i < tc.n; i++ {
				if !s.push(entry{Chunk: Chunk{Data: make([]byte, tc.size)}, Offset: off}) {
					t.Fatalf("refused after %d chunks", i)
				}
				off += uint64(tc.size)
			}
			if s.room(tc.size).fits || s.push(entry{Chunk: Chunk{Data: make([]byte, tc.size)}, Offset: off}) {
				t.Fatal("a full queue took one more chunk")
			}
			// Two items taken, then the subscription is cut: the rest of
			// its queue is gone and the error carries what it handed out.
			s.Next()
			s.Next()
			s.cut()
			if s.push(entry{Chunk: Chunk{Data: []byte("x")}}) {
				t.Fatal("pushed after the cut")
			}
			it, ok := s.Next()
			if !ok || !errors.Is(it.Err, ErrSlowSubscriber) || it.Err.Error() != "subscriber too slow: output queue overflow; reconnect with Connect" {
				t.Fatalf("next %+v %v", it, ok)
			}
			if want := (Offsets{Stdout: 100 + 2*uint64(tc.size), Stderr: 7}); it.Received != want {
				t.Fatalf("received %v, want %v", it.Received, want)
			}
			if it2, _ := s.Next(); it2.Err != it.Err || it2.Received != it.Received {
				t.Fatal("the final item changed")
			}
		})
	}
}

// The offsets of a subscription start at its first backlog chunk per
// stream (unclaimed output may have holes before the live start).
func TestSubscription_StartOffsetsFromBacklog(t *testing.T) {
	backlog := []entry{
		{Chunk: Chunk{Stream: Stderr, Data: []byte("ab")}, Offset: 40},
		{Chunk: Chunk{Stream: Stderr, Data: []byte("cd")}, Offset: 42},
	}
	s := newSubscription(nil, backlog, true, Offsets{Stdout: 10, Stderr: 50})
	s.cut()
	it, _ := s.Next()
	if want := (Offsets{Stdout: 10, Stderr: 40}); it.Received != want {
		t.Fatalf("received %v, want %v", it.Received, want)
	}
	s = newSubscription(nil, backlog, true, Offsets{Stdout: 10, Stderr: 50})
	s.Next()
	s.cut()
	if it, _ := s.Next(); it.Received != (Offsets{Stdout: 10, Stderr: 42}) {
		t.Fatalf("received %v after one backlog chunk", it.Received)
	}
}

func TestSubscription_OrderBacklogLiveEnd(t *testing.T) {
	s := newSubscription(nil, []entry{{Chunk: Chunk{Data: []byte("a")}}}, true, Offsets{})
	s.push(entry{Chunk: Chunk{Data: []byte("b")}})
	s.finish(End{Status: "exit status 0", Exited: true})
	var got string
	for {
		it, ok := s.Next()
		if !ok {
			t.Fatal("no end")
		}
		if it.End != nil {
			break
		}
		got += string(it.Chunk.Data)
	}
	if got != "ab" {
		t.Fatalf("order %q", got)
	}
	select {
	case <-s.Ready():
	case <-time.After(time.Second):
		t.Fatal("no wake-up")
	}
}

func TestSubscription_DetachReturnsUnseenOutput(t *testing.T) {
	s := newSubscription(nil, []entry{{Chunk: Chunk{Data: []byte("old")}}}, true, Offsets{})
	s.push(entry{Chunk: Chunk{Data: []byte("new")}})
	left := s.detach()
	if len(left) != 2 || string(left[0].Data) != "old" || string(left[1].Data) != "new" {
		t.Fatalf("left %v", left)
	}
	// A replayed backlog was not unclaimed output: it is not returned.
	s = newSubscription(nil, []entry{{Chunk: Chunk{Data: []byte("replayed")}}}, false, Offsets{})
	if left := s.detach(); len(left) != 0 {
		t.Fatalf("left %v", left)
	}
}

func TestFifo_CompactsAndClears(t *testing.T) {
	var f fifo
	for i := 0; i < 1000; i++ {
		f.push(entry{Chunk: Chunk{Data: []byte{1}}, Offset: uint64(i)}, 1)
		if i%3 == 0 {
			f.pop(payload)
		}
	}
	want := uint64(334)
	for f.len() > 0 {
		if e := f.pop(payload); e.Offset != want {
			t.Fatalf("popped %d want %d", e.Offset, want)
		}
		want++
	}
	if len(f.items) != 0 || f.bytes != 0 {
		t.Fatalf("not reset: %d items, %d bytes", len(f.items), f.bytes)
	}
}
