package client

import (
	"context"
	"fmt"
	"io"
	"iter"
	"sync"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
)

// EventType is the kind of change a watch reports.
type EventType int

// Event types.
const (
	EventUnknown EventType = iota
	EventCreate            // created, or moved into the watched tree
	EventWrite             // content modified
	EventRemove            // deleted
	EventRename            // moved away or renamed
	EventChmod             // attributes changed
)

// String returns "CREATE", "WRITE", "REMOVE", "RENAME", "CHMOD" or
// "UNKNOWN".
func (t EventType) String() string {
	switch t {
	case EventCreate:
		return "CREATE"
	case EventWrite:
		return "WRITE"
	case EventRemove:
		return "REMOVE"
	case EventRename:
		return "RENAME"
	case EventChmod:
		return "CHMOD"
	}
	return "UNKNOWN"
}

// MarshalText encodes the type as its String.
func (t EventType) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// Event is one change in a watched directory.
type Event struct {
	// Name is the changed path relative to the watched directory ("." for
	// the directory itself), with "/" separators.
	Name string    `json:"name"`
	Type EventType `json:"type"`
	// Entry describes the entry after the change, for CREATE, WRITE and
	// CHMOD events of watches with IncludeEntry, when it could be read.
	Entry *EntryInfo `json:"entry,omitempty"`
}

func eventFromProto(p *filesystem.FilesystemEvent) Event {
	e := Event{Name: p.GetName(), Entry: entryFromProto(p.GetEntry())}
	switch p.GetType() {
	case filesystem.EventType_EVENT_TYPE_CREATE:
		e.Type = EventCreate
	case filesystem.EventType_EVENT_TYPE_WRITE:
		e.Type = EventWrite
	case filesystem.EventType_EVENT_TYPE_REMOVE:
		e.Type = EventRemove
	case filesystem.EventType_EVENT_TYPE_RENAME:
		e.Type = EventRename
	case filesystem.EventType_EVENT_TYPE_CHMOD:
		e.Type = EventChmod
	}
	return e
}

// WatchOptions configure watches.
type WatchOptions struct {
	// Recursive watches the whole tree, including directories created
	// later. Clients must tolerate duplicate CREATE events for entries of a
	// new directory.
	Recursive bool
	// IncludeEntry attaches an EntryInfo to CREATE, WRITE and CHMOD events.
	IncludeEntry bool
	// AllowNetworkMounts permits watching NFS, CIFS, SMB or FUSE mounts,
	// where remote changes may go unnoticed.
	AllowNetworkMounts bool
}

// watchEventBuffer bounds the events a Watch holds for its reader. When it
// is full the receiving goroutine waits, so envd's own bounded queue fills
// and envd ends the watch with an aborted error rather than let it grow.
const watchEventBuffer = 256

// Watch is a streaming watch of a directory (WatchDir). Events arrive on
// Events until the watch fails or is closed; then Err tells why.
type Watch struct {
	events    chan Event
	done      chan struct{}
	closing   chan struct{}
	closeOnce sync.Once
	cancel    context.CancelFunc
	err       error
}

// Events returns the channel of events; it is closed when the watch ends.
func (w *Watch) Events() <-chan Event { return w.events }

// Err returns why the watch ended (nil after Close or a normal end). Call
// it after Events was closed.
func (w *Watch) Err() error {
	<-w.done
	return w.err
}

// Close stops the watch and waits for its goroutine.
func (w *Watch) Close() error {
	w.closeOnce.Do(func() {
		close(w.closing)
		w.cancel()
	})
	<-w.done
	return nil
}

// openWatch starts WatchDir and waits for envd's start event, so that every
// change after openWatch returns is reported.
func (c *Client) openWatch(ctx context.Context, path string, opts *WatchOptions) (*connect.ServerStreamForClient[filesystem.WatchDirResponse], context.CancelFunc, error) {
	var o WatchOptions
	if opts != nil {
		o = *opts
	}
	wctx, cancel := context.WithCancel(ctx)
	msg := &filesystem.WatchDirRequest{Path: path, Recursive: o.Recursive, IncludeEntry: o.IncludeEntry, AllowNetworkMounts: o.AllowNetworkMounts}
	stream, err := c.fs.WatchDir(wctx, newRequest(c, msg, true, true))
	if err != nil {
		cancel()
		return nil, nil, rpcError("WatchDir", err)
	}
	fail := func(err error) error {
		cancel()
		_ = stream.Close()
		return err
	}
	if !stream.Receive() {
		if err := stream.Err(); err != nil {
			return nil, nil, fail(rpcError("WatchDir", err))
		}
		return nil, nil, fail(&Error{Op: "WatchDir", Status: 500, Code: connect.CodeInternal, Message: "stream ended before the start event"})
	}
	if stream.Msg().GetStart() == nil {
		return nil, nil, fail(&Error{Op: "WatchDir", Status: 500, Code: connect.CodeInternal, Message: fmt.Sprintf("expected a start event, got %T", stream.Msg().GetEvent())})
	}
	return stream, cancel, nil
}

