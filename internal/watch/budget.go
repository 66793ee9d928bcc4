package watch

import "sync"

// eventBudget is the memory that all watchers' waiting events share (D19):
// the pending events of polling watchers and the queues of streams. An
// event with an entry costs about half a KiB; without the budget 32
// polling watchers with full buffers would hold about a GB.
type eventBudget struct {
	total int64

	mu   sync.Mutex
	used int64
}

// take reserves n bytes if they fit.
func (b *eventBudget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.total {
		return false
	}
	b.used += n
	return true
}

func (b *eventBudget) give(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
}

func (b *eventBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// size estimates what ev costs in memory: the event, its strings and, if
// present, its entry with its strings and metadata.
func (ev Event) size() int64 {
	n := 64 + len(ev.Name)
	if e := ev.Entry; e != nil {
		n += 256 + len(e.Name) + len(e.Path) + len(e.Permissions) + len(e.Owner) + len(e.Group)
		if e.SymlinkTarget != nil {
			n += 16 + len(*e.SymlinkTarget)
		}
		for k, v := range e.Metadata {
			n += 64 + len(k) + len(v)
		}
	}
	return int64(n)
}
