package handover

import (
	"context"
	"fmt"

	"github.com/envd/envd/internal/handover/handoverpb"
)

// The parts below stand in for the ones later work provides (docs/
// upgrade.md): processes with retention (u-procs), polling watchers
// (u-procs) and port forwarding (u-ports). They carry nothing and count 0.
// Where carrying nothing would lose state a client relies on — a running
// process, a retained exit, a polling watcher's pending events — their
// Export refuses, so the upgrade rolls back with "handover aborted:
// <part>: …" instead of silently dropping it. The replacements implement
// the same interfaces and drop the refusal.

// ErrNotCarriedYet is the refusal of a pending part.
var ErrNotCarriedYet = fmt.Errorf("not carried across an upgrade yet")

// PendingProcesses stands in for the process table (processes and exit
// retention). Count reports the live processes and the retention records.
type PendingProcesses struct {
	Count func() (live, retained int)
}

// Name implements Part and Importer.
func (p PendingProcesses) Name() string { return "processes" }

// Quiesce implements Part.
func (p PendingProcesses) Quiesce(context.Context) error { return nil }

// Export refuses while there is anything to carry.
func (p PendingProcesses) Export(*handoverpb.Record, *Carried) error {
	live, retained := p.Count()
	if live > 0 || retained > 0 {
		return fmt.Errorf("%d running processes and %d retained exits are %w", live, retained, ErrNotCarriedYet)
	}
	return nil
}

// Resume implements Part.
func (p PendingProcesses) Resume() {}

// Import implements Importer: nothing was carried.
func (p PendingProcesses) Import(*handoverpb.Record, *Inherited) (Counts, error) {
	return Counts{}, nil
}

// PendingWatchers stands in for the polling watchers. Len reports the
// polling and streaming watchers (*watch.Manager.Len). WatchDir streams
// need nothing: their connections end with the exec and their clients
// re-subscribe (§8.7).
type PendingWatchers struct {
	Len func() (pollers, streams int)
}

// Name implements Part and Importer.
func (p PendingWatchers) Name() string { return "polling watchers" }

// Quiesce implements Part.
func (p PendingWatchers) Quiesce(context.Context) error { return nil }

// Export refuses while a polling watcher exists.
func (p PendingWatchers) Export(*handoverpb.Record, *Carried) error {
	if n, _ := p.Len(); n > 0 {
		return fmt.Errorf("%d polling watchers are %w", n, ErrNotCarriedYet)
	}
	return nil
}

// Resume implements Part.
func (p PendingWatchers) Resume() {}

// Import implements Importer: nothing was carried.
func (p PendingWatchers) Import(*handoverpb.Record, *Inherited) (Counts, error) {
	return Counts{}, nil
}

// Forwarding is the port forwarder as the pending part uses it
// (*ports.Forwarder).
type Forwarding interface {
	Start()
	Stop()
	Running() bool
}

// PendingForwarding stands in for port forwarding until its sockets are
// carried: Quiesce stops it (the scanner, every forwarder and its
// connections), a rollback starts it again, and the incoming image starts
// it as at boot (its first scan creates the forwarders anew). Forwarded
// connections do not survive an upgrade meanwhile; the forwarded ports are
// unreachable only while the upgrade runs.
type PendingForwarding struct {
	F Forwarding
	// stopped: Quiesce stopped forwarding (only the upgrade uses it).
	stopped bool
}

// Name implements Part and Importer.
func (p *PendingForwarding) Name() string { return "port forwarding" }

// Quiesce stops forwarding if it runs.
func (p *PendingForwarding) Quiesce(context.Context) error {
	p.stopped = p.F.Running()
	if p.stopped {
		p.F.Stop()
	}
	return nil
}

// Export records nothing: the forwarders are re-created after the exec.
func (p *PendingForwarding) Export(*handoverpb.Record, *Carried) error { return nil }

// Resume restarts what Quiesce stopped.
func (p *PendingForwarding) Resume() {
	if p.stopped {
		p.stopped = false
		p.F.Start()
	}
}

// Import implements Importer: the forwarder starts as at boot.
func (p *PendingForwarding) Import(*handoverpb.Record, *Inherited) (Counts, error) {
	return Counts{}, nil
}
