package logging

import (
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// holdWait bounds how long Hold waits for log writes in progress: a write
// blocked by a filesystem someone else froze must not stall a freeze or a
// thaw for ever.
const holdWait = time.Second

// Gate is envd's log output with a switch that drops lines instead of
// writing them, used while envd itself holds the filesystem that standard
// output is on frozen (a write there would block until the thaw, holding
// the handler's lock and with it every goroutine that logs). Dropped lines
// are counted, never buffered (D16).
type Gate struct {
	w       io.Writer
	rw      sync.RWMutex // writes hold it shared; Hold takes it exclusively
	held    atomic.Bool
	dropped atomic.Int64
}

// NewGate returns an open gate in front of w.
func NewGate(w io.Writer) *Gate { return &Gate{w: w} }

func (g *Gate) Write(p []byte) (int, error) {
	g.rw.RLock()
	defer g.rw.RUnlock()
	if g.held.Load() {
		g.dropped.Add(1)
		return len(p), nil
	}
	return g.w.Write(p)
}

// Hold starts dropping output once the writes in progress have finished
// (waiting at most holdWait for them).
func (g *Gate) Hold() {
	deadline := time.Now().Add(holdWait)
	for !g.rw.TryLock() {
		if time.Now().After(deadline) {
			g.held.Store(true) // later writes drop; the stuck one stays stuck
			return
		}
		time.Sleep(time.Millisecond)
	}
	g.held.Store(true)
	g.rw.Unlock()
}

// Release writes again and returns how many lines were dropped meanwhile.
func (g *Gate) Release() int {
	g.held.Store(false)
	return int(g.dropped.Swap(0))
}
