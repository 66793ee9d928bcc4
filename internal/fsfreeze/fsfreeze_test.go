package fsfreeze

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

type fakeFS struct {
	mu     sync.Mutex
	frozen bool
	calls  []bool
	fail   error
}

func (f *fakeFS) ioctl(_ string, freeze bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, freeze)
	if f.fail != nil {
		return f.fail
	}
	f.frozen = freeze
	return nil
}

func (f *fakeFS) isFrozen() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.frozen
}

type fakeHold struct{ held, holds, releases int }

func (h *fakeHold) Hold()        { h.held++; h.holds++ }
func (h *fakeHold) Release() int { h.held--; h.releases++; return 3 }

func TestFreezeThawAndOutputHold(t *testing.T) {
	k := &fakeFS{}
	out := &fakeHold{}
	f := New(Options{Output: out, ioctl: k.ioctl, stdoutOn: func(string) bool { return true }, Watchdog: time.Hour})
	defer f.Stop()
	for i := 0; i < 2; i++ {
		if err := f.Freeze(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if !f.Frozen() || !k.isFrozen() || out.holds != 1 || out.held != 1 {
		t.Fatalf("after two freezes: frozen %v, holds %d held %d", f.Frozen(), out.holds, out.held)
	}
	if err := f.Thaw(); err != nil || f.Frozen() || out.held != 0 {
		t.Fatalf("thaw: %v frozen %v held %d", err, f.Frozen(), out.held)
	}
	if err := f.Thaw(); err != nil {
		t.Fatal(err)
	}
	// A failed freeze releases the hold it took.
	k.fail = errors.New("FIFREEZE /: operation not supported")
	if err := f.Freeze(context.Background()); err == nil || out.held != 0 || f.Frozen() {
		t.Fatalf("failed freeze: %v held %d", err, out.held)
	}
}

func TestDisabledAndAbandoned(t *testing.T) {
	k := &fakeFS{}
	f := New(Options{Disabled: true, ioctl: k.ioctl})
	if err := f.Freeze(context.Background()); !errors.Is(err, ErrNotAvailable) {
		t.Fatal(err)
	}
	if err := f.Thaw(); err != nil || len(k.calls) != 0 {
		t.Fatalf("--isnotfc thaw: %v %v", err, k.calls)
	}
	g := New(Options{ioctl: k.ioctl})
	g.lock <- struct{}{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := g.Freeze(ctx); !errors.Is(err, ErrAbandoned) || len(k.calls) != 0 {
		t.Fatalf("abandoned: %v %v", err, k.calls)
	}
}

func TestWatchdog(t *testing.T) {
	k := &fakeFS{}
	f := New(Options{ioctl: k.ioctl, Watchdog: 30 * time.Millisecond})
	defer f.Stop()
	if err := f.Freeze(context.Background()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for k.isFrozen() {
		if time.Now().After(deadline) {
			t.Fatal("the watchdog did not thaw")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A superseded generation does nothing.
	f.Freeze(context.Background())
	f.mu.Lock()
	old := f.wdGen - 1
	f.mu.Unlock()
	f.fire(old)
	if !k.isFrozen() {
		t.Fatal("a superseded watchdog thawed")
	}
	f.Thaw()
}
