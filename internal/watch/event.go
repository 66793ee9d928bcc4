// Package watch owns directory watching for the filesystem service (spec
// rpc.md §9): validation, inotify watchers (recursive, with add-on-create and
// rescan), translation of inotify events into envd events with names
// relative to the watched directory, streaming subscriptions with a bounded
// queue, and polling watchers with a bounded buffer. A Manager owns every
// watcher and closes them all at shutdown.
package watch

import (
	"github.com/envd/envd/internal/fsops"
)

// Op is the kind of a filesystem event.
type Op int

// Operations, in the order one inotify event's operations are reported.
const (
	OpCreate Op = iota + 1
	OpRename
	OpChmod
	OpWrite
	OpRemove
)

func (o Op) String() string {
	switch o {
	case OpCreate:
		return "CREATE"
	case OpRename:
		return "RENAME"
	case OpChmod:
		return "CHMOD"
	case OpWrite:
		return "WRITE"
	case OpRemove:
		return "REMOVE"
	}
	return "UNSPECIFIED"
}

// Event is one operation on one path.
type Event struct {
	// Name is the path relative to the watched directory, "/"-separated;
	// "." is the watched directory itself.
	Name string
	Op   Op
	// Entry describes the path when the watch asked for entries; only for
	// CREATE, WRITE and CHMOD, and nil when the path could not be described.
	Entry *fsops.Entry
}

// Options are the client's choices for one watch.
type Options struct {
	Recursive          bool
	IncludeEntry       bool
	AllowNetworkMounts bool
}

// TempPrefix starts the names of envd's own upload and compose staging
// files, which watchers never report.
const TempPrefix = ".envd-tmp-"
