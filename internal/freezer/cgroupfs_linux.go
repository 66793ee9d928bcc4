package freezer

import (
	"bufio"
	"bytes"
	"container/heap"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// kernelTree is the cgroup v2 hierarchy under root, read and written through
// cgroupfs.
type kernelTree struct{ root string }

func (k kernelTree) abs(rel string) string {
	if rel == "" {
		return k.root
	}
	return filepath.Join(k.root, rel)
}

func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// listBatch is how many directory entries are read per getdents round.
const listBatch = 256

func (k kernelTree) children(rel string, limit int) ([]string, bool, error) {
	f, err := os.Open(k.abs(rel))
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	// A guest can create any number of cgroups in one directory; only the
	// smallest limit names are kept (a max-heap of them).
	h := &maxHeap{}
	more := false
	for {
		entries, err := f.ReadDir(listBatch)
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			switch {
			case h.Len() < limit:
				heap.Push(h, e.Name())
			case limit > 0 && e.Name() < (*h)[0]:
				(*h)[0] = e.Name()
				heap.Fix(h, 0)
				more = true
			default:
				more = true
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, false, err
		}
	}
	names := make([]string, h.Len())
	for i := len(names) - 1; i >= 0; i-- {
		names[i] = heap.Pop(h).(string)
	}
	return names, more, nil
}

func (k kernelTree) ownRequest(rel string) (bool, error) {
	b, err := readSmall(filepath.Join(k.abs(rel), "cgroup.freeze"))
	if err != nil {
		return false, err
	}
	switch strings.TrimSpace(string(b)) {
	case "0":
		return false, nil
	case "1":
		return true, nil
	}
	return false, fmt.Errorf("read %s: unexpected content %q", filepath.Join(k.abs(rel), "cgroup.freeze"), b)
}

func (k kernelTree) request(rel string, freeze bool) error {
	v := "0"
	if freeze {
		v = "1"
	}
	return WriteFreeze(k.abs(rel), v)
}

func (k kernelTree) settled(rel string) (bool, error) {
	return ReadSettled(k.abs(rel))
}

// WriteFreeze writes v to dir's cgroup.freeze, opened for writing without
// creating it (a missing file means the cgroup is gone or is the root).
func WriteFreeze(dir, v string) error {
	p := filepath.Join(dir, "cgroup.freeze")
	for {
		fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "open", Path: p, Err: err}
		}
		_, err = unix.Write(fd, []byte(v))
		for err == unix.EINTR {
			_, err = unix.Write(fd, []byte(v))
		}
		_ = unix.Close(fd)
		if err != nil {
			return &os.PathError{Op: "write", Path: p, Err: err}
		}
		return nil
	}
}

// ReadSettled reads the frozen key of dir's cgroup.events: whether every
// task in and below the cgroup has stopped. A file without the key reads as
// not frozen.
func ReadSettled(dir string) (bool, error) {
	b, err := readSmall(filepath.Join(dir, "cgroup.events"))
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

// ReadOwnRequest reads dir's cgroup.freeze.
func ReadOwnRequest(dir string) (bool, error) {
	return kernelTree{root: dir}.ownRequest("")
}

// readSmall reads a cgroupfs interface file (a few bytes; 4 KiB at most).
func readSmall(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, &os.PathError{Op: "read", Path: p, Err: err}
	}
	return b, nil
}

// maxHeap of names: the largest on top, so the smallest limit names can be
// kept while a directory is read.
type maxHeap []string

func (h maxHeap) Len() int           { return len(h) }
func (h maxHeap) Less(i, j int) bool { return h[i] > h[j] }
func (h maxHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *maxHeap) Push(x any)        { *h = append(*h, x.(string)) }
func (h *maxHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// selfChain is envd's chain relative to root (control-plane.md: envd's
// chain): "" followed by every cgroup from root down to the one envd is in.
// envd's cgroup is the 0:: line of /proc/self/cgroup, a path relative to the
// root of its cgroup2 mount; it is located in the file system through
// /proc/self/mountinfo, so that a --cgroup-root below the mount's root is
// handled too. When envd is not below root, its chain is root alone.
func selfChain(root string) ([]string, error) {
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("read /proc/self/cgroup: %w", err)
	}
	var self string
	found := false
	for _, line := range strings.Split(string(cg), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			self, found = rest, true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("read /proc/self/cgroup: no cgroup v2 line")
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read /proc/self/mountinfo: %w", err)
	}
	abs, ok := locate(string(mi), filepath.Clean(root), self)
	if !ok {
		// No mount found: the specification's reading, the path joined to
		// the root.
		abs = filepath.Join(root, self)
	}
	rel, err := filepath.Rel(filepath.Clean(root), abs)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return []string{""}, nil
	}
	if rel == "." {
		rel = ""
	}
	return chainOf(rel), nil
}

// locate turns a cgroup path (relative to its cgroup2 mount's root) into a
// path in the file system, using the cgroup2 mount that contains root.
func locate(mountinfo, root, self string) (string, bool) {
	best, bestAbs := -1, ""
	for _, line := range strings.Split(mountinfo, "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 1 || qf[0] != "cgroup2" {
			continue
		}
		mroot, mpoint := unescapeMount(pf[3]), unescapeMount(pf[4])
		if !within(root, mpoint) || len(mpoint) <= best {
			continue
		}
		if !within(self, mroot) {
			continue
		}
		rest := strings.TrimPrefix(self, mroot)
		best, bestAbs = len(mpoint), filepath.Join(mpoint, rest)
	}
	return bestAbs, best >= 0
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	return dir == "/" || p == dir || strings.HasPrefix(p, dir+"/")
}

// unescapeMount decodes mountinfo's \NNN octal escapes.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, ok := octal(s[i+1 : i+4]); ok {
				b.WriteByte(n)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func octal(s string) (byte, bool) {
	if len(s) != 3 {
		return 0, false
	}
	n := 0
	for i := 0; i < 3; i++ {
		if s[i] < '0' || s[i] > '7' {
			return 0, false
		}
		n = n*8 + int(s[i]-'0')
	}
	if n > 255 {
		return 0, false
	}
	return byte(n), true
}
