package server

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"testing"
	"time"
)

// A stream whose client stops reading is ended by its write deadline
// without touching the other streams of its HTTP/2 connection.
func TestSetWriteDeadline_H2ResetsOnlyTheStalledStream(t *testing.T) {
	stalled := make(chan error, 1)
	chunk := make([]byte, 64<<10)
	_, _ = rand.Read(chunk)
	mux := http.NewServeMux()
	mux.HandleFunc("/stall", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_ = http.NewResponseController(w).Flush()
		for {
			if err := SetWriteDeadline(r.Context(), time.Now().Add(300*time.Millisecond)); err != nil {
				stalled <- err
				return
			}
			if _, err := w.Write(chunk); err != nil {
				stalled <- err
				return
			}
		}
	})
	mux.HandleFunc("/fast", func(w http.ResponseWriter, r *http.Request) {
		for range 16 {
			_, _ = w.Write(chunk)
		}
	})
	s := New(0, mux, slog.New(slog.DiscardHandler))
	if err := s.Listen(context.Background()); err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	base := "http://" + s.Addr().String()

	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: protos}}

	resp, err := client.Get(base + "/stall")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close() // never read: the stream stalls on flow control
	if resp.ProtoMajor != 2 {
		t.Fatalf("want HTTP/2, got %s", resp.Proto)
	}
	select {
	case err := <-stalled:
		if err == nil {
			t.Fatal("stalled write returned no error")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the write deadline did not end the stalled stream")
	}

	// The connection survived: the next request reuses it and completes.
	var reused bool
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, base+"/fast", nil)
	fast, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, fast.Body)
	fast.Body.Close()
	if err != nil || n != 16*int64(len(chunk)) {
		t.Fatalf("other stream: %d bytes, %v", n, err)
	}
	if !reused {
		t.Fatal("the stalled stream's connection was not reused: it was closed")
	}
}

func TestSetWriteDeadline_WithoutServerContext(t *testing.T) {
	if err := SetWriteDeadline(context.Background(), time.Now()); err != ErrNoResponseController {
		t.Fatalf("got %v", err)
	}
}
