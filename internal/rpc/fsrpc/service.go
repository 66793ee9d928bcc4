// Package fsrpc implements the filesystem.Filesystem Connect service (spec
// rpc.md §5–§9). It is thin: it resolves the acting user and the paths,
// calls fsops and watch, converts their results to messages and maps their
// errors to Connect codes in one place (errors.go).
package fsrpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/gen/filesystem/filesystemconnect"
	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/identity"
	"github.com/envd/envd/internal/keepalive"
	"github.com/envd/envd/internal/rpc"
	"github.com/envd/envd/internal/server"
	"github.com/envd/envd/internal/watch"
)

// Service implements filesystem.Filesystem.
type Service struct {
	users    rpc.UserLookup
	env      *defaults.Store
	watchers *watch.Manager
	gate     *keepalive.Gate
	log      *slog.Logger

	// Bounds of a WatchDir stream (see watchdir.go).
	queue     int
	sendStall time.Duration

	// ListDir: the entries all listings share, and how long writing one
	// listing's response may take.
	lists     *fsops.ListBudget
	listWrite time.Duration
}

var _ filesystemconnect.FilesystemHandler = (*Service)(nil)

// Options tune a Service; zero values mean the defaults.
type Options struct {
	// Queue is how many events a WatchDir stream may have waiting for its
	// client before it is ended as too slow (default DefaultQueue).
	Queue int
	// SendStall is how long writing one message to a WatchDir client may
	// take before the stream is ended as stalled (default DefaultSendStall).
	SendStall time.Duration
	// ListBudget is shared by all ListDirs (default: one of
	// fsops.DefaultListBudget entries).
	ListBudget *fsops.ListBudget
	// ListWrite bounds the writing of a ListDir response (default
	// DefaultListWrite).
	ListWrite time.Duration
	// Users looks up the acting user (identity.LookupUser when nil).
	Users rpc.UserLookup
}

// DefaultListWrite bounds the writing of a ListDir response: its entries
// are held until it is written. 200 000 entries are about 30 MB of JSON,
// which takes a client reading at 1 MB/s half a minute.
const DefaultListWrite = 60 * time.Second

// New returns the service. Watchers are owned by watchers (closed by the
// caller at shutdown); keepalive timers hang off gate.
func New(env *defaults.Store, watchers *watch.Manager, gate *keepalive.Gate, log *slog.Logger, opts Options) *Service {
	s := &Service{users: opts.Users, env: env, watchers: watchers, gate: gate, log: log, queue: opts.Queue, sendStall: opts.SendStall,
		lists: opts.ListBudget, listWrite: opts.ListWrite}
	if s.lists == nil {
		s.lists = fsops.NewListBudget(fsops.DefaultListBudget)
	}
	if s.listWrite <= 0 {
		s.listWrite = DefaultListWrite
	}
	if s.queue <= 0 {
		s.queue = DefaultQueue
	}
	if s.sendStall <= 0 {
		s.sendStall = DefaultSendStall
	}
	return s
}

// caller is the user an RPC acts as and the resolver of its paths.
type caller struct {
	user    *identity.User
	workdir string
}

func (s *Service) caller(ctx context.Context) (*caller, error) {
	u, err := rpc.User(ctx, s.env, s.users)
	if err != nil {
		return nil, err
	}
	// An unprivileged envd can act only as itself (spec lifecycle.md §2.4).
	if euid := os.Geteuid(); euid != 0 && u.UID != uint32(euid) {
		return nil, connect.NewError(connect.CodePermissionDenied,
			fmt.Errorf("cannot access files as user '%s': envd runs unprivileged (uid %d) and can only act as itself", u.Name, euid))
	}
	return &caller{user: u, workdir: s.env.DefaultWorkdir()}, nil
}

// resolve expands a request path for the caller (spec http.md §4.2).
func (c *caller) resolve(p string) (string, error) {
	r, err := identity.ExpandAndResolve(p, c.user, c.workdir)
	if err != nil {
		return "", connect.NewError(connect.CodeInvalidArgument, err)
	}
	return r, nil
}

// Stat describes one path (spec rpc.md §7.1).
func (s *Service) Stat(ctx context.Context, req *connect.Request[filesystem.StatRequest]) (*connect.Response[filesystem.StatResponse], error) {
	c, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	p, err := c.resolve(req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	e, err := fsops.Stat(fsops.LoadNames(), p)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&filesystem.StatResponse{Entry: entryInfo(e)}), nil
}

// MakeDir creates a directory and its parents as the caller (spec rpc.md
// §7.2).
func (s *Service) MakeDir(ctx context.Context, req *connect.Request[filesystem.MakeDirRequest]) (*connect.Response[filesystem.MakeDirResponse], error) {
	c, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	p, err := c.resolve(req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	ch := fsops.NewChanges(s.watchers)
	defer ch.Settle(ctx) // the response waits for the watchers (spec D17)
	e, err := fsops.MakeDir(fsops.LoadNames(), p, c.user.UID, c.user.GID, ch)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&filesystem.MakeDirResponse{Entry: entryInfo(e)}), nil
}

