// Package hugepage consolidates envd's own anonymous memory into
// transparent huge pages before a pause (spec control-plane.md §6, POST
// /collapse): where guest memory is faulted in lazily on resume, each 2 MiB
// frame envd touches costs a separate fault, and a heap spread over many
// frames makes the /init after the resume slow. Best-effort; it knows
// nothing of HTTP.
package hugepage

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// DefaultSize is the huge-page size assumed when the kernel does not say.
const DefaultSize = 2 << 20

// maxMapsBytes bounds the read of /proc/self/maps (envd has a few dozen
// mappings; a megabyte is thousands).
const maxMapsBytes = 4 << 20

// Result is the CollapseResult of §6.2; its JSON form has these six
// members in this order.
type Result struct {
	AlreadyHuge int   `json:"alreadyHuge"`
	Chunks      int   `json:"chunks"`
	Collapsed   int   `json:"collapsed"`
	ElapsedMs   int64 `json:"elapsedMs"`
	Regions     int   `json:"regions"`
	Skipped     int   `json:"skipped"`
}

// Files are where the pass reads from; the zero value means the kernel's.
type Files struct {
	Maps, SmapsRollup, PMDSize string
}

func (f Files) withDefaults() Files {
	if f.Maps == "" {
		f.Maps = "/proc/self/maps"
	}
	if f.SmapsRollup == "" {
		f.SmapsRollup = "/proc/self/smaps_rollup"
	}
	if f.PMDSize == "" {
		f.PMDSize = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"
	}
	return f
}

// region is one mapping: [start, end).
type region struct{ start, end uintptr }

// advisor issues the two madvise calls; tests replace it.
type advisor interface {
	hugepage(r region)                   // MADV_HUGEPAGE, errors ignored
	collapse(start, length uintptr) bool // MADV_COLLAPSE: success
}

// Collapse runs one pass (§6.1). barrier is called first: it acquires and
// releases the snapshot lock so that a collapse never overlaps the memory
// release of a snapshot prepare. The pass stops when ctx ends (the client
// went away) and returns ctx's error.
func Collapse(ctx context.Context, barrier func(context.Context) error, files Files) (Result, error) {
	return collapse(ctx, barrier, files.withDefaults(), kernelAdvisor{})
}

func collapse(ctx context.Context, barrier func(context.Context) error, files Files, adv advisor) (Result, error) {
	start := time.Now()
	var res Result
	if barrier != nil {
		if err := barrier(ctx); err != nil {
			return res, err
		}
	}
	size := pmdSize(files.PMDSize)
	before, haveBefore := anonHugeKiB(files.SmapsRollup)
	regions, err := readRegions(files.Maps)
	if err != nil {
		return res, fmt.Errorf("read self maps: %w", err)
	}
	successes := 0
	for _, r := range regions {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		res.Regions++
		adv.hugepage(r)
		for w := alignUp(r.start, size); w+size <= r.end && w+size > w; w += size {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			res.Chunks++
			if adv.collapse(w, size) {
				successes++
			} else {
				res.Skipped++
			}
		}
	}
	after, haveAfter := anonHugeKiB(files.SmapsRollup)
	res.Collapsed = successes
	if haveBefore && haveAfter && after >= before {
		// MADV_COLLAPSE also succeeds on windows that already were huge
		// pages, which is no work: only the growth is new.
		grown := int((after - before) * 1024 / uint64(size))
		res.Collapsed = min(grown, successes)
		res.AlreadyHuge = successes - res.Collapsed
	}
	res.ElapsedMs = time.Since(start).Milliseconds()
	return res, nil
}

func alignUp(p, size uintptr) uintptr { return (p + size - 1) &^ (size - 1) }

// pmdSize is the kernel's huge-page size (arm64 kernels with 16 or 64 KiB
// pages have other sizes than 2 MiB); DefaultSize if unreadable or not a
// power of two.
func pmdSize(path string) uintptr {
	b, err := os.ReadFile(path)
	if err != nil {
		return DefaultSize
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n == 0 || n&(n-1) != 0 {
		return DefaultSize
	}
	return uintptr(n)
}

// anonHugeKiB reads AnonHugePages (kB) from smaps_rollup.
func anonHugeKiB(path string) (uint64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("AnonHugePages:")); ok {
			f := bytes.Fields(rest)
			if len(f) == 0 {
				return 0, false
			}
			n, err := strconv.ParseUint(string(f[0]), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// readRegions returns the readable and writable mappings without a path
// name, in file order: in a static Go binary, the runtime's heap arenas and
// the memory it maps for itself.
func readRegions(path string) ([]region, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxMapsBytes))
	if err != nil {
		return nil, err
	}
	return parseMaps(data), nil
}

// parseMaps parses /proc/<pid>/maps lines:
// "start-end perms offset dev inode [path]".
func parseMaps(data []byte) []region {
	var out []region
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 5 { // a sixth field is the path name ([heap], a file, …)
			continue
		}
		perms := f[1]
		if len(perms) < 2 || perms[0] != 'r' || perms[1] != 'w' {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		s, err1 := strconv.ParseUint(lo, 16, 64)
		e, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || e <= s {
			continue
		}
		out = append(out, region{start: uintptr(s), end: uintptr(e)})
	}
	return out
}
