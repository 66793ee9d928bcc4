package hostinit

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/mountinfo"
)

// NFS mount options (spec http.md §8.5).
const nfsOptions = "fg,hard,sync,rsize=1048576,wsize=1048576,mountproto=tcp,mountport=2049,proto=tcp,port=2049,nfsvers=3,noacl,noac,lookupcache=none"

// Volume budgets.
const (
	volumesBudget = 10 * time.Second
	detachBudget  = 2 * time.Second
)

// Runner runs a helper program through envd's single reaper.
type Runner func(ctx context.Context, argv []string) (exitCode int, output []byte, err error)

// Volumes mounts NFS volumes for /init and remembers which lifecycle
// mounted each path, so that a repeated /init of the same lifecycle does
// not remount.
type Volumes struct {
	run       Runner
	mountinfo string

	mu     sync.Mutex
	ledger map[string]string // mount path → lifecycle ID
}

// NewVolumes uses run for the mount program and mountinfo (normally
// /proc/self/mountinfo) to find mount points.
func NewVolumes(run Runner, mountinfo string) *Volumes {
	return &Volumes{run: run, mountinfo: mountinfo, ledger: map[string]string{}}
}

// Setup mounts vols for lifecycleID within 10 s, concurrently; it is not
// cancelled by the client going away.
func (v *Volumes) Setup(vols []VolumeMount, lifecycleID string) error {
	for i, vol := range vols {
		if vol.NFSTarget == "" || vol.Path == "" {
			return fmt.Errorf("failed to setup NFS volumes: volumeMounts[%d]: nfs_target and path are required", i)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), volumesBudget)
	defer cancel()
	errs := make([]error, len(vols))
	var wg sync.WaitGroup
	for i, vol := range vols {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if p := recover(); p != nil {
					errs[i] = fmt.Errorf("panic: %v", p)
				}
			}()
			errs[i] = v.mountOne(ctx, vol, lifecycleID)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("failed to setup NFS volumes: %w", err)
	}
	return nil
}

func (v *Volumes) mountOne(ctx context.Context, vol VolumeMount, lifecycleID string) error {
	v.mu.Lock()
	id, ok := v.ledger[vol.Path]
	v.mu.Unlock()
	if ok && id == lifecycleID {
		return nil
	}
	if mountinfo.IsMountPoint(v.mountinfo, vol.Path) {
		if err := unix.Unmount(vol.Path, unix.MNT_FORCE); err != nil {
			if err := detach(ctx, vol.Path); err != nil {
				return fmt.Errorf("unmount %s: %w", vol.Path, err)
			}
		}
	}
	if err := os.MkdirAll(vol.Path, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", vol.Path, err)
	}
	code, out, err := v.run(ctx, []string{"mount", "-v", "-t", "nfs", "-o", nfsOptions, vol.NFSTarget, vol.Path})
	if err != nil {
		return fmt.Errorf("mount %s on %s: %w", vol.NFSTarget, vol.Path, err)
	}
	if code != 0 {
		return fmt.Errorf("mount %s on %s: exit status %d: %s", vol.NFSTarget, vol.Path, code, strings.TrimSpace(string(out)))
	}
	v.mu.Lock()
	v.ledger[vol.Path] = lifecycleID
	v.mu.Unlock()
	return nil
}

// Ledger returns a copy of the ledger: mount path → lifecycle ID of every
// volume envd mounted (a live upgrade carries it, so the next /init leaves
// matching live mounts alone).
func (v *Volumes) Ledger() map[string]string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return maps.Clone(v.ledger)
}

// RestoreLedger installs a ledger carried by a live upgrade.
func (v *Volumes) RestoreLedger(l map[string]string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.ledger = maps.Clone(l)
	if v.ledger == nil {
		v.ledger = map[string]string{}
	}
}

func detach(ctx context.Context, path string) error {
	ctx, cancel := context.WithTimeout(ctx, detachBudget)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- unix.Unmount(path, unix.MNT_DETACH) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
