// Package process owns the processes envd starts for clients (spec rpc.md
// §4, lifecycle.md §8): the process table, spawning through the reaper
// (pipes or a pseudo-terminal, credentials with supplementary groups, the
// environment, the working directory, a process group or session per
// process, cgroup placement), the fan-out of output to any number of
// subscribers that never lets one of them stall the process or the others,
// the unclaimed-output buffer, the replay ring, exit retention, tags,
// signals, stdin, terminal resizing, the --cmd process and termination at
// shutdown. It knows nothing of HTTP or Connect: the RPC layer maps its
// typed errors (*Error) to protocol codes.
package process

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/identity"
)

// Spawner runs a fork under the reaper's spawn lock and delivers the
// child's exit status exactly once (*reaper.Reaper).
type Spawner interface {
	Spawn(start func() (int, error)) (int, <-chan unix.WaitStatus, error)
}

// Placement chooses the cgroup a new process starts in (lifecycle.md §6.2).
type Placement interface {
	// CgroupFD returns an open cgroup directory fd for a new process, or -1 to
	// leave it in envd's cgroup (tag "_system", no-op manager, placement disabled).
	CgroupFD(pty bool, tag string) int
	// PlacementFailed is called when a spawn with the fd failed with ENOSYS, EINVAL,
	// EOPNOTSUPP or EBADF; the process is then spawned again without it and
	// placement stays disabled for envd's life.
	PlacementFailed(err error)
}

// Options configure a Manager.
type Options struct {
	// Spawner forks children; required.
	Spawner Spawner
	// Defaults supplies the default user, workdir and environment; required.
	Defaults *defaults.Store
	// Placement puts new processes into cgroups; nil places nothing.
	Placement Placement
	// Log receives process start/end lines (never output or env values).
	Log *slog.Logger
	// Users loads the user and group databases (a cache of the system's,
	// identity.Cache, if nil).
	Users func() (*identity.Database, error)
	// Now is the clock of exit retention (time.Now if nil).
	Now func() time.Time
	// StallGrace is how long output waits, when every subscriber's queue is
	// full, for any subscriber to take something before the stalled ones
	// are disconnected (DefaultStallGrace if zero; spec rpc.md §4.5).
	StallGrace time.Duration
}

// Manager is the process table with everything attached to it. Create it
// with New; it starts goroutines only per process, and TerminateAll ends
// them at shutdown.
type Manager struct {
	spawner   Spawner
	env       *defaults.Store
	placement Placement
	log       *slog.Logger
	users     func() (*identity.Database, error)
	now       func() time.Time
	euid      int
	grace     time.Duration
	fx        *effects

	placementOff atomic.Bool
	unclaimedB   budget
	ringB        budget // live processes' rings
	ringHolders  atomic.Int64
	retainedB    budget // retention records' rings

	// The output read path: read buffers shared by all processes, the
	// capacity pipes are grown to when output flows (0: never) and the
	// budget of grown capacity (read_linux.go).
	pipeBufs, ptyBufs *bufPool
	pipeGrow          int
	pipeB             budget
	// argLimit is exec's limit on arguments and environment (beyondExec).
	argLimit int

	// life ends when TerminateAll begins; it bounds the background start of
	// a --cmd process that found its group frozen.
	life    context.Context
	endLife context.CancelFunc

	// mu guards the table and retention. Lock order: Manager.mu, then
	// Process.mu, then Subscription.mu. It is never held across a fork.
	mu      sync.Mutex
	live    []*Process // in registration order
	ret     retention
	closing bool
}

