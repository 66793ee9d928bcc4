package process

import "time"

// Exit retention (spec rpc.md §4.7).
const (
	retentionTTL = 30 * time.Second
	retentionMax = 4096
)

// record is what is kept of an ended process so that a late Connect still
// learns how it ended: its end, the output nobody received, and its replay
// ring.
type record struct {
	pid       uint32
	tag       *string
	end       End
	endedAt   time.Time
	unclaimed unclaimed
	ring      *ring
	pty       bool
}

func (r *record) free() {
	unrefAll(r.unclaimed.take())
	r.ring.free()
}

// retention holds records in the order the processes ended. Expiry is lazy:
// whenever the store is used, records older than retentionTTL are dropped
// from the front; there is no timer (spec lifecycle.md §7.5). The manager
// lock guards it.
type retention struct {
	recs []*record
}

func (rt *retention) expire(now time.Time) {
	n := 0
	for n < len(rt.recs) && now.Sub(rt.recs[n].endedAt) >= retentionTTL {
		rt.recs[n].free()
		n++
	}
	if n > 0 {
		rt.remove(0, n)
	}
}

func (rt *retention) remove(i, n int) {
	copy(rt.recs[i:], rt.recs[i+n:])
	clear(rt.recs[len(rt.recs)-n:])
	rt.recs = rt.recs[:len(rt.recs)-n]
}

func (rt *retention) add(r *record, now time.Time) {
	rt.expire(now)
	for len(rt.recs) >= retentionMax {
		rt.recs[0].free()
		rt.remove(0, 1)
	}
	rt.recs = append(rt.recs, r)
}

// find returns the most recently ended record matching sel.
func (rt *retention) find(sel Selector, now time.Time) *record {
	rt.expire(now)
	for i := len(rt.recs) - 1; i >= 0; i-- {
		if sel.matches(rt.recs[i].pid, rt.recs[i].tag) {
			return rt.recs[i]
		}
	}
	return nil
}

// evict drops every record with the pid or the tag of a newly registered
// process.
func (rt *retention) evict(pid uint32, tag *string, now time.Time) {
	rt.expire(now)
	for i := 0; i < len(rt.recs); {
		r := rt.recs[i]
		if r.pid == pid || (tag != nil && r.tag != nil && *r.tag == *tag) {
			r.free()
			rt.remove(i, 1)
			continue
		}
		i++
	}
}

func (rt *retention) len() int { return len(rt.recs) }

// trimRings makes room for need bytes in the retained rings' budget b by
// dropping the oldest chunks of the oldest records' rings; it reports
// whether it dropped anything.
func (rt *retention) trimRings(b *budget, need int) bool {
	dropped := false
	for _, r := range rt.recs {
		trimmed := false
		for r.ring.q.len() > 0 && b.used.Load()+int64(need) > b.limit {
			r.ring.evict()
			trimmed = true
		}
		if trimmed {
			r.ring.q.clip()
			dropped = true
		}
		if b.used.Load()+int64(need) <= b.limit {
			break
		}
	}
	return dropped
}
