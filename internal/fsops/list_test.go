package fsops

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func makeFiles(t *testing.T, dir string, n int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%05d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestList_EntryLimitCountsWhatIsRead(t *testing.T) {
	dir := t.TempDir()
	makeFiles(t, filepath.Join(dir, "a"), 30)
	makeFiles(t, filepath.Join(dir, "b"), 30)
	var seen int
	err := List(context.Background(), fakeNames{}, dir, 2, ListOptions{MaxEntries: 50}, func(*Entry) { seen++ })
	if !errors.Is(err, ErrListTooLarge) || err.Error() != fmt.Sprintf("directory listing of %s has more than 50 entries; list a subdirectory or ask for less depth", dir) {
		t.Fatalf("%v", err)
	}
	// Exactly at the limit is fine.
	got := 0
	err = List(context.Background(), fakeNames{}, dir, 2, ListOptions{MaxEntries: 62}, func(*Entry) { got++ })
	if err != nil || got != 62 {
		t.Fatalf("%d %v", got, err)
	}
}

func TestList_DepthLimitOnlyWhereTheTreeIsDeeper(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "1", "2", "3", "4"), 0o755)
	// Depth 3 of 3 allowed: fine; an empty directory at the limit is fine.
	if err := List(context.Background(), fakeNames{}, dir, 10, ListOptions{MaxDepth: 4}, func(*Entry) {}); err != nil {
		t.Fatal(err)
	}
	err := List(context.Background(), fakeNames{}, dir, 10, ListOptions{MaxDepth: 3}, func(*Entry) {})
	if !errors.Is(err, ErrListTooLarge) || !strings.Contains(err.Error(), "deeper than 3 levels") {
		t.Fatalf("%v", err)
	}
	// Asking only for what the limit allows is fine.
	if err := List(context.Background(), fakeNames{}, dir, 3, ListOptions{MaxDepth: 3}, func(*Entry) {}); err != nil {
		t.Fatal(err)
	}
}

// The oldest listing waits for room; a younger one that cannot get room
// fails at once, releasing what it took; End returns everything.
func TestListBudget_OldestWaitsYoungerFails(t *testing.T) {
	b := NewListBudget(3 * listChunk)
	old := b.Begin()
	young := b.Begin()
	ctx := context.Background()
	if err := old.take(ctx, 2*listChunk); err != nil {
		t.Fatal(err)
	}
	if err := young.take(ctx, listChunk); err != nil {
		t.Fatal(err)
	}
	if err := young.take(ctx, listChunk); !errors.Is(err, ErrListTooLarge) || !strings.Contains(err.Error(), "too many entries are being listed at once") {
		t.Fatalf("younger: %v", err)
	}
	got := make(chan error, 1)
	go func() { got <- old.take(ctx, listChunk) }()
	select {
	case err := <-got:
		t.Fatalf("the oldest did not wait: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	young.End()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	old.End()
	old.End()
	if b.InUse() != 0 {
		t.Fatalf("held %d", b.InUse())
	}
	// A waiting listing gives up with its context.
	a := b.Begin()
	if err := a.take(ctx, 3*listChunk); err != nil {
		t.Fatal(err)
	}
	c := b.Begin()
	a.walked() // a is done walking, so c is the oldest walker and waits
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := c.take(cctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%v", err)
	}
	a.End()
	c.End()
}

func TestList_BudgetHeldUntilEnd(t *testing.T) {
	dir := t.TempDir()
	makeFiles(t, dir, 10)
	b := NewListBudget(10 * listChunk)
	acct := b.Begin()
	if err := List(context.Background(), fakeNames{}, dir, 1, ListOptions{Account: acct}, func(*Entry) {}); err != nil {
		t.Fatal(err)
	}
	if b.InUse() == 0 {
		t.Fatal("a finished listing released its entries before its response was sent")
	}
	acct.End()
	if b.InUse() != 0 {
		t.Fatalf("held %d", b.InUse())
	}
}
