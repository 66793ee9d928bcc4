//go:build vm

package vm

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	fspb "github.com/envd/envd/gen/filesystem"
	procpb "github.com/envd/envd/gen/process"
)

// Headers of the process service's opt-in replay (docs/processes.md).
const (
	replayFromHeader   = "Envd-Replay-From"
	outputOffsetHeader = "Envd-Output-Offset"
	replayGapHeader    = "Envd-Replay-Gap"
)

// outputLog is everything a process wrote to stdout, from byte 0, as
// collected across reconnections. A correct replay makes it exactly the
// process's output: no byte lost, none twice.
type outputLog struct {
	mu   sync.Mutex
	data []byte
}

func (l *outputLog) len() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return uint64(len(l.data))
}

func (l *outputLog) bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.data...)
}

// follower is one Connect stream on a process, appending its stdout to an
// outputLog, started at the offset the log already has.
type follower struct {
	from   uint64
	header http.Header
	done   chan struct{}
	err    error
	cancel context.CancelFunc
}

// follow opens Connect on tag asking for replay from what log already
// holds, and checks that envd starts the stream exactly there.
func follow(ctx context.Context, c *client, tag string, log *outputLog) (*follower, error) {
	from := log.len()
	sctx, cancel := context.WithCancel(context.Background())
	req := connect.NewRequest(&procpb.ConnectRequest{Process: &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: tag}}})
	req.Header().Set(replayFromHeader, "stdout="+strconv.FormatUint(from, 10))
	stream, err := c.proc("root").Connect(sctx, req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("connect %s: %w", tag, err)
	}
	f := &follower{from: from, done: make(chan struct{}), cancel: cancel}
	first := make(chan error, 1)
	go func() {
		defer close(f.done)
		defer stream.Close()
		started := false
		for stream.Receive() {
			if !started {
				started = true
				f.header = stream.ResponseHeader().Clone()
				first <- nil
			}
			if d := stream.Msg().GetEvent().GetData(); d != nil {
				log.mu.Lock()
				log.data = append(log.data, d.GetStdout()...)
				log.mu.Unlock()
			}
		}
		f.err = stream.Err()
		if !started {
			first <- fmt.Errorf("connect %s: stream ended before any event: %v", tag, f.err)
		}
	}()
	select {
	case err := <-first:
		if err != nil {
			cancel()
			return nil, err
		}
	case <-ctx.Done():
		cancel()
		return nil, fmt.Errorf("connect %s: no event: %w", tag, ctx.Err())
	}
	want := "stdout=" + strconv.FormatUint(from, 10)
	got := f.header.Get(outputOffsetHeader)
	if !containsItem(got, want) {
		cancel()
		return nil, fmt.Errorf("connect %s with %s: %s; want %s", tag, req.Header().Get(replayFromHeader), outputOffsetHeader+": "+got, want)
	}
	if gap := f.header.Get(replayGapHeader); gap != "" {
		cancel()
		return nil, fmt.Errorf("connect %s from %d: output lost (%s: %s)", tag, from, replayGapHeader, gap)
	}
	return f, nil
}

func containsItem(list, item string) bool {
	for _, it := range strings.Split(list, ",") {
		if strings.TrimSpace(it) == item {
			return true
		}
	}
	return false
}

// wait waits until the stream has ended (the VM it talked to was killed).
func (f *follower) wait(ctx context.Context) error {
	select {
	case <-f.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stream still open: %w", ctx.Err())
	}
}

func (f *follower) stop() {
	f.cancel()
	<-f.done
}

// counterLines parses the counter's stdout ("0\n1\n2\n…", the last line
// possibly incomplete) and checks that it counts up by one from 0 with
// nothing missing or repeated. It returns the number of complete lines.
func counterLines(data []byte) (int, error) {
	lines := bytes.Split(data, []byte("\n"))
	lines = lines[:len(lines)-1] // after the last newline: incomplete or empty
	for i, l := range lines {
		n, err := strconv.Atoi(string(l))
		if err != nil || n != i {
			lo, hi := max(0, i-3), min(len(lines), i+3)
			return i, fmt.Errorf("counter output line %d is %q, want %d (context %q)", i, l, i, bytes.Join(lines[lo:hi], []byte("|")))
		}
	}
	return len(lines), nil
}

// waitLines waits until log holds at least n complete counter lines.
func waitLines(ctx context.Context, log *outputLog, n int) error {
	for {
		got, err := counterLines(log.bytes())
		if err != nil {
			return err
		}
		if got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("counter output has %d lines, waited for %d: %w", got, n, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// watcher is an open WatchDir stream.
type watcher struct {
	mu     sync.Mutex
	events []*fspb.FilesystemEvent
	done   chan struct{}
	err    error
	cancel context.CancelFunc
}

func watchDir(ctx context.Context, c *client, user, dir string) (*watcher, error) {
	sctx, cancel := context.WithCancel(context.Background())
	stream, err := c.fs(user).WatchDir(sctx, connect.NewRequest(&fspb.WatchDirRequest{Path: dir}))
	if err != nil {
		cancel()
		return nil, err
	}
	w := &watcher{done: make(chan struct{}), cancel: cancel}
	started := make(chan error, 1)
	go func() {
		defer close(w.done)
		defer stream.Close()
		first := true
		for stream.Receive() {
			msg := stream.Msg()
			if first {
				first = false
				if msg.GetStart() == nil {
					started <- fmt.Errorf("watch %s: first message is not start: %v", dir, msg)
					return
				}
				started <- nil
				continue
			}
			if ev := msg.GetFilesystem(); ev != nil {
				w.mu.Lock()
				w.events = append(w.events, ev)
				w.mu.Unlock()
			}
		}
		w.err = stream.Err()
		if first {
			started <- fmt.Errorf("watch %s: stream ended before start: %v", dir, w.err)
		}
	}()
	select {
	case err := <-started:
		if err != nil {
			cancel()
			return nil, err
		}
	case <-ctx.Done():
		cancel()
		return nil, fmt.Errorf("watch %s: no start event: %w", dir, ctx.Err())
	}
	return w, nil
}

// waitEvent waits for an event about name of one of the given types.
func (w *watcher) waitEvent(ctx context.Context, name string, types ...fspb.EventType) error {
	for {
		w.mu.Lock()
		for _, ev := range w.events {
			for _, ty := range types {
				if ev.GetName() == name && ev.GetType() == ty {
					w.mu.Unlock()
					return nil
				}
			}
		}
		seen := fmt.Sprint(w.events)
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			return fmt.Errorf("no %v event for %q; saw %s", types, name, seen)
		case <-w.done:
			return fmt.Errorf("watch stream ended (%v) before a %v event for %q; saw %s", w.err, types, name, seen)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (w *watcher) stop() {
	w.cancel()
	<-w.done
}