// New returns an empty manager.
func New(o Options) *Manager {
	m := &Manager{
		spawner:   o.Spawner,
		env:       o.Defaults,
		placement: o.Placement,
		log:       o.Log,
		users:     o.Users,
		now:       o.Now,
		euid:      os.Geteuid(),
		grace:     o.StallGrace,
	}
	if m.grace <= 0 {
		m.grace = DefaultStallGrace
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.fx = newEffects(m.log)
	if m.users == nil {
		m.users = identity.NewCache(identity.SystemFiles).Load
	}
	if m.now == nil {
		m.now = time.Now
	}
	m.life, m.endLife = context.WithCancel(context.Background())
	m.unclaimedB.limit = unclaimedTotal
	m.ringB.limit = ringTotal
	m.retainedB.limit = retainedRingTotal
	m.pipeBufs, m.ptyBufs = newBufPool(pipeReadSize), newBufPool(ptyReadSize)
	m.pipeGrow = min(pipeGrowSize, pipeMaxSize())
	m.pipeB.limit = pipeGrowTotal
	m.argLimit = execArgLimit()
	return m
}

// Selector picks a process by pid or by tag.
type Selector struct {
	PID   uint32
	Tag   string
	ByTag bool
}

// ByPID selects the process with that pid.
func ByPID(pid uint32) Selector { return Selector{PID: pid} }

// ByTag selects the most recently started process with exactly that tag
// (the empty string is a tag like any other).
func ByTag(tag string) Selector { return Selector{Tag: tag, ByTag: true} }

func (s Selector) matches(pid uint32, tag *string) bool {
	if s.ByTag {
		return tag != nil && *tag == s.Tag
	}
	return pid == s.PID
}

// StartOptions describe a process to start.
type StartOptions struct {
	Config Config
	// User the process runs as (its credentials, HOME, ~ in cwd).
	User *identity.User
	// PTY, when set, runs the process on a new terminal of that size.
	PTY *Size
	// Tag, when set (even to ""), lets clients select the process by it.
	Tag *string
	// Stdin: nil or true gives a stdin pipe, false /dev/null (ignored with
	// a PTY).
	Stdin *bool
	// Deadline, when set, is the process's lifetime: its group is killed
	// with SIGKILL then.
	Deadline time.Time
	// Wait ends a wait for a frozen group (control-plane.md §2.5): the Start
	// request's context. Nil means "do not wait": a frozen group fails the
	// start with errGroupFrozen.
	Wait context.Context

	// detached: no subscriber from the start (the --cmd process).
	detached bool
}

// Start spawns a process and registers it. Unless detached, the returned
// subscription was attached before the child existed, so it sees all of
// the output; the caller must Close it.
func (m *Manager) Start(o StartOptions) (*Process, *Subscription, error) {
	m.mu.Lock()
	closing := m.closing
	m.mu.Unlock()
	if closing {
		return nil, nil, ErrShuttingDown
	}
	u := o.User
	cfg := o.Config
	var cwdArg string
	if cfg.Cwd != nil {
		cwdArg = *cfg.Cwd
	}
	cwd, err := identity.ExpandAndResolve(cwdArg, u, m.env.DefaultWorkdir())
	if err != nil {
		return nil, nil, newError(KindInvalidArgument, err, "%s", err.Error())
	}
	if _, err := os.Stat(cwd); errors.Is(err, fs.ErrNotExist) {
		return nil, nil, newError(KindInvalidArgument, err, "cwd '%s' does not exist", cwd)
	}
	shown := commandLine
	spawnErr := func(err error) error {
		if o.PTY != nil {
			return newError(KindInvalidArgument, err, "error starting pty with command '%s' in dir '%s' with '%d' cols and '%d' rows: %v",
				shown(cfg), cwd, o.PTY.Cols, o.PTY.Rows, err)
		}
		return newError(KindInvalidArgument, err, "error starting process '%s': %v", shown(cfg), err)
	}
	if beyondExec(cfg, m.argLimit) && !requestHasNUL(cfg, cwd) {
		// What the fork would have failed with, without the copies.
		shown = func(cfg Config) string { return shortCommandLine(cfg, maxShownCommand) }
		return nil, nil, spawnErr(fmt.Errorf("fork/exec %s: %w", shell, syscall.E2BIG))
	}
	cred, err := m.credential(u)
	if err != nil {
		var pe *Error
		if errors.As(err, &pe) {
			return nil, nil, err
		}
		return nil, nil, spawnErr(err)
	}
	env := buildEnv(os.Getenv("PATH"), u, m.env.Vars(), cfg.Envs)
	if strings.IndexByte(cfg.Cmd, 0) >= 0 || hasNUL(cfg.Args) || hasNUL(env) || strings.IndexByte(cwd, 0) >= 0 {
		// Rejected before the fork: EINVAL from the fork would otherwise
		// look like a kernel without cgroup placement.
		return nil, nil, spawnErr(fmt.Errorf("fork/exec %s: %w", shell, syscall.EINVAL))
	}

	p := &Process{
		m:         m,
		tag:       o.Tag,
		cfg:       cfg,
		subs:      map[*Subscription]struct{}{},
		unclaimed: unclaimed{b: &m.unclaimedB},
		ring:      newRing(&m.ringB, &m.ringHolders),
		eof:       make(chan struct{}),
		signalled: make(chan struct{}),
		done:      make(chan struct{}),
		input:     make(chan struct{}, 1),
		epoch:     time.Now(),
	}
	child, err := p.openIO(o)
	if err != nil {
		p.ring.free()
		return nil, nil, spawnErr(err)
	}
	var sub *Subscription
	if !o.detached {
		sub = newSubscription(p, nil, false, Offsets{})
		p.attach(sub)
	}
	sys := &syscall.SysProcAttr{Credential: cred}
	if o.PTY != nil {
		// A new session with the terminal as its controlling tty (also a
		// new process group); Ctty is the child's fd 0.
		sys.Setsid, sys.Setctty, sys.Ctty = true, true, 0
	} else {
		sys.Setpgid = true
	}
	attr := &syscall.ProcAttr{Dir: cwd, Files: fds(child), Sys: sys}
	tag := ""
	if o.Tag != nil {
		tag = *o.Tag
	}
	pid, status, err := m.spawn(o.Wait, newLaunch(cfg, env, cwd), attr, o.PTY != nil, tag)
	for _, f := range child {
		_ = f.Close()
	}
	if err != nil {
		p.closeParentIO()
		p.ring.free()
		if isWaitEnd(err) {
			return nil, nil, err
		}
		return nil, nil, spawnErr(fmt.Errorf("fork/exec %s: %w", shell, err))
	}
	p.pid = pid

	now := m.now()
	m.mu.Lock()
	m.ret.evict(uint32(pid), o.Tag, now)
	m.live = append(m.live, p)
	closing = m.closing
	m.mu.Unlock()

	if !o.Deadline.IsZero() {
		p.deadline = time.AfterFunc(time.Until(o.Deadline), func() {
			m.safely("deadline kill", func() { _ = p.Signal(syscall.SIGKILL) })
		})
	}
	if closing {
		// TerminateAll began during the fork and cannot know this one.
		_ = p.Signal(syscall.SIGKILL)
	}
	attrs := []any{"pid", pid, "cmd", commandLine(cfg)}
	if o.Tag != nil {
		attrs = append(attrs, "tag", *o.Tag)
	}
	if o.PTY != nil {
		attrs = append(attrs, "pty", true)
	}
	m.log.Info("process started", attrs...)

	if p.pty != nil {
		p.readers.Store(1)
		go p.read(PTY, p.outputs[PTY], m.ptyBufs)
	} else {
		p.readers.Store(2)
		go p.read(Stdout, p.outputs[Stdout], m.pipeBufs)
		go p.read(Stderr, p.outputs[Stderr], m.pipeBufs)
	}
	go p.wait(status)
	return p, sub, nil
}

// openIO creates the process's side of its I/O and returns the child's
// stdin, stdout and stderr. Everything is close-on-exec; ForkExec dup2s
// the child's three onto 0, 1 and 2.
func (p *Process) openIO(o StartOptions) (child []*os.File, err error) {
	if o.PTY != nil {
		master, slave, err := openPTY(*o.PTY)
		if err != nil {
			return nil, err
		}
		p.pty = master
		p.outputs[PTY] = master
		return []*os.File{slave, slave, slave}, nil
	}
	var parent []*os.File
	defer func() {
		if err != nil {
			for _, f := range append(child, parent...) {
				_ = f.Close()
			}
			child = nil
		}
	}()
	var in *os.File
	if o.Stdin == nil || *o.Stdin {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("stdin pipe: %w", err)
		}
		in, p.stdin = r, w
		parent = append(parent, w)
	} else {
		in, err = os.Open(os.DevNull)
		if err != nil {
			return nil, err
		}
	}
	child = append(child, in)
	for _, s := range []Stream{Stdout, Stderr} {
		r, w, err := os.Pipe()
		if err != nil {
			return child, fmt.Errorf("%s pipe: %w", s, err)
		}
		p.outputs[s] = r
		parent = append(parent, r)
		child = append(child, w)
	}
	return child, nil
}

