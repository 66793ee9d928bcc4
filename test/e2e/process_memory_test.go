package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// rssAfterBurst is the most envd may hold resident within 5 s of a burst
// of output ending (docs/performance.md: about 20 MB measured; before
// memory was handed back it kept 80–100 MB).
const rssAfterBurst = 40 << 20

// Memory handed back: after 300 processes wrote 1 MiB each to 100 streams
// at a time, envd's resident memory comes back down within 5 s of the last
// stream ending — the retained exits' rings shrink to their own small
// budget and the heap the burst grew is returned when the last stream
// ends — and the retained exits still answer.
func TestProcess_MemoryHandedBackAfterABurst(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := e.Process()
	var peak int64
	var lastPID uint32
	var mu sync.Mutex
	for round := 0; round < 3; round++ {
		var wg sync.WaitGroup
		errs := make(chan error, 100)
		for i := 0; i < 100; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := c.Start(procCtx(t), procReq(&pb.StartRequest{Process: procSh("yes abcdefghijklmnopqrstuvwxyz012345678 | head -c 1048576"), Stdin: ptr(false)}))
				if err != nil {
					errs <- err
					return
				}
				ev := newProcReader[pb.StartResponse, *pb.StartResponse](s).drain()
				switch {
				case ev.err != nil:
					errs <- ev.err
				case ev.out["stdout"].Len() != 1<<20:
					errs <- fmt.Errorf("got %d bytes", ev.out["stdout"].Len())
				}
				mu.Lock()
				lastPID = ev.pid
				mu.Unlock()
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if v, ok := vmRSS(e.Pid()); ok {
			peak = max(peak, v)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	var rss int64
	for {
		rss, _ = vmRSS(e.Pid())
		if rss <= rssAfterBurst || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("VmRSS after the burst: %d KiB (%d KiB right after a round)", rss>>10, peak>>10)
	if rss > rssAfterBurst {
		t.Fatalf("envd holds %d MiB 5 s after the burst ended (ceiling %d MiB)", rss>>20, rssAfterBurst>>20)
	}
	// The exits are still retained, with the end.
	ev := procConnect(t, procCtx(t), c, procReq(&pb.ConnectRequest{Process: procPID(lastPID)})).drain()
	wantEnd(t, ev, 0, true, "exit status 0")
}
