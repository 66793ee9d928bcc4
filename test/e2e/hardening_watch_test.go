package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/gen/filesystem/filesystemconnect"
	"github.com/envd/envd/internal/envdtest"
)

func hrPoll(ctx context.Context, fs interface {
	GetWatcherEvents(context.Context, *connect.Request[filesystem.GetWatcherEventsRequest]) (*connect.Response[filesystem.GetWatcherEventsResponse], error)
}, id string) ([]*filesystem.FilesystemEvent, error) {
	r, err := fs.GetWatcherEvents(ctx, connect.NewRequest(&filesystem.GetWatcherEventsRequest{WatcherId: id}))
	if err != nil {
		return nil, err
	}
	return r.Msg.GetEvents(), nil
}

// A polling watcher nobody polls expires: its inotify instance is freed
// and GetWatcherEvents answers not_found; a watcher that is polled lives
// on. The test-only knob does not reach spawned processes.
func TestHardening_PollingWatcherIdleExpiry(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{Env: []string{"ENVD_TEST_WATCHER_IDLE_MS=2000"}})
	fs := e.Filesystem()
	ctx := hrCtx(t)
	dir := t.TempDir()
	base := inotifyFDs(t, e.Pid())
	create := func() string {
		cr, err := fs.CreateWatcher(ctx, connect.NewRequest(&filesystem.CreateWatcherRequest{Path: dir}))
		if err != nil {
			t.Fatal(err)
		}
		return cr.Msg.GetWatcherId()
	}
	forgotten, polled := create(), create()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := hrPoll(ctx, fs, polled); err != nil {
			t.Fatalf("polled watcher: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	_, err := hrPoll(ctx, fs, forgotten)
	fsWantCode(t, err, connect.CodeNotFound, "watcher with id "+forgotten+" not found")
	os.WriteFile(filepath.Join(dir, "after"), nil, 0o644)
	var got []string
	for !strings.Contains(strings.Join(got, ","), "CREATE after") {
		evs, err := hrPoll(ctx, fs, polled)
		if err != nil {
			t.Fatalf("polled watcher after the other expired: %v", err)
		}
		got = append(got, evStrings(evs)...)
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("polled watcher saw %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := inotifyFDs(t, e.Pid()); n != base+1 {
		t.Fatalf("%d inotify instances, want %d (the expired watcher's freed)", n, base+1)
	}
	if !strings.Contains(e.Log(), "watcher expired") {
		t.Fatal("no log line for the expiry")
	}
	res := lcExec(t, e, "env")
	if strings.Contains(res.stdout.String(), "ENVD_TEST_WATCHER_IDLE_MS") {
		t.Fatal("a spawned process sees the test-only variable")
	}
}

// Forgotten polling watchers cannot use up the inotify instances that
// WatchDir needs: past their cap CreateWatcher is refused with
// resource_exhausted, and streams still start.
func TestHardening_PollingWatchersCappedStreamsStillWork(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem()
	ctx := hrCtx(t)
	dir := t.TempDir()
	created := 0
	var lastErr error
	for range 128 {
		_, err := fs.CreateWatcher(ctx, connect.NewRequest(&filesystem.CreateWatcherRequest{Path: dir}))
		if err != nil {
			lastErr = err
			break
		}
		created++
	}
	if created != 32 {
		t.Fatalf("%d polling watchers created, want the cap of 32 (last error %v)", created, lastErr)
	}
	fsWantCode(t, lastErr, connect.CodeResourceExhausted, "too many polling watchers (32); remove unused ones with RemoveWatcher")
	var recs []*watchRecorder
	for i := range 16 {
		sub := filepath.Join(dir, fmt.Sprintf("s%d", i))
		os.Mkdir(sub, 0o755)
		recs = append(recs, startWatch(t, fs, connect.NewRequest(&filesystem.WatchDirRequest{Path: sub})))
	}
	os.WriteFile(filepath.Join(dir, "s15", "x"), nil, 0o644)
	recs[15].waitEvents(t, "CREATE x")
}

// With include_entry, many polling watchers of a busy directory share one
// memory budget: envd's memory stays bounded, watchers that exceed it
// report data_loss, and every watcher keeps collecting afterwards.
func TestHardening_PollingWatchersShareEventMemory(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem()
	ctx := hrCtx(t)
	dir := t.TempDir()
	const watchers = 16
	var ids []string
	for range watchers {
		cr, err := fs.CreateWatcher(ctx, connect.NewRequest(&filesystem.CreateWatcherRequest{Path: dir, IncludeEntry: true}))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, cr.Msg.GetWatcherId())
	}
	rss := sampleRSS(t, e.Pid())
	// 8000 events (below the kernel's queue of 16384, which would fail the
	// watchers for good) of about 1 KiB each, for 16 watchers: twice the
	// 64 MiB budget.
	long := strings.Repeat("n", 200)
	for i := range 8000 {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%05d", long, i)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	hrWaitIdle(t, e.Pid())
	peak, _ := rss.finish()
	t.Logf("peak RSS %d MiB with %d watchers of 8000 events each", peak>>20, watchers)
	if peak > 250<<20 {
		t.Fatalf("peak RSS %d MiB, ceiling 250 MiB", peak>>20)
	}
	lost := 0
	for _, id := range ids {
		_, err := hrPoll(ctx, fs, id)
		switch {
		case err == nil:
		case connect.CodeOf(err) == connect.CodeDataLoss:
			lost++
		default:
			t.Fatalf("watcher %s: %v", id, err)
		}
	}
	if lost == 0 {
		t.Fatal("no watcher overflowed although their events exceed the budget")
	}
	os.WriteFile(filepath.Join(dir, "later"), nil, 0o644)
	for _, id := range ids {
		deadline := time.Now().Add(15 * time.Second)
		var got []string
		for !strings.Contains(strings.Join(got, ","), "CREATE later") {
			evs, err := hrPoll(ctx, fs, id)
			if err != nil && connect.CodeOf(err) != connect.CodeDataLoss {
				t.Fatalf("watcher %s after the overflow: %v", id, err)
			}
			got = append(got, evStrings(evs)...)
			if time.Now().After(deadline) {
				t.Fatalf("watcher %s never saw the later file", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// hrWaitIdle waits until process pid has used no CPU for a second (bounded
// at a minute): the watchers have caught up.
func hrWaitIdle(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	var last uint64
	quiet := 0
	for time.Now().Before(deadline) {
		cpu, ok := hrCPU(pid)
		if !ok {
			t.Fatal("cannot read envd's stat")
		}
		if cpu == last {
			quiet++
			if quiet >= 5 {
				return
			}
		} else {
			quiet = 0
		}
		last = cpu
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("envd did not settle within a minute")
}

// hrCPU is the user plus system CPU time of pid, in clock ticks.
func hrCPU(pid int) (uint64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	s := string(b)
	rest := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(rest) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseUint(rest[11], 10, 64)
	k, err2 := strconv.ParseUint(rest[12], 10, 64)
	return u + k, err1 == nil && err2 == nil
}

// hrCtx is a context for a test's RPCs, bounded at two minutes.
func hrCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Over h2c, a WatchDir whose client stops reading is ended alone after the
// 30 s send stall: the other streams and calls multiplexed on its
// connection go on.
func TestHardening_StalledWatchDirEndsOnlyItsH2Stream(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	// A small stream window, so that the stalled stream fills it quickly.
	client := &http.Client{Transport: &http.Transport{Protocols: protocols, HTTP2: &http.HTTP2Config{
		MaxReceiveBufferPerStream: 64 << 10, MaxReceiveBufferPerConnection: 16 << 20,
	}}}
	var connMu sync.Mutex
	conns := map[string]bool{}
	traced := func(ctx context.Context) context.Context {
		return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			connMu.Lock()
			conns[i.Conn.LocalAddr().String()] = true
			connMu.Unlock()
		}})
	}
	fs := filesystemconnect.NewFilesystemClient(client, e.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	busy, quiet := t.TempDir(), t.TempDir()
	base := inotifyFDs(t, e.Pid())

	stalled, err := fs.WatchDir(traced(ctx), connect.NewRequest(&filesystem.WatchDirRequest{Path: busy}))
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	if !stalled.Receive() || stalled.Msg().GetStart() == nil {
		t.Fatalf("no start: %v", stalled.Err())
	}
	healthy := startWatch(t, fs, connect.NewRequest(&filesystem.WatchDirRequest{Path: quiet}))

	// The busy directory produces events until the stalled stream is gone.
	stop := make(chan struct{})
	generated := make(chan struct{})
	go func() {
		defer close(generated)
		name := filepath.Join(busy, strings.Repeat("b", 200))
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			os.WriteFile(fmt.Sprintf("%s-%d", name, i%64), nil, 0o644)
			if i%64 == 63 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-generated
	}()

	start := time.Now()
	for i := 0; ; i++ {
		if _, err := fs.Stat(traced(ctx), connect.NewRequest(&filesystem.StatRequest{Path: quiet})); err != nil {
			t.Fatalf("unary call beside the stalled stream: %v", err)
		}
		mark := fmt.Sprintf("m%d", i)
		os.WriteFile(filepath.Join(quiet, mark), nil, 0o644)
		healthy.waitEvents(t, "CREATE "+mark)
		if inotifyFDs(t, e.Pid()) == base+1 {
			break // envd ended the stalled stream and freed its watcher
		}
		if time.Since(start) > 90*time.Second {
			t.Fatal("the stalled stream was not ended within 90 s")
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("stalled stream ended after %s", time.Since(start).Round(time.Second))
	if d := time.Since(start); d < 25*time.Second {
		t.Fatalf("ended after %s, before the 30 s stall", d)
	}
	close(stop)
	<-generated

	// The healthy stream and unary calls go on, on the same connection.
	os.WriteFile(filepath.Join(quiet, "after"), nil, 0o644)
	healthy.waitEvents(t, "CREATE after")
	if _, err := fs.Stat(traced(ctx), connect.NewRequest(&filesystem.StatRequest{Path: quiet})); err != nil {
		t.Fatal(err)
	}
	connMu.Lock()
	n := len(conns)
	connMu.Unlock()
	if n != 1 {
		t.Fatalf("requests used %d connections, want 1", n)
	}
	healthy.mu.Lock()
	herr := healthy.err
	healthy.mu.Unlock()
	if herr != nil {
		t.Fatalf("healthy stream ended: %v", herr)
	}
	// The stalled stream, read at last, ends in an error (reset).
	for stalled.Receive() {
	}
	if stalled.Err() == nil {
		t.Fatal("the stalled stream ended cleanly")
	}
	t.Logf("stalled stream: %v", stalled.Err())
}

// A WatchDir client that falls a whole queue behind is cut with aborted
// after the last whole message: it reads every message it was sent, then
// the end of the stream, never a torn envelope.
func TestHardening_WatchDirQueueOverflowEndsWithAborted(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: protocols, HTTP2: &http.HTTP2Config{
		MaxReceiveBufferPerStream: 64 << 10,
	}}}
	fs := filesystemconnect.NewFilesystemClient(client, e.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	stream, err := fs.WatchDir(ctx, connect.NewRequest(&filesystem.WatchDirRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	// Not reading, while more events than the queue holds (8192) happen;
	// well within the 30 s send stall.
	long := strings.Repeat("q", 200)
	for i := range 12000 {
		p := filepath.Join(dir, fmt.Sprintf("%s-%05d", long, i))
		os.WriteFile(p, nil, 0o644)
		os.Remove(p)
	}
	time.Sleep(3 * time.Second)
	n := 0
	for stream.Receive() {
		if stream.Msg().GetFilesystem() == nil && stream.Msg().GetKeepalive() == nil {
			t.Fatalf("unexpected message %v", stream.Msg())
		}
		n++
	}
	err = stream.Err()
	t.Logf("%d messages, then %v", n, err)
	if connect.CodeOf(err) != connect.CodeAborted || !strings.Contains(err.Error(), "subscriber too slow: event queue overflow") {
		t.Fatalf("stream ended with %v, want aborted (queue overflow)", err)
	}
	if n == 0 || n >= 24000 {
		t.Fatalf("%d messages before the cut", n)
	}
}
