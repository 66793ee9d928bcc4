package api

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/envd/envd/internal/auth"
	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/identity"
	"github.com/envd/envd/internal/logging"
)

func filesServer(t *testing.T, stall time.Duration) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	f := &Files{Token: &auth.Token{}, Env: defaults.New(identity.Self().Name), Log: logging.Discard(), UploadStall: stall}
	f.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// A client that stops sending mid-body gets 408 after the stall timeout,
// its connection is closed, and the previous file is untouched.
func TestUpload_StalledClientGets408(t *testing.T) {
	srv := filesServer(t, time.Second)
	dir := t.TempDir()
	target := filepath.Join(dir, "f")
	if err := os.WriteFile(target, []byte("previous"), 0o644); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /files?path=%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\npartial", target)
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Code    int
		Message string
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 408 || body.Code != 408 || body.Message != "upload stalled: no data received for 1s" || !resp.Close {
		t.Fatalf("%d %+v close=%v", resp.StatusCode, body, resp.Close)
	}
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Fatalf("answered after %v, before the stall timeout", waited)
	}
	if b, _ := os.ReadFile(target); string(b) != "previous" {
		t.Fatalf("previous content damaged: %q", b)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries", len(ents))
	}
	// The server closes the connection.
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatalf("connection still open (read %d bytes)", n)
	}
}

// A slow but steady client is not cut off: every byte resets the timer.
func TestUpload_SlowClientIsNotStalled(t *testing.T) {
	srv := filesServer(t, time.Second)
	target := filepath.Join(t.TempDir(), "slow")
	pr, pw := ioPipe()
	go func() {
		for i := 0; i < 5; i++ {
			pw.Write([]byte("x"))
			time.Sleep(400 * time.Millisecond)
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", srv.URL+"/files?path="+target, pr)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if b, _ := os.ReadFile(target); string(b) != "xxxxx" {
		t.Fatalf("%q", b)
	}
}

func ioPipe() (*os.File, *os.File) {
	r, w, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	return r, w
}

// Over h2c the stall is detected per stream (the read deadline of the
// request, not of the shared connection).
func TestUpload_StalledClientGets408OverH2C(t *testing.T) {
	mux := http.NewServeMux()
	(&Files{Token: &auth.Token{}, Env: defaults.New(identity.Self().Name), Log: logging.Discard(), UploadStall: time.Second}).Register(mux)
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	target := filepath.Join(t.TempDir(), "h2")
	pr, pw := ioPipe()
	defer pw.Close()
	pw.Write([]byte("some bytes, then silence"))
	req, _ := http.NewRequest("POST", srv.URL+"/files?path="+target, pr)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Message string }
	json.NewDecoder(resp.Body).Decode(&body)
	if resp.ProtoMajor != 2 || resp.StatusCode != 408 || body.Message != "upload stalled: no data received for 1s" {
		t.Fatalf("%s %d %+v", resp.Proto, resp.StatusCode, body)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatal("stalled upload left a file")
	}
}