func (p *Process) closeParentIO() {
	for _, f := range p.outputs {
		if f != nil {
			_ = f.Close()
		}
	}
	if p.stdin != nil {
		_ = p.stdin.Close()
	}
}

// fds returns the descriptors for ForkExec. Fd puts each into blocking
// mode, which is what the child expects of its stdio.
func fds(files []*os.File) []uintptr {
	out := make([]uintptr, len(files))
	for i, f := range files {
		out[i] = f.Fd()
	}
	return out
}

func hasNUL(ss []string) bool {
	for _, s := range ss {
		if strings.IndexByte(s, 0) >= 0 {
			return true
		}
	}
	return false
}

// credential is what the child runs as. Running as root, envd switches to
// the user with its supplementary groups (so none of root's leak). Running
// unprivileged it can only start processes as itself (spec lifecycle.md
// §2.4).
func (m *Manager) credential(u *identity.User) (*syscall.Credential, error) {
	if m.euid != 0 {
		if u.UID == uint32(m.euid) {
			return nil, nil
		}
		return nil, newError(KindPermissionDenied, nil,
			"cannot start a process as user '%s': envd runs unprivileged (uid %d) and can only start processes as itself", u.Name, m.euid)
	}
	db, err := m.users()
	if err != nil {
		return nil, fmt.Errorf("supplementary groups of %s: %w", u.Name, err)
	}
	return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: db.Groups(u)}, nil
}

