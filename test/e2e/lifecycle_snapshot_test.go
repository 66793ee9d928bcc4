package e2e

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// Snapshot prepare and post-restore recovery, end to end (spec
// lifecycle.md §7, http.md §9). The VM is never really frozen here: what is
// checked is what envd does around the freeze.

func prepare(t *testing.T, e *envdtest.Envd) {
	t.Helper()
	resp, body := do(t, "POST", e.URL+"/snapshot/prepare", nil, nil)
	if resp.StatusCode != 204 || len(body) != 0 || resp.Header.Get("Cache-Control") != "no-store" || !resp.Close {
		t.Fatalf("prepare: %d close=%v %v %q", resp.StatusCode, resp.Close, resp.Header, body)
	}
}

func TestSnapshot_PrepareClosesIdleConnections(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	idle := dialRaw(t, e.URL)
	if resp := idle.get("/health"); resp.StatusCode != 200 || resp.Close {
		t.Fatalf("health on a fresh connection: %d close=%v", resp.StatusCode, resp.Close)
	}
	if idle.closedByPeer(100 * time.Millisecond) {
		t.Fatal("idle keep-alive connection closed before prepare")
	}
	prepare(t, e)
	if !idle.closedByPeer(5 * time.Second) {
		t.Fatal("idle keep-alive connection still open after prepare")
	}
	// While prepared every response closes its connection, and /metrics
	// still answers (computed on demand).
	m := dialRaw(t, e.URL)
	if resp := m.get("/metrics"); resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("metrics while prepared: %d close=%v", resp.StatusCode, resp.Close)
	}
	if n := strings.Count(e.Log(), "recovered after restore"); n != 0 {
		t.Fatalf("/metrics ran recovery")
	}
}

func TestSnapshot_StreamAcrossPrepareClosedAtRecovery(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// An open Start stream: its connection is active across the prepare.
	s := lcStart(t, ctx, e, &pb.StartRequest{
		Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "echo before; read x; echo after; sleep 30"}},
		Tag:     ptr("across-snapshot"),
		Stdin:   ptr(true),
	})
	if !s.Receive() || s.Msg().GetEvent().GetStart() == nil {
		t.Fatalf("no start event: %v", s.Err())
	}
	pid := s.Msg().GetEvent().GetStart().GetPid()
	events := make(chan *pb.ProcessEvent, 64)
	streamErr := make(chan error, 1)
	go func() {
		for s.Receive() {
			events <- s.Msg().GetEvent()
		}
		streamErr <- s.Err()
	}()
	waitData := func(want string) {
		t.Helper()
		var got strings.Builder
		timeout := time.After(10 * time.Second)
		for !strings.Contains(got.String(), want) {
			select {
			case ev := <-events:
				got.Write(ev.GetData().GetStdout())
			case err := <-streamErr:
				t.Fatalf("stream ended (%v) before %q; got %q", err, want, got.String())
			case <-timeout:
				t.Fatalf("no %q on the stream; got %q", want, got.String())
			}
		}
	}
	waitData("before")

	prepare(t, e)
	select {
	case err := <-streamErr:
		t.Fatalf("an active stream must survive prepare; it ended: %v", err)
	case <-time.After(300 * time.Millisecond):
	}

	// The first /health after the restore runs recovery, which closes the
	// stream whose peer no longer exists after a real restore.
	if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("health")
	}
	select {
	case err := <-streamErr:
		if err == nil {
			t.Fatal("stream ended cleanly; recovery must cut it")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stream across the snapshot still open after recovery")
	}

	// The process is untouched: a client reconnects and gets what it
	// produced meanwhile.
	if _, err := e.Process().SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{
		Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "across-snapshot"}},
		Input:   &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("go\n")}},
	})); err != nil {
		t.Fatalf("send input after recovery: %v", err)
	}
	c, err := e.Process().Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}}))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for !strings.Contains(out.String(), "after") && c.Receive() {
		out.Write(c.Msg().GetEvent().GetData().GetStdout())
	}
	if !strings.Contains(out.String(), "after") {
		t.Fatalf("reconnect after recovery: %q %v", out.String(), c.Err())
	}
	c.Close()
	e.Process().SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}, Signal: pb.Signal_SIGNAL_SIGKILL}))
}

func TestSnapshot_SlowUploadAcrossPrepareClosedAtRecovery(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	// A request whose body is still being sent: the connection is active.
	slow := dialRaw(t, e.URL)
	slow.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := slow.Write([]byte("POST /init HTTP/1.1\r\nHost: envd\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"envVars\":")); err != nil {
		t.Fatal(err)
	}
	// The server has accepted the connection once envd holds its socket; a
	// moment later it has read the headers.
	lcWait(t, "envd to accept the connection", func() bool { return slow.acceptedBy(e.Pid()) })
	time.Sleep(50 * time.Millisecond)
	prepare(t, e)
	if slow.closedByPeer(300 * time.Millisecond) {
		t.Fatal("a connection with a request in flight was closed at prepare")
	}
	if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("health")
	}
	if !slow.closedByPeer(5 * time.Second) {
		t.Fatal("connection from before the snapshot still open after recovery")
	}
}

