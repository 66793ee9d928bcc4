package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/envd/envd/internal/handover"
	"github.com/envd/envd/internal/handover/handoverpb"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func serving(t *testing.T) (*Server, int) {
	t.Helper()
	port := freePort(t)
	s := New(port, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), slog.New(slog.DiscardHandler))
	if err := s.Listen(context.Background()); err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s, port
}

// get sends a request on a new connection and returns the response line,
// or an error when none arrives within d.
func get(port int, d time.Duration) (string, error) {
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// While acceptance is paused a client still connects (the listen backlog)
// and is served as soon as it resumes: paused is not refused.
func TestPauseAccept_ConnectionsWaitInTheBacklog(t *testing.T) {
	s, port := serving(t)
	if line, err := get(port, 5*time.Second); err != nil || line != "HTTP/1.1 200 OK" {
		t.Fatalf("before the pause: %q %v", line, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.PauseAccept(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("pausing an Accept in progress took %v", d)
	}
	if _, err := get(port, 300*time.Millisecond); err == nil {
		t.Fatal("a connection was served while acceptance was paused")
	}
	done := make(chan string, 1)
	go func() {
		line, err := get(port, 10*time.Second)
		if err != nil {
			line = err.Error()
		}
		done <- line
	}()
	time.Sleep(200 * time.Millisecond)
	select {
	case line := <-done:
		t.Fatalf("served while paused: %q", line)
	default:
	}
	s.ResumeAccept()
	select {
	case line := <-done:
		if line != "HTTP/1.1 200 OK" {
			t.Fatalf("after the resume: %q", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting connection was never served")
	}
	if line, err := get(port, 5*time.Second); err != nil || line != "HTTP/1.1 200 OK" {
		t.Fatalf("after the resume, a new connection: %q %v", line, err)
	}
}

// The listener a live upgrade carries is exported with its descriptor and
// adopted by a new server only when it is bound to the configured port.
func TestHandoverPart_ExportAndAdopt(t *testing.T) {
	s, port := serving(t)
	rec := &handoverpb.Record{}
	var fds handover.Carried
	if err := (HandoverPart{S: s}).Export(rec, &fds); err != nil {
		t.Fatal(err)
	}
	fd := int(rec.GetApiServer().GetListenerFd())
	if got := fds.FDs(); len(got) != 1 || got[0] != fd || fd < 3 {
		t.Fatalf("carried %v, record %d", got, fd)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	other := New(port, http.NotFoundHandler(), slog.New(slog.DiscardHandler))
	if err := other.AdoptListener(f); err == nil || !strings.Contains(err.Error(), "not "+fmt.Sprint(port)) {
		t.Fatalf("a listener on another port was adopted: %v", err)
	}
}