// Move renames a path (spec rpc.md §7.3). Empty paths are refused: resolved
// like other paths they would mean the default workdir or the home
// directory, and moving that is never what a client meant.
func (s *Service) Move(ctx context.Context, req *connect.Request[filesystem.MoveRequest]) (*connect.Response[filesystem.MoveResponse], error) {
	if req.Msg.GetSource() == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("source is required"))
	}
	if req.Msg.GetDestination() == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("destination is required"))
	}
	c, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	src, err := c.resolve(req.Msg.GetSource())
	if err != nil {
		return nil, err
	}
	dst, err := c.resolve(req.Msg.GetDestination())
	if err != nil {
		return nil, err
	}
	ch := fsops.NewChanges(s.watchers)
	defer ch.Settle(ctx) // the response waits for the watchers (spec D17)
	e, err := fsops.Move(fsops.LoadNames(), src, dst, c.user.UID, c.user.GID, ch)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&filesystem.MoveResponse{Entry: entryInfo(e)}), nil
}

// ListDir lists a tree down to a depth (spec rpc.md §7.4).
func (s *Service) ListDir(ctx context.Context, req *connect.Request[filesystem.ListDirRequest]) (*connect.Response[filesystem.ListDirResponse], error) {
	c, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	p, err := c.resolve(req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	// The entries count against the shared budget until the response has
	// been written, and the writing is bounded, so that a client that does
	// not read its listing cannot hold them.
	acct := s.lists.Begin()
	if !rpc.AfterResponse(ctx, acct.End) {
		defer acct.End()
	}
	var out []*filesystem.EntryInfo
	// Each entry is converted as it is found and the description dropped.
	err = fsops.List(ctx, fsops.LoadNames(), p, req.Msg.GetDepth(), fsops.ListOptions{Account: acct},
		func(e *fsops.Entry) { out = append(out, entryInfo(e)) })
	if err != nil {
		return nil, toConnect(err)
	}
	if server.SetWriteDeadline(ctx, time.Now().Add(s.listWrite)) == nil {
		rpc.AfterResponse(ctx, func() { _ = server.SetWriteDeadline(ctx, time.Time{}) })
	}
	return connect.NewResponse(&filesystem.ListDirResponse{Entries: out}), nil
}

// Remove deletes a path recursively; a missing path succeeds (spec rpc.md
// §7.5). An empty path is refused: it would resolve to the default workdir
// or the home directory and wipe it.
func (s *Service) Remove(ctx context.Context, req *connect.Request[filesystem.RemoveRequest]) (*connect.Response[filesystem.RemoveResponse], error) {
	if req.Msg.GetPath() == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("path is required"))
	}
	c, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	p, err := c.resolve(req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	ch := fsops.NewChanges(s.watchers)
	defer ch.Settle(ctx) // the response waits for the watchers (spec D17)
	if err := fsops.Remove(p, ch); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&filesystem.RemoveResponse{}), nil
}

// CreateWatcher starts a polling watcher (spec rpc.md §9.4).
func (s *Service) CreateWatcher(ctx context.Context, req *connect.Request[filesystem.CreateWatcherRequest]) (*connect.Response[filesystem.CreateWatcherResponse], error) {
	c, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	p, err := c.resolve(req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	id, err := s.watchers.Create(p, watch.Options{
		Recursive:          req.Msg.GetRecursive(),
		IncludeEntry:       req.Msg.GetIncludeEntry(),
		AllowNetworkMounts: req.Msg.GetAllowNetworkMounts(),
	})
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&filesystem.CreateWatcherResponse{WatcherId: id}), nil
}

// GetWatcherEvents drains a polling watcher (spec rpc.md §9.4).
func (s *Service) GetWatcherEvents(ctx context.Context, req *connect.Request[filesystem.GetWatcherEventsRequest]) (*connect.Response[filesystem.GetWatcherEventsResponse], error) {
	evs, release, err := s.watchers.Events(req.Msg.GetWatcherId())
	// The events count against the watchers' shared budget until their
	// response has been written.
	if !rpc.AfterResponse(ctx, release) {
		defer release()
	}
	if err != nil {
		return nil, toConnect(err)
	}
	out := make([]*filesystem.FilesystemEvent, len(evs))
	for i, ev := range evs {
		out[i] = filesystemEvent(ev)
	}
	return connect.NewResponse(&filesystem.GetWatcherEventsResponse{Events: out}), nil
}

// RemoveWatcher stops a polling watcher (spec rpc.md §9.4).
func (s *Service) RemoveWatcher(ctx context.Context, req *connect.Request[filesystem.RemoveWatcherRequest]) (*connect.Response[filesystem.RemoveWatcherResponse], error) {
	if err := s.watchers.Remove(req.Msg.GetWatcherId()); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&filesystem.RemoveWatcherResponse{}), nil
}
