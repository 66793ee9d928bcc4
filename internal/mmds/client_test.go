package mmds

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawServer answers each connection with the next of replies (raw
// HTTP/1.1 responses), after reading the request head, and records the
// requests.
func rawServer(t *testing.T, replies ...string) (string, <-chan *http.Request) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	reqs := make(chan *http.Request, len(replies))
	go func() {
		for _, reply := range replies {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r, err := http.ReadRequest(bufio.NewReader(c))
			if err == nil {
				reqs <- r
			}
			_, _ = c.Write([]byte(reply))
			c.Close()
		}
	}()
	return ln.Addr().String(), reqs
}

// The client's own HTTP/1.1: the token request and the document request
// with their headers, a chunked document, one connection each.
func TestClient_RequestsAndChunkedDocument(t *testing.T) {
	addr, reqs := rawServer(t,
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ntoken",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"+
			"10\r\n{\"instanceID\":\"s\r\n"+"13\r\nb-1\",\"envID\":\"tpl\"}\r\n0\r\n\r\n")
	md, err := NewClient(addr).Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if md.InstanceID != "sb-1" || md.EnvID != "tpl" {
		t.Fatalf("metadata %+v", md)
	}
	put, get := <-reqs, <-reqs
	if put.Method != http.MethodPut || put.URL.Path != "/latest/api/token" || put.Header.Get("X-Metadata-Token-Ttl-Seconds") != "60" || put.Host != addr {
		t.Fatalf("token request %s %s %v", put.Method, put.URL, put.Header)
	}
	if get.Method != http.MethodGet || get.URL.Path != "/" || get.Header.Get("X-Metadata-Token") != "token" || get.Header.Get("Accept") != "application/json" || !get.Close {
		t.Fatalf("document request %s %s %v close=%v", get.Method, get.URL, get.Header, get.Close)
	}
}

// Refusals: a status other than 200, a token that cannot go back in a
// header, a document over 1 MiB, a service that never answers (bounded by
// the caller's context).
func TestClient_Refusals(t *testing.T) {
	addr, _ := rawServer(t, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
	if _, err := NewClient(addr).Fetch(context.Background()); err == nil || !strings.Contains(err.Error(), "status 401") {
		t.Fatalf("401: %v", err)
	}
	addr, _ = rawServer(t, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nab\r\nX: y")
	if _, err := NewClient(addr).Fetch(context.Background()); err == nil || !strings.Contains(err.Error(), "not a header value") {
		t.Fatalf("token with a line break: %v", err)
	}
	big := `{"instanceID":"` + strings.Repeat("x", 1<<20) + `"}`
	addr, _ = rawServer(t, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nt", "HTTP/1.1 200 OK\r\n\r\n"+big)
	if _, err := NewClient(addr).Fetch(context.Background()); err == nil {
		t.Fatal("a document over 1 MiB was read")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(5 * time.Second) // never answers
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	if _, err := NewClient(ln.Addr().String()).Fetch(ctx); err == nil || time.Since(began) > 3*time.Second {
		t.Fatalf("silent service: %v after %v", err, time.Since(began))
	}
}
