package client_test

import (
	"bytes"
	"context"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/envd/envd/client"
	"github.com/envd/envd/internal/envdtest"
)

// Every goroutine the client starts (process receivers, watch receivers,
// upload body producers) ends with its operation.
func TestNoGoroutineLeak(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	tr := client.NewTransport()
	c, err := client.New(e.URL, client.WithHTTPClient(&http.Client{Transport: tr}))
	if err != nil {
		t.Fatal(err)
	}
	settle := func() int {
		tr.CloseIdleConnections()
		time.Sleep(50 * time.Millisecond)
		return runtime.NumGoroutine()
	}
	before := settle()
	dir := t.TempDir()
	for i := 0; i < 3; i++ {
		if _, err := c.Run(ctx(t), "echo", []string{"x"}); err != nil {
			t.Fatal(err)
		}
		p, err := c.Start(ctx(t), "sleep", []string{"30"})
		if err != nil {
			t.Fatal(err)
		}
		p.Close()
		_ = c.Kill(ctx(t), client.PID(p.PID()))
		sctx, cancel := context.WithCancel(ctx(t))
		q, err := c.Start(sctx, "sleep", []string{"30"}, client.WithTag("leak"))
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		q.Wait()
		_ = c.Kill(ctx(t), client.Tag("leak"))
		t.Log("watch")
		w, err := c.WatchDir(ctx(t), dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		t.Log("watch iterator")
		stopPoke := make(chan struct{})
		go func() {
			// The iterator's watch starts asynchronously: poke until it
			// has seen something.
			for {
				select {
				case <-stopPoke:
					return
				case <-time.After(20 * time.Millisecond):
					_, _ = c.WriteFile(context.Background(), dir+"/poke", nil)
				}
			}
		}()
		for range c.Watch(ctx(t), dir, nil) {
			break
		}
		close(stopPoke)
		t.Log("uploads")
		if _, err := c.Upload(ctx(t), dir+"/m", bytes.NewReader(make([]byte, 1<<20)), &client.UploadOptions{Multipart: true, Gzip: true}); err != nil {
			t.Fatal(err)
		}
		// Refused before the body is read: the producer must still end.
		_, err = c.Upload(ctx(t), dir+"/bad", strings.NewReader(strings.Repeat("x", 4<<20)), &client.UploadOptions{Gzip: true, Metadata: map[string]string{"k": "\x01"}})
		if err == nil {
			t.Fatal("bad metadata accepted")
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		after := settle()
		if after <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("%d goroutines before, %d after:\n%s", before, after, buf[:n])
		}
	}
}
