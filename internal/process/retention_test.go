package process

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/envd/envd/internal/defaults"
)

func newRecord(pid uint32, tag *string, at time.Time, ub, rb *budget, h *atomic.Int64) *record {
	r := &record{pid: pid, tag: tag, endedAt: at, unclaimed: unclaimed{b: ub}, ring: newRing(rb, h)}
	r.unclaimed.add(entry{Chunk: Chunk{Data: []byte("x")}})
	r.ring.add(ent(Stdout, []byte("x")))
	return r
}

func strp(s string) *string { return &s }

func TestRetention_LazyExpiryEvictionAndLookup(t *testing.T) {
	ub, rb := &budget{limit: 1 << 20}, &budget{limit: 1 << 20}
	var h atomic.Int64
	t0 := time.Unix(1000, 0)
	var rt retention
	rt.add(newRecord(10, strp("a"), t0, ub, rb, &h), t0)
	rt.add(newRecord(11, strp("a"), t0.Add(time.Second), ub, rb, &h), t0.Add(time.Second))
	rt.add(newRecord(12, nil, t0.Add(2*time.Second), ub, rb, &h), t0.Add(2*time.Second))
	rt.add(newRecord(13, strp(""), t0.Add(3*time.Second), ub, rb, &h), t0.Add(3*time.Second))

	if r := rt.find(ByTag("a"), t0.Add(5*time.Second)); r == nil || r.pid != 11 {
		t.Fatalf("tag a: want the most recently ended (11), got %+v", r)
	}
	if r := rt.find(ByTag(""), t0.Add(5*time.Second)); r == nil || r.pid != 13 {
		t.Fatalf("the empty tag is a tag: %+v", r)
	}
	if r := rt.find(ByTag("b"), t0.Add(5*time.Second)); r != nil {
		t.Fatal("unknown tag found")
	}
	if r := rt.find(ByPID(12), t0.Add(5*time.Second)); r == nil {
		t.Fatal("pid 12")
	}
	// Registration of a new process with pid 12 or tag "a" evicts.
	rt.evict(12, strp("a"), t0.Add(5*time.Second))
	if rt.len() != 1 || rt.recs[0].pid != 13 {
		t.Fatalf("after eviction: %d records", rt.len())
	}
	// 30 s after its end a record is gone, and its memory released.
	if r := rt.find(ByPID(13), t0.Add(33*time.Second)); r != nil {
		t.Fatal("expired record returned")
	}
	if rt.len() != 0 || ub.used.Load() != 0 || rb.used.Load() != 0 || h.Load() != 0 {
		t.Fatalf("leak: %d records, %d/%d bytes, %d rings", rt.len(), ub.used.Load(), rb.used.Load(), h.Load())
	}
}

func TestRetention_AtMost4096(t *testing.T) {
	ub, rb := &budget{limit: 1 << 30}, &budget{limit: 1 << 30}
	var h atomic.Int64
	t0 := time.Unix(1000, 0)
	var rt retention
	for i := 0; i < retentionMax+10; i++ {
		rt.add(newRecord(uint32(i), nil, t0, ub, rb, &h), t0)
	}
	if rt.len() != retentionMax || rt.recs[0].pid != 10 {
		t.Fatalf("%d records, oldest %d", rt.len(), rt.recs[0].pid)
	}
	if h.Load() != retentionMax {
		t.Fatalf("%d rings held", h.Load())
	}
}

// When a process ends its ring leaves the live rings (their budget and
// their fair share) for the retention records' own budget: each keeps at
// most retainedRingMax of its newest output, all together at most
// retainedRingTotal, and the oldest records' rings give way first. A
// replay from a trimmed record reports what it no longer has as a gap.
func TestRetention_RingsMoveToTheirOwnSmallerBudget(t *testing.T) {
	m := New(Options{Spawner: testReaper, Defaults: defaults.New("root")})
	const chunk = 32 << 10
	t0 := time.Unix(1000, 0)
	end := func(pid uint32, n int) *record {
		r := newRing(&m.ringB, &m.ringHolders)
		for range n {
			r.add(ent(Stdout, make([]byte, chunk)))
		}
		rec := &record{pid: pid, endedAt: t0, unclaimed: unclaimed{b: &m.unclaimedB}, ring: r}
		m.mu.Lock()
		rec.ring.retain(&m.retainedB, func(need int) bool { return m.ret.trimRings(&m.retainedB, need) })
		m.ret.add(rec, t0)
		m.mu.Unlock()
		return rec
	}
	// A ring of 2 MiB keeps its newest 1 MiB.
	first := end(1, 64)
	if first.ring.q.bytes > retainedRingMax || first.ring.q.bytes < retainedRingMax-chunk-entryOverhead {
		t.Fatalf("retained ring holds %d bytes", first.ring.q.bytes)
	}
	if m.ringB.used.Load() != 0 || m.ringHolders.Load() != 0 {
		t.Fatalf("live budget still holds %d bytes, %d rings", m.ringB.used.Load(), m.ringHolders.Load())
	}
	var recs []*record
	for i := range 10 {
		recs = append(recs, end(uint32(10+i), 16)) // 512 KiB each
	}
	if used := m.retainedB.used.Load(); used > retainedRingTotal {
		t.Fatalf("retained rings hold %d bytes together", used)
	}
	var sum int64
	for _, r := range append([]*record{first}, recs...) {
		sum += int64(r.ring.q.bytes)
	}
	if sum != m.retainedB.used.Load() {
		t.Fatalf("rings hold %d bytes, the budget says %d", sum, m.retainedB.used.Load())
	}
	// The oldest gave way; the newest three (2 MiB / 512 KiB, less the
	// bookkeeping) are whole.
	if first.ring.q.len() != 0 || recs[0].ring.q.len() != 0 {
		t.Fatalf("old rings kept %d and %d chunks", first.ring.q.len(), recs[0].ring.q.len())
	}
	for _, r := range recs[len(recs)-3:] {
		if r.ring.q.len() != 16 {
			t.Fatalf("record %d kept %d of 16 chunks", r.pid, r.ring.q.len())
		}
	}
	_, start, gap := first.ring.since(Offsets{})
	if start[Stdout] != 64*chunk || gap[Stdout] != 64*chunk {
		t.Fatalf("replay of a trimmed record: start %v gap %v", start, gap)
	}
	// Expiry gives everything back.
	m.mu.Lock()
	m.ret.expire(t0.Add(retentionTTL))
	m.mu.Unlock()
	if m.retainedB.used.Load() != 0 {
		t.Fatalf("%d bytes still held after expiry", m.retainedB.used.Load())
	}
}
