package hostinfo

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/envd/envd/internal/handover/handoverpb"
)

func writeProc(t *testing.T, dir, stat, meminfo string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "meminfo"), []byte(meminfo), 0o644); err != nil {
		t.Fatal(err)
	}
}

const meminfo = `MemTotal:        2048000 kB
MemFree:          100000 kB
MemAvailable:    1000000 kB
Buffers:           10000 kB
Cached:           200000 kB
SReclaimable:      50000 kB
`

func TestSample_Computation(t *testing.T) {
	dir := t.TempDir()
	// user nice system idle iowait irq softirq steal guest guest_nice
	writeProc(t, dir, "cpu  100 0 100 700 100 0 0 0 50 0\ncpu0 50 0 50 350 50 0 0 0 0 0\ncpu1 50 0 50 350 50 0 0 0 0 0\nintr 1\n", meminfo)
	s := NewSampler(dir, "/")
	writeProc(t, dir, "cpu  150 0 150 750 150 0 0 0 70 0\ncpu0 1 0 1 1 1 0 0 0 0 0\ncpu1 1 0 1 1 1 0 0 0 0 0\n", meminfo)
	m, err := s.Sample(time.Unix(1767225600, 0))
	if err != nil {
		t.Fatal(err)
	}
	// Δbusy = 100 of Δtotal = 200 (guest columns are not added).
	if m.CPUCount != 2 || m.CPUUsedPct != 50 || m.TS != 1767225600 {
		t.Fatalf("cpu %+v", m)
	}
	if m.MemTotal != 2048000*1024 || m.MemUsed != (2048000-1000000)*1024 || m.MemCache != 250000*1024 {
		t.Fatalf("mem %+v", m)
	}
	if m.MemTotalMiB != m.MemTotal>>20 || m.MemUsedMiB != m.MemUsed>>20 {
		t.Fatalf("mib %+v", m)
	}
	if m.DiskTotal == 0 || m.DiskUsed > m.DiskTotal {
		t.Fatalf("disk %+v", m)
	}
	// No time passed: 0, not NaN.
	m, _ = s.Sample(time.Now())
	if m.CPUUsedPct != 0 {
		t.Fatalf("idle interval %v", m.CPUUsedPct)
	}
}

func TestSample_NoMemAvailable(t *testing.T) {
	dir := t.TempDir()
	writeProc(t, dir, "cpu 1 1 1 1 1 1 1 1\n", "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 100 kB\nCached: 100 kB\nSReclaimable: 100 kB\n")
	m, err := NewSampler(dir, "/").Sample(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if m.MemUsed != 600*1024 {
		t.Fatalf("fallback mem_used %d", m.MemUsed)
	}
}

func TestSample_Errors(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewSampler(dir, "/").Sample(time.Now()); err == nil {
		t.Fatal("missing /proc files must fail")
	}
	writeProc(t, dir, "cpu x y z w\n", meminfo)
	if _, err := NewSampler(dir, "/").Sample(time.Now()); err == nil {
		t.Fatal("malformed stat must fail")
	}
}

func TestSample_RealProc(t *testing.T) {
	m, err := NewSampler("/proc", "/").Sample(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if m.CPUCount < 1 || m.MemTotal == 0 || m.CPUUsedPct < 0 || m.CPUUsedPct > 100 {
		t.Fatalf("%+v", m)
	}
}

// The previous CPU reading is carried across a live upgrade: the new
// image's first Sample measures against it.
func TestHandoverPart_CarriesTheCPUSample(t *testing.T) {
	dir := t.TempDir()
	write := func(busy, idle int) {
		t.Helper()
		stat := fmt.Sprintf("cpu  %d 0 0 %d 0 0 0 0 0 0\ncpu0 %d 0 0 %d 0 0 0 0 0 0\n", busy, idle, busy, idle)
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "meminfo"), []byte("MemTotal: 1024 kB\nMemAvailable: 512 kB\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(100, 100)
	old := NewSampler(dir, "/")
	rec := &handoverpb.Record{}
	if err := (HandoverPart{S: old}).Export(rec, nil); err != nil {
		t.Fatal(err)
	}
	write(250, 150) // +150 busy, +50 idle since the old image's reading
	next := NewSampler(dir, "/")
	if _, err := (HandoverPart{S: next}).Import(rec, nil); err != nil {
		t.Fatal(err)
	}
	m, err := next.Sample(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if m.CPUUsedPct != 75 {
		t.Fatalf("cpu_used_pct %v, want 75 (measured since the carried reading)", m.CPUUsedPct)
	}
}
