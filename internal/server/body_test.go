package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// bodyServer serves one handler through the package's chain on loopback.
func bodyServer(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	s := New(0, h, slog.New(slog.DiscardHandler))
	if err := s.Listen(context.Background()); err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return s.Addr().String()
}

// rawPost sends a request head declaring length bytes, then body, and
// returns the status line's response.
func rawPost(t *testing.T, addr string, length int, body string, wait time.Duration) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", length, body)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// A body that does not arrive within the bound fails with ErrBodyTimeout.
func TestBoundBodyRead_SlowBodyTimesOut(t *testing.T) {
	addr := bodyServer(t, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		_, err := io.ReadAll(BoundBodyRead(r.Context(), r.Body, 300*time.Millisecond))
		if !errors.Is(err, ErrBodyTimeout) {
			http.Error(w, fmt.Sprintf("read error %v", err), 500)
			return
		}
		fmt.Fprintf(w, "timed out after %d ms", time.Since(start).Milliseconds())
	})
	resp, body := rawPost(t, addr, 100, "{", 5*time.Second)
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "timed out after") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

// Once the body is in, the bound is lifted: a handler that works longer
// than it keeps its request context.
func TestBoundBodyRead_LiftedAfterBody(t *testing.T) {
	addr := bodyServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(BoundBodyRead(r.Context(), r.Body, 200*time.Millisecond))
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		select {
		case <-r.Context().Done():
			http.Error(w, "context ended: "+context.Cause(r.Context()).Error(), 500)
		case <-time.After(600 * time.Millisecond):
			fmt.Fprintf(w, "ok %s", b)
		}
	})
	resp, body := rawPost(t, addr, 2, "{}", 5*time.Second)
	if resp.StatusCode != 200 || body != "ok {}" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}
