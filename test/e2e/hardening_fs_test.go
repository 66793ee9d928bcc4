package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/internal/envdtest"
)

// hrTree creates dirs directories of files empty files each under root.
func hrTree(t testing.TB, root string, dirs, files int) {
	t.Helper()
	for i := range dirs {
		d := filepath.Join(root, fmt.Sprintf("d%04d", i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for j := range files {
			f, err := os.Create(filepath.Join(d, fmt.Sprintf("file-%05d.txt", j)))
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	}
}

// A template-sized tree of 100 000 files lists in one call with either
// codec; a tree beyond the entry limit is refused with resource_exhausted
// and a message that says what to do; several big listings at once share
// one budget, so envd's memory stays bounded and it keeps serving.
func TestHardening_ListDirEntryLimitAndBudget(t *testing.T) {
	root := t.TempDir()
	hrTree(t, root, 100, 1000)
	e := envdtest.Start(t, envdtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	for _, c := range []struct {
		name string
		opts []connect.ClientOption
	}{{"proto", nil}, {"json", []connect.ClientOption{connect.WithProtoJSON()}}} {
		t.Run("100k-"+c.name, func(t *testing.T) {
			rss := sampleRSS(t, e.Pid())
			resp, err := e.Filesystem(c.opts...).ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: root, Depth: 2}))
			peak, _ := rss.finish()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d entries, peak RSS %d MiB", len(resp.Msg.GetEntries()), peak>>20)
			if n := len(resp.Msg.GetEntries()); n != 100_100 {
				t.Fatalf("%d entries", n)
			}
			if got := resp.Msg.GetEntries()[1].GetPath(); got != filepath.Join(root, "d0000", "file-00000.txt") {
				t.Fatalf("second entry %q", got)
			}
			if peak > 250<<20 {
				t.Fatalf("peak RSS %d MiB listing 100k entries, ceiling 250 MiB", peak>>20)
			}
		})
	}

	t.Run("concurrent", func(t *testing.T) {
		const parallel = 6
		rss := sampleRSS(t, e.Pid())
		var wg sync.WaitGroup
		errs := make([]error, parallel)
		for i := range parallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := e.Filesystem().ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: root, Depth: 2}))
				if err == nil && len(resp.Msg.GetEntries()) != 100_100 {
					err = fmt.Errorf("%d entries", len(resp.Msg.GetEntries()))
				}
				errs[i] = err
			}()
		}
		wg.Wait()
		peak, _ := rss.finish()
		ok := 0
		for i, err := range errs {
			switch {
			case err == nil:
				ok++
			case connect.CodeOf(err) == connect.CodeResourceExhausted && strings.Contains(err.Error(), "too many entries are being listed at once"):
			default:
				t.Fatalf("listing %d: %v", i, err)
			}
		}
		t.Logf("%d of %d listings succeeded, peak RSS %d MiB", ok, parallel, peak>>20)
		if ok == 0 {
			t.Fatal("the budget starved every listing")
		}
		if peak > 260<<20 {
			t.Fatalf("peak RSS %d MiB with %d listings at once, ceiling 260 MiB", peak>>20, parallel)
		}
	})

	t.Run("over-the-limit", func(t *testing.T) {
		hrTree(t, filepath.Join(root, "more"), 50, 1000)
		_, err := e.Filesystem(connect.WithProtoJSON()).ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: root, Depth: 3}))
		want := fmt.Sprintf("directory listing of %s has more than 150000 entries; list a subdirectory or ask for less depth", root)
		if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v, want resource_exhausted %q", err, want)
		}
		// Less depth, or a subdirectory, still works; and nothing is held.
		for _, req := range []*filesystem.ListDirRequest{{Path: root, Depth: 1}, {Path: filepath.Join(root, "more"), Depth: 2}} {
			if _, err := e.Filesystem().ListDir(ctx, connect.NewRequest(req)); err != nil {
				t.Fatalf("%v: %v", req, err)
			}
		}
	})
}

// A tree deeper than the depth limit is refused when the request reaches
// past the limit; a large depth on a shallow tree, and the limit itself,
// are fine.
func TestHardening_ListDirDepthLimit(t *testing.T) {
	root := t.TempDir()
	deep := root
	for range 300 {
		deep = filepath.Join(deep, "d")
	}
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	shallow := t.TempDir()
	hrTree(t, shallow, 3, 3)
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem()
	ctx := context.Background()

	_, err := fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: root, Depth: 1000}))
	want := fmt.Sprintf("directory tree under %s is deeper than 256 levels; list a subdirectory or ask for less depth", root)
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want resource_exhausted %q", err, want)
	}
	resp, err := fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: root, Depth: 256}))
	if err != nil || len(resp.Msg.GetEntries()) != 256 {
		t.Fatalf("depth 256: %v", err)
	}
	resp, err = fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: shallow, Depth: 1000}))
	if err != nil || len(resp.Msg.GetEntries()) != 12 {
		t.Fatalf("shallow tree at depth 1000: %v", err)
	}
}
