package fsops

import (
	"context"
	"errors"
	"runtime/debug"
	"sync"
)

// Limits of one ListDir and of all of them together (D19). An entry costs
// envd about 0.9 KiB of memory until its response has been sent with the
// binary codec, and about 1.5 KiB with JSON (described, converted to its
// message, encoded), so all listings together hold at most about 350 MB,
// while template trees of some 100 000 files list in one call, two at a
// time.
const (
	// DefaultMaxEntries is the most entries one listing may read.
	DefaultMaxEntries = 150_000
	// DefaultMaxDepth is the deepest level a listing may reach: a tree
	// with entries deeper than this below the listed path is refused, even
	// when the request asks for more depth (a depth "as deep as it goes" on
	// a shallow tree is fine).
	DefaultMaxDepth = 256
	// DefaultListBudget is the most entries all listings together may hold
	// until their responses are sent.
	DefaultListBudget = 250_000
)

// ErrListTooLarge is in the chain of every error of a listing refused by a
// limit or by the shared budget; the message says which.
var ErrListTooLarge = errors.New("listing too large")

// ListBudget is the budget of entries that all listings in flight share.
// A listing takes room as it reads directories and holds it until its
// response has been sent (ListAccount.End). When there is no room, the
// oldest listing still walking waits for it (it is never starved by younger
// ones); any other fails at once, releasing what it took, so that listings
// cannot wait on each other.
type ListBudget struct {
	total int

	mu      sync.Mutex
	used    int
	next    uint64
	walking map[uint64]struct{}
	changed chan struct{} // closed and replaced when room is released
}

// NewListBudget returns a budget of total entries.
func NewListBudget(total int) *ListBudget {
	return &ListBudget{total: total, walking: map[uint64]struct{}{}, changed: make(chan struct{})}
}

// InUse reports the entries held now (for tests and leak checks).
func (b *ListBudget) InUse() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Begin opens the account of one listing; End must be called once its
// response has been sent (or it failed).
func (b *ListBudget) Begin() *ListAccount {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.next++
	b.walking[b.next] = struct{}{}
	return &ListAccount{b: b, id: b.next}
}

// ListAccount is one listing's share of a ListBudget.
type ListAccount struct {
	b    *ListBudget
	id   uint64
	once sync.Once

	mu   sync.Mutex
	held int
}

// listChunk: room is taken this many entries at a time, so the budget's
// lock is taken once per chunk, not per entry.
const listChunk = 1024

// take obtains room for n more entries. It waits only while this is the
// oldest listing still walking.
func (a *ListAccount) take(ctx context.Context, n int) error {
	b := a.b
	for {
		b.mu.Lock()
		if b.used+n <= b.total {
			b.used += n
			b.mu.Unlock()
			a.mu.Lock()
			a.held += n
			a.mu.Unlock()
			return nil
		}
		oldest := true
		for id := range b.walking {
			if id < a.id {
				oldest = false
				break
			}
		}
		changed := b.changed
		b.mu.Unlock()
		if !oldest {
			return Errorf(KindInternal, ErrListTooLarge,
				"too many entries are being listed at once (budget %d); retry later", b.total)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return Errorf(KindInternal, ctx.Err(), "listing interrupted: %v", ctx.Err())
		}
	}
}

// walked marks the end of the walk: the listing no longer waits for room,
// and younger ones may.
func (a *ListAccount) walked() {
	b := a.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.walking[a.id]; ok {
		delete(b.walking, a.id)
		b.broadcast()
	}
}

// collectEntries: once a listing of at least this many entries has been
// sent, its garbage is collected and returned to the system before its
// room is released, so that listings admitted one after the other do not
// pile up in a heap that Go would let grow to twice its peak.
const collectEntries = 16 << 10

// End releases everything the listing holds. It is idempotent.
func (a *ListAccount) End() {
	a.once.Do(func() {
		a.walked()
		a.mu.Lock()
		held := a.held
		a.held = 0
		a.mu.Unlock()
		if held >= collectEntries {
			debug.FreeOSMemory()
		}
		b := a.b
		b.mu.Lock()
		b.used -= held
		b.broadcast()
		b.mu.Unlock()
	})
}

func (b *ListBudget) broadcast() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// ListOptions bound one listing; zero values mean the defaults.
type ListOptions struct {
	MaxEntries int
	MaxDepth   int
	// Account is the listing's share of the shared budget; nil: none.
	Account *ListAccount
}

func errTooManyEntries(requested string, max int) error {
	return Errorf(KindInternal, ErrListTooLarge,
		"directory listing of %s has more than %d entries; list a subdirectory or ask for less depth", requested, max)
}

func errTooDeep(requested string, max int) error {
	return Errorf(KindInternal, ErrListTooLarge,
		"directory tree under %s is deeper than %d levels; list a subdirectory or ask for less depth", requested, max)
}
