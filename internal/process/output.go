package process

import (
	"slices"
	"strconv"
	"sync/atomic"
	"time"
)

// Stream names one output stream of a process.
type Stream uint8

const (
	Stdout Stream = iota
	Stderr
	PTY
	numStreams
)

func (s Stream) String() string {
	switch s {
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	case PTY:
		return "pty"
	}
	return "stream" + strconv.Itoa(int(s))
}

// Offsets holds one cumulative byte offset per stream: the number of bytes
// of that stream that precede a given point of the process's output.
type Offsets [numStreams]uint64

// Chunk is the payload of one data event: the bytes of one read. Data is
// shared by every subscriber and buffer that holds the chunk and is never
// modified.
type Chunk struct {
	Stream Stream
	Data   []byte
}

// entry is a chunk together with the offset of its first byte in its
// stream and, when its data lies in a pooled read buffer, that buffer.
// Every holder of an entry with a buffer (the reader until it published
// it, the ring, the unclaimed buffer, a subscriber's queue or backlog, the
// item a subscription handed out last) owns one reference on it; the
// buffer goes back to its pool when the last one is dropped. Functions say
// when they take a reference of their own and when they hand theirs over.
type entry struct {
	Chunk
	Offset uint64
	buf    *chunkBuf
}

func (e entry) ref() {
	if e.buf != nil {
		e.buf.refs.Add(1)
	}
}

func (e entry) unref() {
	if e.buf != nil {
		e.buf.unref()
	}
}

func unrefAll(es []entry) {
	for _, e := range es {
		e.unref()
	}
}

// chunkBuf is a read buffer of a bufPool with the number of holders of
// the chunk in it.
type chunkBuf struct {
	b    []byte
	refs atomic.Int32
	pool *bufPool
}

// unref drops one reference; the last one gives the buffer back. A count
// below zero would mean a buffer reused under a holder's feet: it is never
// given back then (the garbage collector takes it), and tests catch it.
func (c *chunkBuf) unref() {
	switch n := c.refs.Add(-1); {
	case n == 0:
		c.pool.p.Put(c)
	case n < 0:
		c.pool.overReleased.Add(1)
	}
}

// Limits of the output buffers (spec rpc.md §4.5; replay ring: docs/processes.md).
const (
	// subscriber queue: events or payload bytes, whichever is reached first.
	queueMaxEvents = 1024
	queueMaxBytes  = 8 << 20

	// leadMin: a subscriber that joined after a full one overtakes it (and
	// has it cut) only once it has taken this much since it joined: more
	// than the socket buffers and HTTP/2 flow-control window of a client
	// that does not read can absorb (about 6 + 4 + 4 MiB on Linux with Go
	// clients), so that a new Connect that never reads cannot pass for a
	// fast reader (docs/processes.md, "Flow control").
	leadMin = 4 * queueMaxBytes

	// DefaultStallGrace: when every subscriber's queue is full, output
	// waits this long for any of them to take something before the stalled
	// subscribers are disconnected (spec rpc.md §4.5). Long on purpose: a
	// healthy reader on a VM whose vCPUs are starved must not be cut.
	DefaultStallGrace = 10 * time.Second

	unclaimedPerProcess = 1 << 20
	unclaimedTotal      = 32 << 20

	ringMax   = 1 << 20
	ringMin   = 64 << 10
	ringTotal = 64 << 20

	// The rings of ended processes (exit retention) keep at most
	// retainedRingMax each and retainedRingTotal together, the most
	// recently ended first: what a late replaying Connect may still need,
	// without holding up to 64 MiB for 30 s after a burst of processes.
	retainedRingMax   = ringMax
	retainedRingTotal = 2 << 20

	// entryOverhead is charged per buffered chunk on top of its memory so
	// that many tiny chunks cannot hide a large bookkeeping cost.
	entryOverhead = 64
)

// cost is what a buffered chunk holds in memory: its capacity (a read
// buffer handed over whole may be up to a third larger than its payload,
// bufPool.keep) and the bookkeeping.
func cost(e entry) int { return cap(e.Data) + entryOverhead }

// fifo is a queue of entries with a running cost (or payload) total.
// Popped slots are cleared so that the chunks can be collected.
type fifo struct {
	items []entry
	head  int
	bytes int
}

func (f *fifo) len() int { return len(f.items) - f.head }

func (f *fifo) push(e entry, size int) {
	if f.head > 0 && f.head == len(f.items) {
		f.items, f.head = f.items[:0], 0
	}
	f.items = append(f.items, e)
	f.bytes += size
}

func (f *fifo) pop(size func(entry) int) entry {
	e := f.items[f.head]
	f.items[f.head] = entry{}
	f.head++
	f.bytes -= size(e)
	if f.head == len(f.items) {
		f.items, f.head = f.items[:0], 0
	} else if f.head > 256 && f.head*2 > len(f.items) {
		n := copy(f.items, f.items[f.head:])
		clear(f.items[n:])
		f.items, f.head = f.items[:n], 0
	}
	return e
}

// clip gives back the slots a queue that no longer grows does not need.
func (f *fifo) clip() {
	if f.len() == 0 {
		f.items, f.head = nil, 0
		return
	}
	if f.head > 0 || cap(f.items) > len(f.items) {
		f.items, f.head = slices.Clone(f.items[f.head:]), 0
	}
}

// drain removes and returns every entry.
func (f *fifo) drain() []entry {
	out := append([]entry(nil), f.items[f.head:]...)
	f.items, f.head, f.bytes = nil, 0, 0
	return out
}

// budget is a byte allowance shared by many buffers (all processes and
// retention records); reservations never block.
type budget struct {
	limit int64
	used  atomic.Int64
}