// spawn forks through the reaper (the command itself, or the wrapper as the
// fallback), into a cgroup when placement allows, and falls back to no
// placement for good when the kernel refuses it. It never forks into a
// frozen group: it waits for the thaw (until wait ends) and tries again.
func (m *Manager) spawn(wait context.Context, l *launch, attr *syscall.ProcAttr, isPTY bool, tag string) (int, <-chan unix.WaitStatus, error) {
	fd := -1
	if m.placement != nil && !m.placementOff.Load() {
		fd = m.placement.CgroupFD(isPTY, tag)
	}
	if fd >= 0 {
		attr.Sys.UseCgroupFD, attr.Sys.CgroupFD = true, fd
	}
	groups, _ := m.placement.(frozenGroups)
	start := func() (int, error) {
		// Under the spawn lock, which /freeze holds while it writes the
		// groups: the group cannot be frozen between this check and the
		// fork by envd, only (rarely) by the guest.
		if attr.Sys.UseCgroupFD && groups != nil && groups.GroupFrozen(isPTY) {
			return 0, errGroupFrozen
		}
		return m.fx.start(l, attr)
	}
	pid, status, err := m.spawner.Spawn(start)
	for errors.Is(err, errGroupFrozen) {
		if wait == nil {
			return 0, nil, err
		}
		if werr := groups.WaitThawed(wait, isPTY); werr != nil {
			return 0, nil, werr
		}
		pid, status, err = m.spawner.Spawn(start)
	}
	if err == nil || fd < 0 || !placementError(err) {
		return pid, status, err
	}
	if m.placementOff.CompareAndSwap(false, true) {
		// The placement logs the fallback (once, at warn).
		m.safely("placement fallback", func() { m.placement.PlacementFailed(err) })
	}
	attr.Sys.UseCgroupFD, attr.Sys.CgroupFD = false, 0
	return m.spawner.Spawn(start)
}

