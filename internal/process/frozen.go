package process

import (
	"context"
	"errors"
)

// frozenGroups is implemented by a Placement whose groups can be frozen
// (*cgroups.Manager). A spawn never forks into a frozen group (spec
// control-plane.md §2.5): the check runs under the spawn lock, and when the
// group is frozen the spawn releases the lock without forking and waits,
// holding no lock, until the group is thawed.
type frozenGroups interface {
	// GroupFrozen reports whether the group of a new process (PTY or not)
	// has its own freeze request or reads settled-frozen.
	GroupFrozen(pty bool) bool
	// WaitThawed returns once the group is thawed, or ctx's error.
	WaitThawed(ctx context.Context, pty bool) error
}

// errGroupFrozen is what the fork step returns instead of forking into a
// frozen group.
var errGroupFrozen = errors.New("the process's cgroup is frozen")

// isWaitEnd reports whether a Start ended while waiting for a frozen group
// (its context ended), which is answered as any cancelled Start, not as a
// spawn failure.
func isWaitEnd(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errGroupFrozen)
}