func (b *budget) reserve(n int) bool {
	for {
		u := b.used.Load()
		if u+int64(n) > b.limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+int64(n)) {
			return true
		}
	}
}

func (b *budget) release(n int) { b.used.Add(-int64(n)) }

// unclaimed holds output produced while a process had no subscriber, for
// the next Connect (spec rpc.md §4.5): at most unclaimedPerProcess per
// process and unclaimedTotal across processes and retention records, the
// oldest whole chunks dropped first; a chunk that fits nowhere is dropped.
// The owner's lock guards it.
type unclaimed struct {
	q fifo
	b *budget
}

// add keeps e, with a reference of its own, unless it fits nowhere.
func (u *unclaimed) add(e entry) {
	c := cost(e)
	for u.q.len() > 0 && u.q.bytes+c > unclaimedPerProcess {
		u.dropOldest()
	}
	for !u.b.reserve(c) {
		if u.q.len() == 0 {
			return
		}
		u.dropOldest()
	}
	e.ref()
	u.q.push(e, c)
}

func (u *unclaimed) dropOldest() {
	e := u.q.pop(cost)
	u.b.release(cost(e))
	e.unref()
}

// take empties the buffer and returns its chunks, oldest first, with the
// buffer's references (the caller owns them now).
func (u *unclaimed) take() []entry {
	if u.q.len() == 0 {
		return nil
	}
	u.b.release(u.q.bytes)
	return u.q.drain()
}

// ring keeps the most recent output of a process with the cumulative
// offset of every chunk, for replay on reconnect. The ring of a live
// process holds at most its fair share of ringTotal (between ringMin and
// ringMax) and the live rings together never more than ringTotal; a ring
// that must make room drops its own oldest chunks. When the process ends,
// its ring moves to the retention records' smaller budget (retain). A
// ring never has holes: a chunk is only left out when the ring is empty,
// and then the retained range of every stream starts after it. The
// owner's lock guards it.
type ring struct {
	q fifo
	b *budget
	// holders counts the live rings for the fair share; nil once this
	// ring no longer counts (retained or freed).
	holders *atomic.Int64
	freed   bool
	next    Offsets // offset of the next byte of each stream
	first   Offsets // offset of the oldest retained byte of each stream
}

func newRing(b *budget, holders *atomic.Int64) *ring {
	holders.Add(1)
	return &ring{b: b, holders: holders}
}

func (r *ring) capacity() int {
	n := int64(1)
	if r.holders != nil {
		n = max(r.holders.Load(), 1)
	}
	c := r.b.limit / n
	return int(min(max(c, ringMin), ringMax))
}

// add appends the next chunk of its stream (keeping it with a reference of
// its own, if it can) and returns it with its offset.
func (r *ring) add(e entry) entry {
	s := e.Stream
	e.Offset = r.next[s]
	r.next[s] += uint64(len(e.Data))
	c := cost(e)
	limit := r.capacity()
	for r.q.len() > 0 && r.q.bytes+c > limit {
		r.evict()
	}
	for !r.b.reserve(c) {
		if r.q.len() == 0 {
			r.first = r.next
			return e
		}
		r.evict()
	}
	e.ref()
	r.q.push(e, c)
	return e
}

func (r *ring) evict() { r.drop(true) }

// drop removes the oldest chunk; reserved says whether its cost is held in
// r.b.
func (r *ring) drop(reserved bool) {
	e := r.q.pop(cost)
	if reserved {
		r.b.release(cost(e))
	}
	r.first[e.Stream] = e.Offset + uint64(len(e.Data))
	e.unref()
}

// retain moves the ring of a process that ended to the budget rb of the
// retention records: it keeps at most retainedRingMax of its newest
// output, no longer takes part in the live rings' fair share, and gives
// its place in the live budget back. When rb is full, room(need) is asked
// to trim older records' rings (it reports whether it freed anything);
// failing that the ring drops its own oldest chunks until it fits.
func (r *ring) retain(rb *budget, room func(need int) bool) {
	if r.freed || r.holders == nil {
		return
	}
	r.holders.Add(-1)
	r.holders = nil
	for r.q.len() > 0 && r.q.bytes > retainedRingMax {
		r.evict()
	}
	r.b.release(r.q.bytes)
	r.b = rb
	for r.q.len() > 0 && !rb.reserve(r.q.bytes) {
		if !room(r.q.bytes) {
			r.drop(false)
		}
	}
	r.q.clip()
}

// since returns the retained output after from (per stream), each entry
// with a new reference for the caller, the offsets at which it starts
// (from, or later where bytes are no longer retained) and the number of
// bytes per stream that can no longer be replayed. from must not exceed
// r.next.
func (r *ring) since(from Offsets) (out []entry, start, gap Offsets) {
	for s := range start {
		start[s] = max(from[s], r.first[s])
		gap[s] = start[s] - from[s]
	}
	for i := r.q.head; i < len(r.q.items); i++ {
		e := r.q.items[i]
		end := e.Offset + uint64(len(e.Data))
		if end <= start[e.Stream] {
			continue
		}
		if e.Offset < start[e.Stream] {
			e.Data = e.Data[start[e.Stream]-e.Offset:]
			e.Offset = start[e.Stream]
		}
		e.ref()
		out = append(out, e)
	}
	return out, start, gap
}

// free gives the ring's memory back to the budget; the ring stays usable
// for offsets only.
func (r *ring) free() {
	if r.freed {
		return
	}
	r.freed = true
	r.b.release(r.q.bytes)
	unrefAll(r.q.drain())
	r.first = r.next
	if r.holders != nil {
		r.holders.Add(-1)
		r.holders = nil
	}
}
