package hugepage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

type fakeAdvisor struct{ ok map[uintptr]bool }

func (fakeAdvisor) hugepage(region)                  {}
func (a fakeAdvisor) collapse(start, _ uintptr) bool { return a.ok[start] }

func TestParseMaps(t *testing.T) {
	maps := `00400000-00800000 r-xp 00000000 08:01 123 /usr/local/bin/envd
c000000000-c000400000 rw-p 00000000 00:00 0 
c000400000-c000600000 rw-p 00000000 00:00 0
7f0000000000-7f0000200000 rw-p 00000000 00:00 0 [heap]
7f0000200000-7f0000300000 r--p 00000000 00:00 0
7f0000300000-7f0000400000 rw-s 00000000 00:05 9 /memfd:x (deleted)
`
	got := parseMaps([]byte(maps))
	if len(got) != 2 || got[0] != (region{0xc000000000, 0xc000400000}) || got[1] != (region{0xc000400000, 0xc000600000}) {
		t.Fatalf("%x", got)
	}
}

func TestCollapseCounts(t *testing.T) {
	dir := t.TempDir()
	files := Files{Maps: filepath.Join(dir, "maps"), SmapsRollup: filepath.Join(dir, "rollup"), PMDSize: filepath.Join(dir, "pmd")}
	// One region of three aligned windows plus unaligned edges.
	os.WriteFile(files.Maps, []byte("100100000-100700100 rw-p 00000000 00:00 0\n"), 0o644)
	os.WriteFile(files.PMDSize, []byte("2097152\n"), 0o644)
	os.WriteFile(files.SmapsRollup, []byte("Rss: 1 kB\nAnonHugePages: 2048 kB\n"), 0o644)
	adv := fakeAdvisor{ok: map[uintptr]bool{0x100200000: true, 0x100400000: true}}
	barrierRan := false
	res, err := collapse(context.Background(), func(context.Context) error { barrierRan = true; return nil }, files, adv)
	if err != nil || !barrierRan {
		t.Fatal(err)
	}
	// Windows at 0x100200000, 0x100400000 fit; 0x100600000 ends past
	// 0x100700100? 0x100600000+0x200000 = 0x100800000 > end: not tried.
	if res.Regions != 1 || res.Chunks != 2 || res.Skipped != 0 || res.Collapsed+res.AlreadyHuge+res.Skipped != res.Chunks {
		t.Fatalf("%+v", res)
	}
	// AnonHugePages did not grow (the fake changes nothing): both
	// successes were already huge.
	if res.Collapsed != 0 || res.AlreadyHuge != 2 {
		t.Fatalf("%+v", res)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := collapse(ctx, nil, files, adv); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	files.Maps = filepath.Join(dir, "absent")
	if _, err := collapse(context.Background(), nil, files, adv); err == nil || err.Error()[:15] != "read self maps:" {
		t.Fatalf("unreadable maps: %v", err)
	}
	if pmdSize(filepath.Join(dir, "absent")) != DefaultSize {
		t.Fatal("default size")
	}
}

// A real pass on this process: the counts add up.
func TestCollapseSelf(t *testing.T) {
	res, err := Collapse(context.Background(), nil, Files{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Regions == 0 || res.Chunks != res.Collapsed+res.AlreadyHuge+res.Skipped {
		t.Fatalf("%+v", res)
	}
	t.Logf("%+v", res)
}

// cancellingAdvisor cancels the pass's context at its n-th window.
type cancellingAdvisor struct {
	n      *int
	at     int
	cancel context.CancelFunc
}

func (cancellingAdvisor) hugepage(region) {}
func (a cancellingAdvisor) collapse(uintptr, uintptr) bool {
	*a.n++
	if *a.n == a.at {
		a.cancel()
	}
	return true
}

// A client that goes away mid-pass stops it at the next window.
func TestCollapseStopsMidPass(t *testing.T) {
	dir := t.TempDir()
	files := Files{Maps: filepath.Join(dir, "maps"), SmapsRollup: filepath.Join(dir, "rollup"), PMDSize: filepath.Join(dir, "pmd")}
	os.WriteFile(files.Maps, []byte("100000000-101000000 rw-p 00000000 00:00 0\n"), 0o644) // 8 windows
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	_, err := collapse(ctx, nil, files, cancellingAdvisor{n: &n, at: 3, cancel: cancel})
	if !errors.Is(err, context.Canceled) || n != 3 {
		t.Fatalf("err %v after %d windows, want context.Canceled after 3", err, n)
	}
}
