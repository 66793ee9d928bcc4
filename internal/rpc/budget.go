package rpc

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"connectrpc.com/connect"
)

// Budget is the shared in-flight budget of request message bytes (D19).
// Before a message is read, room for all of it is reserved here: its
// declared size, or its limit when the size is not known in advance (a
// compressed or chunked body). A message holds its reservation until it has
// been handled, so what the budget admits at once is what envd may hold at
// once. A reservation that does not fit waits a short while for room, then
// fails; a request waiting holds nothing, so waiting cannot deadlock.
//
// The part of each message beyond its first SmallBytes is "large", and
// large parts together may use only Total-Reserve: when large messages have
// taken all they may, small requests (paths, signals, a keystroke) are
// still served.
type Budget struct {
	total   int64
	reserve int64
	small   int64
	wait    time.Duration

	mu        sync.Mutex
	usedSmall int64
	usedLarge int64
	changed   chan struct{} // closed and replaced whenever room is released
}

// BudgetLimits sizes a Budget.
type BudgetLimits struct {
	// Total is the most message bytes held at once across all requests.
	Total int64
	// Reserve is the part of Total that only the first SmallBytes of each
	// message may use.
	Reserve int64
	// SmallBytes of each message count as small.
	SmallBytes int64
	// Wait is how long a reservation waits for room before it fails.
	Wait time.Duration
}

// NewBudget returns an empty budget.
func NewBudget(l BudgetLimits) *Budget {
	return &Budget{total: l.Total, reserve: min(l.Reserve, l.Total), small: l.SmallBytes, wait: l.Wait, changed: make(chan struct{})}
}

// InUse reports the bytes reserved now (for tests and leak checks).
func (b *Budget) InUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.usedSmall + b.usedLarge
}

// tryAcquire takes small+large bytes if both fit.
func (b *Budget) tryAcquire(small, large int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.usedLarge+large > b.total-b.reserve || b.usedSmall+b.usedLarge+small+large > b.total {
		return false
	}
	b.usedSmall += small
	b.usedLarge += large
	return true
}

// acquire takes small+large bytes, waiting up to the budget's wait for
// room; false if there was none, or ctx ended first.
func (b *Budget) acquire(ctx context.Context, small, large int64) bool {
	var timer <-chan time.Time
	for {
		b.mu.Lock()
		changed := b.changed
		b.mu.Unlock()
		if b.tryAcquire(small, large) {
			return true
		}
		if timer == nil {
			if b.wait <= 0 {
				return false
			}
			t := time.NewTimer(b.wait)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-changed:
		case <-timer:
			return b.tryAcquire(small, large)
		case <-ctx.Done():
			return false
		}
	}
}

func (b *Budget) release(small, large int64) {
	if small == 0 && large == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.usedSmall -= small
	b.usedLarge -= large
	close(b.changed)
	b.changed = make(chan struct{})
}

// split divides n bytes of a message that already holds have bytes into
// its small and large parts.
func (b *Budget) split(have, n int64) (small, large int64) {
	small = max(0, min(n, b.small-have))
	return small, n - small
}

// collectBytes: once a message of at least this many bytes has been
// handled, the garbage it left (connect-go's buffer and its growth, the
// decoded message: two to three times its size) is collected before its
// room is released. Go's collector would otherwise let the heap grow to
// about twice its peak before the next cycle, so large messages admitted
// one after the other would pile up far beyond what the budget admits at
// once. envd's live heap is small, so a collection takes milliseconds.
const collectBytes = 8 << 20

// ticket is one request's account with the budget. The messages of a
// request are read one after the other, so it holds one reservation at a
// time.
type ticket struct {
	b         *Budget
	ctx       context.Context //nolint:containedctx // the request's, for waits inside Read
	procedure string

	mu    sync.Mutex
	small int64 // reserved, small part
	large int64 // reserved, large part
	used  int64 // bytes the current message really put in memory

	after []func() // run when the request ends (AfterResponse)
}

// finish ends the request: its reservation, then what AfterResponse
// registered.
func (t *ticket) finish() {
	t.done()
	t.mu.Lock()
	after := t.after
	t.after = nil
	t.mu.Unlock()
	for _, fn := range after {
		fn()
	}
}

// use records n bytes of the current message read into memory.
func (t *ticket) use(n int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.used += n
}

// errBudget is the error a request gets when the budget has no room.
func (t *ticket) errBudget(n int64) error {
	return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
		"too many large request messages in flight: no room for %d bytes in the %d MiB budget within %s; retry %s later",
		n, t.b.total>>20, t.b.wait, t.procedure))
}

// reserve takes room for a message of n bytes, waiting for it if needed.
// Any earlier reservation must have been released (done).
func (t *ticket) reserve(n int64) error {
	small, large := t.b.split(0, n)
	if !t.b.acquire(t.ctx, small, large) {
		return t.errBudget(n)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.small, t.large = small, large
	return nil
}

// extend grows the current reservation by n bytes without waiting (a
// message turned out larger than reserved; it holds room already, so it
// must not wait for others).
func (t *ticket) extend(n int64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	small, large := t.b.split(t.small+t.large, n)
	if !t.b.tryAcquire(small, large) {
		return t.errBudget(t.small + t.large + n)
	}
	t.small += small
	t.large += large
	return nil
}

// shrink gives back the current reservation's room beyond n bytes, once
// the message's real size is known.
func (t *ticket) shrink(n int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if excess := t.large - max(0, n-t.small); excess > 0 {
		t.large -= excess
		t.b.release(0, excess)
	}
}

// done releases the reservation: the message has been handled (the next
// one is being read, the handler answered, or the request ended).
func (t *ticket) done() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.used >= collectBytes {
		debug.FreeOSMemory()
	}
	t.b.release(t.small, t.large)
	t.small, t.large, t.used = 0, 0, 0
}