func TestSnapshot_ConnectionOpenedAfterRecoverySurvives(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	prepare(t, e)
	c := dialRaw(t, e.URL)
	// This /health runs recovery; its own connection is not from before
	// the snapshot and stays usable.
	if resp := c.get("/health"); resp.StatusCode != 200 || resp.Close {
		t.Fatalf("recovering health: %d close=%v", resp.StatusCode, resp.Close)
	}
	for _, path := range []string{"/health", "/envs", "/metrics", "/health"} {
		if resp := c.get(path); resp.StatusCode != 200 || resp.Close {
			t.Fatalf("%s after recovery: %d close=%v", path, resp.StatusCode, resp.Close)
		}
	}
	// /init after recovery re-runs the idempotent restore steps; the
	// connection still survives.
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{}, nil); resp.StatusCode != 204 {
		t.Fatal("init")
	}
	if c.closedByPeer(200 * time.Millisecond) {
		t.Fatal("connection opened after recovery was closed")
	}
	if resp := c.get("/health"); resp.StatusCode != 200 {
		t.Fatal("health")
	}
}

var recoveryLine = regexp.MustCompile(`recovered after restore rss_kib=(\d+) goroutines=(\d+)`)

func TestSnapshot_RecoveryRunsOncePerPrepare(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	// Recovery by /health, twice prepared; then by /init.
	prepare(t, e)
	prepare(t, e) // idempotent: state of the first prepare is kept
	for i := 0; i < 3; i++ {
		if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
			t.Fatal("health")
		}
	}
	prepare(t, e)
	if resp, _ := postJSON(t, e.URL+"/init", nil, nil); resp.StatusCode != 204 {
		t.Fatal("init")
	}
	do(t, "GET", e.URL+"/health", nil, nil)
	lcWait(t, "two recoveries logged", func() bool { return len(recoveryLine.FindAllString(e.Log(), -1)) >= 2 })
	if n := len(recoveryLine.FindAllString(e.Log(), -1)); n != 2 {
		t.Fatalf("recovery ran %d times for 2 prepares:\n%s", n, e.Log())
	}
	if n := strings.Count(e.Log(), "snapshot prepared"); n != 2 {
		t.Fatalf("prepare did its work %d times for 2 prepares (+1 repeated call)", n)
	}
}

// TestSnapshot_ManyCyclesStayFlat runs 20 prepare/recover cycles with
// requests in between; envd keeps answering and its goroutine count, logged
// at every recovery, does not grow.
func TestSnapshot_ManyCyclesStayFlat(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	const cycles = 20
	var slowest time.Duration
	for i := 0; i < cycles; i++ {
		start := time.Now()
		prepare(t, e)
		slowest = max(slowest, time.Since(start))
		if resp, body := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 || !strings.Contains(string(body), "version") {
			t.Fatalf("cycle %d: health %d", i, resp.StatusCode)
		}
		if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"envVars": map[string]string{"CYCLE": strconv.Itoa(i)}}, nil); resp.StatusCode != 204 {
			t.Fatalf("cycle %d: init %d", i, resp.StatusCode)
		}
		if r := lcExec(t, e, "echo $CYCLE"); strings.TrimSpace(r.stdout.String()) != strconv.Itoa(i) || r.end.GetExitCode() != 0 {
			t.Fatalf("cycle %d: process after restore: %q %v", i, r.stdout.String(), r.end)
		}
	}
	lcWait(t, "all recoveries logged", func() bool { return len(recoveryLine.FindAllString(e.Log(), -1)) >= cycles })
	m := recoveryLine.FindAllStringSubmatch(e.Log(), -1)
	if len(m) != cycles {
		t.Fatalf("%d recoveries for %d prepares", len(m), cycles)
	}
	first, _ := strconv.Atoi(m[1][2]) // after the first cycle warmed up
	last, _ := strconv.Atoi(m[cycles-1][2])
	if last > first+3 {
		t.Fatalf("goroutines grew across cycles: %d → %d", first, last)
	}
	t.Logf("recovery: goroutines %s → %s, rss_kib %s → %s; slowest /snapshot/prepare round trip %v",
		m[0][2], m[cycles-1][2], m[0][1], m[cycles-1][1], slowest.Round(time.Microsecond))
}

// TestSnapshot_KeepalivesQuietWhilePrepared: a stream asking for a
// keepalive every second gets none while the VM is prepared.
func TestSnapshot_KeepalivesQuietWhilePrepared(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := lcStart(t, ctx, e, &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sleep", Args: []string{"60"}}}, "Keepalive-Ping-Interval", "1")
	var mu sync.Mutex
	var keepalives []time.Time
	var pid uint32
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for s.Receive() {
			ev := s.Msg().GetEvent()
			if ev.GetStart() != nil {
				mu.Lock()
				pid = ev.GetStart().GetPid()
				mu.Unlock()
			}
			if ev.GetKeepalive() != nil {
				mu.Lock()
				keepalives = append(keepalives, time.Now())
				mu.Unlock()
			}
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(keepalives) }
	lcWait(t, "a keepalive before the prepare", func() bool { return count() >= 1 })

	prepared := time.Now()
	prepare(t, e)
	time.Sleep(2500 * time.Millisecond) // 2.5 keepalive intervals
	recovering := time.Now()
	if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("health")
	}
	mu.Lock()
	var during int
	for _, at := range keepalives {
		// A keepalive already on its way when prepare answered may
		// arrive just after it.
		if at.After(prepared.Add(200*time.Millisecond)) && at.Before(recovering) {
			during++
		}
	}
	p := pid
	mu.Unlock()
	if during != 0 {
		t.Fatalf("%d keepalives sent while prepared", during)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("stream from before the snapshot not closed at recovery")
	}
	e.Process().SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: p}}, Signal: pb.Signal_SIGNAL_SIGKILL}))
}
