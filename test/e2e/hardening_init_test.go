package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envd/envd/internal/envdtest"
)

// POST /init bodies are read only when it is their turn, bounded in size
// and in time (D19, http.md §8.1, §8.6; issue 11 items 1, 6 and 18).

// initLimit is envd's documented /init body limit (4 MiB).
const initLimit = 4 << 20

// bigInitBody is a JSON /init body of about n bytes with a wrong token.
func bigInitBody(n int) []byte {
	pad := n - 64
	return []byte(`{"accessToken":"wrong-token","caBundle":"` + strings.Repeat("A", pad) + `"}`)
}

// TestHardening_InitBodiesBounded: 30 concurrent 16 MiB bodies with a wrong
// token, half with Content-Length, half chunked, cannot grow envd's memory:
// each is answered 413 (too large) or 401/503, envd's RSS stays far below
// what 30 buffered bodies would take, and envd keeps serving.
func TestHardening_InitBodiesBounded(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"accessToken": "right-token"}, nil); resp.StatusCode != 204 {
		t.Fatalf("first /init: %d", resp.StatusCode)
	}
	base := procStatusKB(t, e.Pid(), "VmRSS") / 1024
	rss := watchRSS(t, e.Pid())

	body := bigInitBody(16 << 20)
	const n = 30
	statuses := make([]int, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := net.Dial("tcp", hostPort(e.URL))
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			resp, b, err := rawExchange(c, "POST", "/init", map[string]string{"Content-Type": "application/json"},
				bytes.NewReader(body), int64(len(body)), i%2 == 1, 60*time.Second)
			if err != nil {
				errs[i] = err
				return
			}
			statuses[i] = resp.StatusCode
			if resp.StatusCode == 413 {
				var e struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				}
				if json.Unmarshal(b, &e) != nil || e.Code != 413 || e.Message == "" || resp.Header.Get("X-Envd-Version") == "" {
					errs[i] = &bodyErr{string(b)}
				}
			}
		}(i)
	}
	wg.Wait()
	peak := rss.Stop()
	t.Logf("envd RSS: %d MiB before, peak %d MiB during 30 × 16 MiB /init bodies", base, peak)
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Errorf("request %d (chunked %v): %v", i, i%2 == 1, errs[i])
			continue
		}
		if s := statuses[i]; s != 413 && s != 401 && s != 503 {
			t.Errorf("request %d (chunked %v): status %d, want 413, 401 or 503", i, i%2 == 1, s)
		}
	}
	if peak > 200 {
		t.Fatalf("envd RSS peaked at %d MiB (ceiling 200 MiB): bodies are buffered", peak)
	}

	// Wrong tokens in small bodies are still 401; the right one applies.
	resp, b := postJSON(t, e.URL+"/init", map[string]any{"accessToken": "wrong-token"}, nil)
	if resp.StatusCode != 401 || string(b) != "access token validation failed" {
		t.Fatalf("small wrong-token /init: %d %q", resp.StatusCode, b)
	}
	// A body just under the limit is accepted, both ways.
	okBody := []byte(`{"accessToken":"right-token","envVars":{"BIG":"` + strings.Repeat("x", initLimit-100) + `"}}`)
	for _, chunked := range []bool{false, true} {
		c, err := net.Dial("tcp", hostPort(e.URL))
		if err != nil {
			t.Fatal(err)
		}
		resp, b, err := rawExchange(c, "POST", "/init", nil, bytes.NewReader(okBody), int64(len(okBody)), chunked, 30*time.Second)
		c.Close()
		if err != nil || resp.StatusCode != 204 {
			t.Fatalf("/init of %d bytes (chunked %v): %v %v %q", len(okBody), chunked, resp, err, b)
		}
	}
	resp, b = do(t, "GET", e.URL+"/envs", nil, map[string]string{"X-Access-Token": "right-token"})
	var envs map[string]string
	if resp.StatusCode != 200 || json.Unmarshal(b, &envs) != nil || len(envs["BIG"]) != initLimit-100 {
		t.Fatalf("envs after a 4 MiB /init: %d, BIG of %d bytes", resp.StatusCode, len(envs["BIG"]))
	}
	if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("health")
	}
}

type bodyErr struct{ body string }

func (e *bodyErr) Error() string {
	return "413 without the JSON error body or X-Envd-Version: " + e.body
}