// nextWatchEvent returns the next filesystem event of a WatchDir stream,
// skipping keepalives; io.EOF at a normal end.
func nextWatchEvent(stream *connect.ServerStreamForClient[filesystem.WatchDirResponse]) (Event, error) {
	for stream.Receive() {
		if fe := stream.Msg().GetFilesystem(); fe != nil {
			return eventFromProto(fe), nil
		}
	}
	if err := stream.Err(); err != nil {
		return Event{}, rpcError("WatchDir", err)
	}
	return Event{}, io.EOF
}

// WatchDir starts watching the directory at path and returns once envd
// watches it. Cancelling ctx or calling Close ends the watch.
func (c *Client) WatchDir(ctx context.Context, path string, opts *WatchOptions) (*Watch, error) {
	stream, cancel, err := c.openWatch(ctx, path, opts)
	if err != nil {
		return nil, err
	}
	w := &Watch{
		events:  make(chan Event, watchEventBuffer),
		done:    make(chan struct{}),
		closing: make(chan struct{}),
		cancel:  cancel,
	}
	go func() {
		defer close(w.done)
		defer close(w.events)
		defer func() {
			if r := recover(); r != nil {
				w.err = fmt.Errorf("envd client: panic while receiving watch events: %v", r)
			}
			cancel()
			_ = stream.Close()
		}()
		for {
			ev, err := nextWatchEvent(stream)
			if err != nil {
				select {
				case <-w.closing:
				default:
					if err != io.EOF {
						w.err = err
					}
				}
				return
			}
			select {
			case w.events <- ev:
			case <-w.closing:
				return
			}
		}
	}()
	return w, nil
}

// Watch returns an iterator over the changes in the directory at path. The
// watch starts when iteration starts and ends when the loop stops or ctx is
// done; a failure is yielded once as the error, after which iteration
// stops.
//
//	for ev, err := range c.Watch(ctx, "/tmp", nil) {
//		if err != nil { return err }
//		fmt.Println(ev.Type, ev.Name)
//	}
func (c *Client) Watch(ctx context.Context, path string, opts *WatchOptions) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		stream, cancel, err := c.openWatch(ctx, path, opts)
		if err != nil {
			yield(Event{}, err)
			return
		}
		defer func() {
			cancel()
			_ = stream.Close()
		}()
		for {
			ev, err := nextWatchEvent(stream)
			if err == io.EOF {
				return
			}
			if err != nil {
				yield(Event{}, err)
				return
			}
			if !yield(ev, nil) {
				return
			}
		}
	}
}

// Watcher is a polling watcher kept by envd between requests
// (CreateWatcher); it collects up to 65536 events between two Events
// calls and reports an overflow as a data_loss error.
type Watcher struct {
	c *Client
	// ID is envd's identifier of the watcher.
	ID string
}

// CreateWatcher starts a polling watcher on the directory at path.
func (c *Client) CreateWatcher(ctx context.Context, path string, opts *WatchOptions) (*Watcher, error) {
	var o WatchOptions
	if opts != nil {
		o = *opts
	}
	msg := &filesystem.CreateWatcherRequest{Path: path, Recursive: o.Recursive, IncludeEntry: o.IncludeEntry, AllowNetworkMounts: o.AllowNetworkMounts}
	resp, err := c.fs.CreateWatcher(ctx, newRequest(c, msg, true, false))
	if err != nil {
		return nil, rpcError("CreateWatcher", err)
	}
	return &Watcher{c: c, ID: resp.Msg.GetWatcherId()}, nil
}

// Watcher returns a handle on the existing polling watcher id.
func (c *Client) Watcher(id string) *Watcher { return &Watcher{c: c, ID: id} }

// Events returns the events collected since the previous call, oldest
// first.
func (w *Watcher) Events(ctx context.Context) ([]Event, error) {
	resp, err := w.c.fs.GetWatcherEvents(ctx, newRequest(w.c, &filesystem.GetWatcherEventsRequest{WatcherId: w.ID}, true, false))
	if err != nil {
		return nil, rpcError("GetWatcherEvents", err)
	}
	out := make([]Event, 0, len(resp.Msg.GetEvents()))
	for _, e := range resp.Msg.GetEvents() {
		out = append(out, eventFromProto(e))
	}
	return out, nil
}

// Remove stops the watcher and frees it in envd.
func (w *Watcher) Remove(ctx context.Context) error {
	_, err := w.c.fs.RemoveWatcher(ctx, newRequest(w.c, &filesystem.RemoveWatcherRequest{WatcherId: w.ID}, true, false))
	return rpcError("RemoveWatcher", err)
}