// finish moves an ended process from the table to retention, atomically
// with respect to Connect, and hands its end to every subscriber.
func (m *Manager) finish(p *Process, end End) {
	if p.deadline != nil {
		p.deadline.Stop()
	}
	now := m.now()
	m.mu.Lock()
	p.mu.Lock()
	p.ended = true
	for s := range p.subs {
		s.finish(end)
	}
	p.subs = nil
	rec := &record{pid: uint32(p.pid), tag: p.tag, end: end, endedAt: now, unclaimed: p.unclaimed, ring: p.ring, pty: p.pty != nil}
	p.unclaimed = unclaimed{b: &m.unclaimedB}
	counts := p.ring.next
	p.mu.Unlock()
	if i := slices.Index(m.live, p); i >= 0 {
		m.live = slices.Delete(m.live, i, i+1)
	}
	m.ret.expire(now)
	rec.ring.retain(&m.retainedB, func(need int) bool { return m.ret.trimRings(&m.retainedB, need) })
	m.ret.add(rec, now)
	m.mu.Unlock()

	p.release()
	close(p.done)
	attrs := []any{"pid", p.pid, "exit_code", end.ExitCode, "status", end.Status}
	if p.pty != nil {
		attrs = append(attrs, "pty_bytes", counts[PTY])
	} else {
		attrs = append(attrs, "stdout_bytes", counts[Stdout], "stderr_bytes", counts[Stderr])
	}
	m.log.Info("process ended", attrs...)
}

// Lookup finds a live process (SendInput, SendSignal, Update, CloseStdin,
// StreamInput): by pid, or the most recently started one with the tag.
func (m *Manager) Lookup(sel Selector) (*Process, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.findLive(sel); p != nil {
		return p, nil
	}
	return nil, notFound(sel)
}

func (m *Manager) findLive(sel Selector) *Process {
	for i := len(m.live) - 1; i >= 0; i-- {
		if p := m.live[i]; sel.matches(uint32(p.pid), p.tag) {
			return p
		}
	}
	return nil
}

// Attachment is a Connect's view of a process.
type Attachment struct {
	PID uint32
	PTY bool
	Sub *Subscription
	// Start is, per stream, the offset of the first byte the subscription
	// delivers after its backlog when there was no replay request, or of
	// the first replayed byte with one.
	Start Offsets
	// Gap is, per stream, how many bytes a replay could not deliver
	// because they were no longer retained.
	Gap Offsets
}

// Connect attaches to a live process or, failing that, to the retained
// exit of one that ended (spec rpc.md §4.8). Without replay the
// subscription first delivers the unclaimed output; with replay, the
// retained output after those offsets. The caller must Close Sub.
func (m *Manager) Connect(sel Selector, replay *Offsets) (*Attachment, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.findLive(sel); p != nil {
		sub, start, gap, err := p.subscribe(replay)
		if err != nil {
			return nil, err
		}
		return &Attachment{PID: uint32(p.pid), PTY: p.pty != nil, Sub: sub, Start: start, Gap: gap}, nil
	}
	r := m.ret.find(sel, m.now())
	if r == nil {
		return nil, notFound(sel)
	}
	a := &Attachment{PID: r.pid, PTY: r.pty}
	var backlog []entry
	if replay != nil {
		if err := checkReplay(*replay, r.ring.next); err != nil {
			return nil, err
		}
		backlog, a.Start, a.Gap = r.ring.since(*replay)
		unrefAll(r.unclaimed.take())
	} else {
		backlog, a.Start = r.unclaimed.take(), r.ring.next
	}
	a.Sub = newSubscription(nil, backlog, false, a.Start)
	end := r.end
	a.Sub.end = &end
	return a, nil
}