// TestHardening_InitOrchestratorRetries: the E2B orchestrator retries /init
// every 5 ms, each attempt with a short timeout, until one answers. While
// a slow chunked /init holds the init lock (bounded to 10 s), abandoned
// attempts must not pile up in envd, and an attempt succeeds once the lock
// is free.
func TestHardening_InitOrchestratorRetries(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	baseFDs := fdCount(e.Pid())

	// The slow sender: a chunked body of 40 bytes, one byte every 300 ms,
	// would need 12 s; envd cuts it after 10 s of reading.
	slowDone := make(chan int, 1)
	go func() {
		c, err := net.Dial("tcp", hostPort(e.URL))
		if err != nil {
			slowDone <- -1
			return
		}
		defer c.Close()
		body := []byte(`{"envVars":{"SLOW":"` + strings.Repeat("s", 20) + `"}}`)
		resp, _, err := rawExchange(c, "POST", "/init", nil, &slowReader{s: body, chunk: 1, interval: 300 * time.Millisecond}, int64(len(body)), true, 30*time.Second)
		if err != nil {
			slowDone <- -1
			return
		}
		slowDone <- resp.StatusCode
	}()
	time.Sleep(500 * time.Millisecond) // it holds the lock now

	start := time.Now()
	attempts := 0
	client := &http.Client{Timeout: 100 * time.Millisecond}
	var status int
	for time.Since(start) < 25*time.Second {
		attempts++
		req, _ := http.NewRequest("POST", e.URL+"/init", strings.NewReader(`{"envVars":{"ORCH":"1"},"accessToken":"orch-token"}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			status = resp.StatusCode
			if status == 204 {
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	slow := <-slowDone
	t.Logf("orchestrator loop: %d attempts, 204 after %v; slow chunked /init answered %d", attempts, took.Round(time.Millisecond), slow)
	if status != 204 {
		t.Fatalf("no attempt succeeded within %v (last status %d)", took, status)
	}
	if slow != 400 {
		t.Fatalf("the slow /init got %d, want 400 (body not received in time)", slow)
	}
	if took > 15*time.Second {
		t.Fatalf("the lock was held %v by a slow body (bound: 10 s)", took)
	}
	// The abandoned attempts are gone: descriptors back near the start.
	lcWait(t, "abandoned /init attempts to be cleaned up", func() bool { return fdCount(e.Pid()) < baseFDs+20 })
	resp, b := do(t, "GET", e.URL+"/envs", nil, map[string]string{"X-Access-Token": "orch-token"})
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"ORCH":"1"`) || strings.Contains(string(b), "SLOW") {
		t.Fatalf("envs: %d %s", resp.StatusCode, b)
	}
}

// TestHardening_InitStaleReported: an /init skipped by the stale-timestamp
// guard still answers 204 (E2B's orchestrator requires it) but says so with
// X-Envd-Init: stale and a warning in the log (D18).
func TestHardening_InitStaleReported(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	resp, _ := postJSON(t, e.URL+"/init", map[string]any{"timestamp": "2030-01-01T00:00:00Z"}, nil)
	if resp.StatusCode != 204 || resp.Header.Get("X-Envd-Init") != "" {
		t.Fatalf("first /init: %d X-Envd-Init=%q", resp.StatusCode, resp.Header.Get("X-Envd-Init"))
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	resp, _ = postJSON(t, e.URL+"/init", map[string]any{"accessToken": "real-token", "timestamp": now}, nil)
	if resp.StatusCode != 204 || resp.Header.Get("X-Envd-Init") != "stale" || resp.Header.Get("X-Envd-Version") == "" {
		t.Fatalf("stale /init: %d X-Envd-Init=%q %v", resp.StatusCode, resp.Header.Get("X-Envd-Init"), resp.Header)
	}
	// Not applied: no token is required.
	if resp, _ := do(t, "GET", e.URL+"/envs", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("the stale /init set a token: /envs %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.WaitLog(ctx, "init not applied: its timestamp is older than one already accepted"); err != nil {
		t.Fatalf("%v:\n%s", err, e.Log())
	}
	// A fresh one applies and carries no stale mark.
	resp, _ = postJSON(t, e.URL+"/init", map[string]any{"accessToken": "real-token", "timestamp": "2031-01-01T00:00:00Z"}, nil)
	if resp.StatusCode != 204 || resp.Header.Get("X-Envd-Init") != "" {
		t.Fatalf("fresh /init: %d X-Envd-Init=%q", resp.StatusCode, resp.Header.Get("X-Envd-Init"))
	}
	if resp, _ := do(t, "GET", e.URL+"/envs", nil, nil); resp.StatusCode != 401 {
		t.Fatalf("token not set by the fresh /init: /envs %d", resp.StatusCode)
	}
	// Without a timestamp the guard never applies.
	resp, _ = postJSON(t, e.URL+"/init", map[string]any{"accessToken": "real-token"}, nil)
	if resp.StatusCode != 204 || resp.Header.Get("X-Envd-Init") != "" {
		t.Fatalf("/init without timestamp: %d X-Envd-Init=%q", resp.StatusCode, resp.Header.Get("X-Envd-Init"))
	}
}

// TestHardening_SlowUnaryBodyCut: a Connect unary request whose small body
// trickles in is ended 30 s after envd starts reading it (D19), with
// deadline_exceeded; other requests are served meanwhile.
func TestHardening_SlowUnaryBodyCut(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	type result struct {
		resp *http.Response
		body []byte
		err  error
		took time.Duration
	}
	done := make(chan result, 1)
	go func() {
		c, err := net.Dial("tcp", hostPort(e.URL))
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		start := time.Now()
		// 100 bytes declared, one byte a second.
		body := &slowReader{s: []byte("{" + strings.Repeat(" ", 98) + "}"), chunk: 1, interval: time.Second}
		resp, b, err := rawExchange(c, "POST", "/process.Process/List", map[string]string{"Content-Type": "application/json"}, body, 100, false, 90*time.Second)
		done <- result{resp, b, err, time.Since(start)}
	}()
	time.Sleep(2 * time.Second)
	if resp, _ := postJSON(t, e.URL+"/process.Process/List", map[string]any{}, nil); resp.StatusCode != 200 {
		t.Fatalf("List while a slow one waits: %d", resp.StatusCode)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Logf("slow unary body answered %d after %v: %s", r.resp.StatusCode, r.took.Round(time.Millisecond), r.body)
	if r.resp.StatusCode != 504 || !strings.Contains(string(r.body), `"code":"deadline_exceeded"`) || !strings.Contains(string(r.body), "request body not received in time") {
		t.Fatalf("slow unary body: %d %s", r.resp.StatusCode, r.body)
	}
	if r.took < 29*time.Second || r.took > 45*time.Second {
		t.Fatalf("cut after %v, want about 30 s", r.took)
	}
}
