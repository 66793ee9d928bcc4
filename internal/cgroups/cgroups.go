// Package cgroups owns envd's cgroup v2 groups (spec lifecycle.md §6): it
// creates and configures "user" (processes without a PTY) and "ptys"
// (PTY processes) directly under the cgroup root, keeps a directory
// descriptor of each for placing new processes at creation
// (clone3 + CLONE_INTO_CGROUP), and falls back to a no-op manager that
// places nothing when the root is not a cgroup2 hierarchy, when creating the
// groups fails, or with --no-cgroups. envd itself is never moved: it stays
// in the cgroup it was started in, competing with the workload groups from
// above them.
package cgroups

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// SystemTag marks a process that must stay in envd's own cgroup.
const SystemTag = "_system"

// Group names under the cgroup root.
const (
	UserGroup = "user"
	PTYGroup  = "ptys"
)

// reserveMax caps what is kept back from the workload for envd and the
// kernel: M = MemTotal − min(MemTotal/8, 128 MiB).
const reserveMax = 128 << 20

// groupSpec is the configuration of one group (spec lifecycle.md §6.1
// table). Weights favour interactive PTY sessions over background work;
// both groups share one memory limit that leaves room for envd.
type groupSpec struct {
	name      string
	forPTY    bool
	cpuWeight string
	ioWeight  string
}

func specs() []groupSpec {
	return []groupSpec{
		{name: UserGroup, forPTY: false, cpuWeight: "50", ioWeight: "default 10"},
		{name: PTYGroup, forPTY: true, cpuWeight: "200", ioWeight: "default 50"},
	}
}

// Options configure New.
type Options struct {
	// Root is the cgroup v2 hierarchy to manage (--cgroup-root).
	Root string
	// Disabled selects the no-op manager (--no-cgroups).
	Disabled bool
	// MemInfo is the meminfo file the memory limit is computed from
	// (default /proc/meminfo).
	MemInfo string
}

// Manager hands out cgroup descriptors for new processes. The zero value and
// a nil *Manager are no-op managers. It is safe for concurrent use.
type Manager struct {
	log  *slog.Logger
	root string
	// fds are open O_RDONLY|O_DIRECTORY descriptors of the groups, fixed
	// after New; -1 when the group does not exist (no-op manager).
	userFD, ptyFD int
	limit         uint64

	disabled   atomic.Bool // placement turned off after a failed spawn
	failedOnce sync.Once
	closeOnce  sync.Once

	frozen frozenWatch // wakes spawns waiting for a frozen group
}

// New creates the groups under opts.Root and returns a manager for them, or
// a no-op manager (logged in one line) when cgroups cannot or must not be
// used. It never fails: cgroups are an optimisation, not a requirement.
func New(opts Options, log *slog.Logger) *Manager {
	noop := &Manager{log: log, root: opts.Root, userFD: -1, ptyFD: -1}
	if opts.Disabled {
		log.Info("cgroups disabled by --no-cgroups: processes stay in envd's cgroup")
		return noop
	}
	ok, err := isCgroup2(opts.Root)
	if err != nil || !ok {
		detail := "not a cgroup2 filesystem"
		if err != nil {
			detail = err.Error()
		}
		log.Info("cgroups disabled: no cgroup2 hierarchy at the cgroup root; processes stay in envd's cgroup", "path", opts.Root, "reason", detail)
		return noop
	}
	memInfo := opts.MemInfo
	if memInfo == "" {
		memInfo = "/proc/meminfo"
	}
	m, err := create(opts.Root, memInfo, log)
	if err != nil {
		log.Warn("failed to create cgroup2 manager: "+err.Error(), "path", opts.Root)
		return noop
	}
	log.Info("cgroups ready", "path", opts.Root, "memory_limit", m.limit)
	return m
}

func create(root, memInfo string, log *slog.Logger) (*Manager, error) {
	total, err := memTotal(memInfo)
	if err != nil {
		return nil, err
	}
	m := &Manager{log: log, root: root, userFD: -1, ptyFD: -1, limit: Limit(total)}
	for _, g := range specs() {
		fd, err := m.createGroup(g)
		if err != nil {
			m.Close()
			return nil, err
		}
		if g.forPTY {
			m.ptyFD = fd
		} else {
			m.userFD = fd
		}
	}
	return m, nil
}

