package cgroups

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// groupWatcher is one inotify instance watching the groups' cgroup.events
// (the kernel signals IN_MODIFY when a settled state changes) and
// cgroup.freeze (a write by anyone), calling changed on every event.
type groupWatcher struct {
	f    *os.File
	done chan struct{}
	once sync.Once
}

func startGroupWatcher(paths []string, changed func(), log *slog.Logger) (*groupWatcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	for _, p := range paths {
		if _, err := unix.InotifyAddWatch(fd, p, unix.IN_MODIFY); err != nil {
			_ = unix.Close(fd)
			return nil, &os.PathError{Op: "inotify_add_watch", Path: p, Err: err}
		}
	}
	w := &groupWatcher{f: os.NewFile(uintptr(fd), "inotify"), done: make(chan struct{})}
	go w.run(changed, log)
	return w, nil
}

// run reads events until stop closes the descriptor. The events' content
// does not matter: every waiter re-reads its group.
func (w *groupWatcher) run(changed func(), log *slog.Logger) {
	defer close(w.done)
	defer func() {
		if p := recover(); p != nil {
			log.Error("panic in the cgroup freeze watcher", "panic", fmt.Sprint(p))
		}
	}()
	buf := make([]byte, 4096)
	for {
		if _, err := w.f.Read(buf); err != nil {
			changed() // wake waiters: they re-check and fall back to envd's thaw
			return
		}
		changed()
	}
}

func (w *groupWatcher) stop() {
	w.once.Do(func() { _ = w.f.Close() })
	<-w.done
}

// readFlag reads a cgroup interface file holding 0 or 1.
func readFlag(path string) (bool, error) {
	b, err := readSmall(path)
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// readFrozenKey reads the frozen key of a cgroup.events file (absent: 0).
func readFrozenKey(path string) (bool, error) {
	b, err := readSmall(path)
	if err != nil {
		return false, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "frozen "); ok {
			return strings.TrimSpace(v) == "1", nil
		}
	}
	return false, nil
}

func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 4096))
}
