package lifecycle

import (
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/envd/envd/internal/logging"
)

func TestSnapshot_OrderAndOnce(t *testing.T) {
	var mu sync.Mutex
	var calls []string
	rec := func(s string) func() {
		return func() { mu.Lock(); calls = append(calls, s); mu.Unlock() }
	}
	s := NewSnapshot(logging.Discard(),
		Part{"ports", rec("ports.stop"), rec("ports.start")},
		Part{"conns", rec("conns.prepare"), rec("conns.restore")},
	)
	procs := runtime.GOMAXPROCS(0)
	s.Prepare(rec("respond"))
	if runtime.GOMAXPROCS(0) != 1 {
		t.Fatal("GOMAXPROCS not 1 while prepared")
	}
	s.Prepare(rec("respond2"))
	var wg sync.WaitGroup
	ran := make(chan bool, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); ran <- s.RecoverIfNeeded() }()
	}
	wg.Wait()
	close(ran)
	n := 0
	for r := range ran {
		if r {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("recovery ran %d times", n)
	}
	if runtime.GOMAXPROCS(0) != procs {
		t.Fatal("GOMAXPROCS not restored")
	}
	got := strings.Join(calls, ",")
	want := "ports.stop,conns.prepare,respond,respond2,conns.restore,ports.start"
	if got != want {
		t.Fatalf("calls %s\nwant  %s", got, want)
	}
	if p, r := s.Counts(); p != 1 || r != 1 {
		t.Fatalf("counts %d %d", p, r)
	}
	if RSSKiB() <= 0 {
		t.Fatal("RSS unknown")
	}
}