func (m *Manager) createGroup(g groupSpec) (int, error) {
	dir := filepath.Join(m.root, g.name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return -1, fmt.Errorf("create group %s: %w", g.name, err)
	}
	limit := strconv.FormatUint(m.limit, 10)
	for _, p := range [...]struct{ file, value string }{
		{"cpu.weight", g.cpuWeight},
		{"io.weight", g.ioWeight},
		{"memory.high", limit},
		{"memory.max", limit},
	} {
		path := filepath.Join(dir, p.file)
		err := writeProperty(path, p.value)
		switch {
		case err == nil:
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM), errors.Is(err, unix.EROFS):
			// The controller is not enabled for this hierarchy (common
			// on hybrid hosts): the group still works for placement.
			m.log.Warn("cgroup property skipped", "path", path, "error", err.Error())
		default:
			return -1, fmt.Errorf("write %s: %w", path, err)
		}
	}
	fd, err := openDir(dir)
	if err != nil {
		return -1, fmt.Errorf("open group %s: %w", g.name, err)
	}
	return fd, nil
}

// Limit is the memory limit M for a machine with total bytes of memory.
func Limit(total uint64) uint64 {
	return total - min(total/8, reserveMax)
}

// memTotal reads MemTotal (in bytes) from a meminfo file.
func memTotal(path string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("MemTotal:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) == 0 {
			break
		}
		kib, err := strconv.ParseUint(string(f[0]), 10, 64)
		if err != nil {
			break
		}
		return kib << 10, nil
	}
	return 0, fmt.Errorf("read %s: no MemTotal", path)
}

// Enabled reports whether processes are being placed in groups.
func (m *Manager) Enabled() bool {
	return m != nil && m.userFD >= 0 && !m.disabled.Load()
}

// Cgroup2 reports whether this is the cgroup2 manager (the groups exist),
// as opposed to the no-op manager. Placement being disabled later does not
// change it: the groups can still be frozen.
func (m *Manager) Cgroup2() bool { return m != nil && m.userFD >= 0 }

// Root is the cgroup root the manager was created for.
func (m *Manager) Root() string {
	if m == nil {
		return ""
	}
	return m.root
}

// PlacementDisabled reports whether placement was turned off by the spawn
// fallback (a live upgrade carries it, control-plane.md §8.7).
func (m *Manager) PlacementDisabled() bool { return m != nil && m.disabled.Load() }

// DisablePlacement turns placement off without logging, as carried by a
// live upgrade.
func (m *Manager) DisablePlacement() {
	if m != nil {
		m.disabled.Store(true)
	}
}

// MemoryLimit is M in bytes (0 for the no-op manager).
func (m *Manager) MemoryLimit() uint64 {
	if m == nil {
		return 0
	}
	return m.limit
}

// CgroupFD returns an open cgroup directory fd for a new process, or -1 to
// leave it in envd's cgroup (tag "_system", no-op manager, placement
// disabled). The descriptor stays owned by the manager: do not close it.
func (m *Manager) CgroupFD(pty bool, tag string) int {
	if !m.Enabled() || tag == SystemTag {
		return -1
	}
	if pty {
		return m.ptyFD
	}
	return m.userFD
}

// PlacementFailed is called when a spawn with the fd failed with ENOSYS,
// EINVAL, EOPNOTSUPP or EBADF (see IsPlacementError); placement then stays
// disabled for envd's life (logged once at warn).
func (m *Manager) PlacementFailed(err error) {
	if m == nil {
		return
	}
	m.disabled.Store(true)
	m.failedOnce.Do(func() {
		detail := "unknown error"
		if err != nil {
			detail = err.Error()
		}
		m.log.Warn("placing processes in cgroups failed; placement disabled", "error", detail)
	})
}

// IsPlacementError reports whether a spawn error means the kernel cannot
// place processes with CLONE_INTO_CGROUP (too old, cgroup v1, stale fd),
// so the spawn should be retried without placement.
func IsPlacementError(err error) bool {
	return errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EBADF)
}

// Close releases the group descriptors; later CgroupFD calls return -1.
// envd keeps the manager for its whole life; tests close it.
func (m *Manager) Close() {
	if m == nil {
		return
	}
	m.closeOnce.Do(func() {
		m.frozen.close()
		m.disabled.Store(true)
		for _, fd := range []int{m.userFD, m.ptyFD} {
			if fd >= 0 {
				_ = unix.Close(fd)
			}
		}
	})
}
