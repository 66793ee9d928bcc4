//go:build race

package process

// raceEnabled: under the race detector sync.Pool drops a quarter of what
// is put back, so counts of buffers made say nothing there.
const raceEnabled = true