// List describes every live process in start order.
func (m *Manager) List() []Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Info, 0, len(m.live))
	for _, p := range m.live {
		out = append(out, p.info())
	}
	return out
}

// Shutdown waits (spec lifecycle.md §3.5 steps 3–4).
const (
	termWait = 5 * time.Second
	killWait = 1 * time.Second
)

// TerminateAll ends every managed process at shutdown: SIGTERM to each
// process group, up to 5 s for their ends (delivered to attached streams as
// usual), then SIGKILL to the groups still there and up to 1 s more. ctx
// cuts the waits short. No process is started afterwards.
func (m *Manager) TerminateAll(ctx context.Context) {
	m.endLife()
	m.mu.Lock()
	m.closing = true
	procs := slices.Clone(m.live)
	m.mu.Unlock()
	for _, p := range procs {
		_ = p.Signal(syscall.SIGTERM)
	}
	if waitAll(ctx, procs, termWait) {
		return
	}
	for _, p := range procs {
		select {
		case <-p.done:
		default:
			_ = p.Signal(syscall.SIGKILL)
		}
	}
	waitAll(ctx, procs, killWait)
}

func waitAll(ctx context.Context, procs []*Process, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for _, p := range procs {
		select {
		case <-p.done:
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// InitCmdTag is the tag of the --cmd process.
const InitCmdTag = "init-cmd"

// StartInitCmd starts the --cmd text once at startup (spec lifecycle.md
// §8): through /bin/bash -l -c (or /bin/sh -c without bash) as the default
// user, in the default workdir or the user's home, stdin /dev/null, no
// terminal, no deadline, tag init-cmd. Its output waits in the unclaimed
// buffer for a Connect. A failure is logged and returned, never fatal.
func (m *Manager) StartInitCmd(text string) error {
	if text == "" {
		return nil
	}
	err := m.startInitCmd(text)
	if err != nil {
		m.log.Error("cannot start --cmd process", "cmd", text, "error", err.Error())
	}
	return err
}

func (m *Manager) startInitCmd(text string) error {
	cmd, args := "/bin/sh", []string{"-c", text}
	if st, err := os.Stat("/bin/bash"); err == nil && !st.IsDir() {
		cmd, args = "/bin/bash", []string{"-l", "-c", text}
	}
	name := m.env.DefaultUser()
	db, err := m.users()
	if err != nil {
		return err
	}
	u, err := db.Lookup(name)
	if err != nil {
		return fmt.Errorf("default user '%s': %w", name, err)
	}
	tag, stdin := InitCmdTag, false
	o := StartOptions{Config: Config{Cmd: cmd, Args: args}, User: u, Tag: &tag, Stdin: &stdin, detached: true}
	_, _, err = m.Start(o)
	if !errors.Is(err, errGroupFrozen) {
		return err
	}
	// Frozen at startup (control-plane.md §2.1): startup must not wait for
	// the thaw, the process starts after it.
	m.log.Warn("the --cmd process's cgroup is frozen; it starts after the thaw", "cmd", text)
	o.Wait = m.life
	go m.safely("--cmd start", func() {
		if _, _, err := m.Start(o); err != nil {
			m.log.Error("cannot start --cmd process", "cmd", text, "error", err.Error())
		}
	})
	return nil
}

// safely runs f, logging a panic instead of letting it end envd.
func (m *Manager) safely(what string, f func()) {
	defer func() {
		if r := recover(); r != nil {
			m.log.Error("panic in "+what, "panic", fmt.Sprint(r))
		}
	}()
	f()
}
