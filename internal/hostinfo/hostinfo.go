// Package hostinfo computes the guest metrics served by GET /metrics (spec
// http.md §6) on demand, from /proc and statfs. There is no background
// sampler: CPU usage is measured between consecutive calls.
package hostinfo

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Metrics is the /metrics document.
type Metrics struct {
	TS          int64   `json:"ts"`
	CPUCount    int     `json:"cpu_count"`
	CPUUsedPct  float64 `json:"cpu_used_pct"`
	MemTotal    uint64  `json:"mem_total"`
	MemUsed     uint64  `json:"mem_used"`
	MemCache    uint64  `json:"mem_cache"`
	MemTotalMiB uint64  `json:"mem_total_mib"`
	MemUsedMiB  uint64  `json:"mem_used_mib"`
	DiskUsed    uint64  `json:"disk_used"`
	DiskTotal   uint64  `json:"disk_total"`
}

// Sampler remembers the previous CPU counters between calls.
type Sampler struct {
	proc string // /proc
	disk string // filesystem measured for disk_*

	mu       sync.Mutex
	lastBusy uint64
	lastAll  uint64
}

// NewSampler takes the first CPU reading, so the first Sample measures
// usage since envd started.
func NewSampler(procDir, diskPath string) *Sampler {
	s := &Sampler{proc: procDir, disk: diskPath}
	if st, err := readCPU(filepath.Join(procDir, "stat")); err == nil {
		s.lastBusy, s.lastAll = st.busy, st.total
	}
	return s
}

// Sample computes the metrics now.
func (s *Sampler) Sample(now time.Time) (*Metrics, error) {
	cpu, err := readCPU(filepath.Join(s.proc, "stat"))
	if err != nil {
		return nil, err
	}
	mem, err := ReadMeminfo(filepath.Join(s.proc, "meminfo"))
	if err != nil {
		return nil, err
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(s.disk, &fs); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", s.disk, err)
	}
	m := &Metrics{TS: now.Unix(), CPUCount: cpu.count}

	s.mu.Lock()
	dBusy, dAll := cpu.busy-s.lastBusy, cpu.total-s.lastAll
	if cpu.busy < s.lastBusy || cpu.total < s.lastAll {
		dBusy, dAll = 0, 0 // counters went backwards (restore onto another host)
	}
	s.lastBusy, s.lastAll = cpu.busy, cpu.total
	s.mu.Unlock()
	if dAll > 0 {
		m.CPUUsedPct = math.Round(10000*float64(dBusy)/float64(dAll)) / 100
	}

	total := mem["MemTotal"]
	var used uint64
	if avail, ok := mem["MemAvailable"]; ok {
		used = sub(total, avail)
	} else {
		used = sub(total, mem["MemFree"]+mem["Buffers"]+mem["Cached"]+mem["SReclaimable"])
	}
	m.MemTotal, m.MemUsed = total, used
	m.MemCache = mem["Cached"] + mem["SReclaimable"]
	m.MemTotalMiB, m.MemUsedMiB = total>>20, used>>20
	bsize := uint64(fs.Bsize)
	m.DiskTotal = fs.Blocks * bsize
	m.DiskUsed = sub(fs.Blocks, fs.Bavail) * bsize
	return m, nil
}

func sub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}

type cpuStat struct {
	count       int
	busy, total uint64
}

func readCPU(path string) (cpuStat, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return cpuStat{}, fmt.Errorf("read %s: %w", path, err)
	}
	return parseStat(data)
}

// parseStat reads the aggregate "cpu" line and counts "cpuN" lines. total
// is user+nice+system+idle+iowait+irq+softirq+steal (guest time is already
// part of user and nice); idle time is idle+iowait.
func parseStat(data []byte) (cpuStat, error) {
	var st cpuStat
	found := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "cpu") {
			continue
		}
		f := strings.Fields(line)
		if f[0] != "cpu" {
			if _, err := strconv.Atoi(f[0][3:]); err == nil {
				st.count++
			}
			continue
		}
		if len(f) < 5 {
			return st, errors.New("malformed cpu line in /proc/stat")
		}
		var v [8]uint64
		for i := 0; i < 8 && i+1 < len(f); i++ {
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return st, fmt.Errorf("malformed cpu line in /proc/stat: %w", err)
			}
			v[i] = n
		}
		for _, n := range v {
			st.total += n
		}
		st.busy = st.total - v[3] - v[4]
		found = true
	}
	if !found {
		return st, errors.New("no cpu line in /proc/stat")
	}
	return st, nil
}

// ReadMeminfo returns /proc/meminfo in bytes, by field name.
func ReadMeminfo(path string) (map[string]uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	out := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		out[name] = n
	}
	if _, ok := out["MemTotal"]; !ok {
		return nil, fmt.Errorf("read %s: no MemTotal", path)
	}
	return out, nil
}
