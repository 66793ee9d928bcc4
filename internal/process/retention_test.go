package process

import (
	"sync/atomic"
	"testing"
	"time"
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
