// Package mmdstest is a fake Firecracker metadata service (MMDS V2) for
// tests: PUT /latest/api/token hands out a session token, GET / answers the
// current document to requests that carry it.
package mmdstest

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
)

// Server is a running fake.
type Server struct {
	*httptest.Server
	mu          sync.Mutex
	doc         map[string]any
	tokens      map[string]bool
	TokenPuts   atomic.Int64
	Gets        atomic.Int64
	BadTokenHit atomic.Int64
}

// New starts a fake that serves doc (nil: an empty object).
func New(doc map[string]any) *Server {
	s := &Server{doc: doc, tokens: map[string]bool{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// NewOn serves the fake on ln (e.g. a listener made inside a network
// namespace), which it takes over.
func NewOn(ln net.Listener, doc map[string]any) *Server {
	s := &Server{doc: doc, tokens: map[string]bool{}}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	_ = s.Server.Listener.Close()
	s.Server.Listener = ln
	s.Server.Start()
	return s
}

// Set replaces the document.
func (s *Server) Set(doc map[string]any) {
	s.mu.Lock()
	s.doc = doc
	s.mu.Unlock()
}

// HostPort is the fake's address as host:port.
func (s *Server) HostPort() string { return s.Listener.Addr().String() }

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
		if r.Header.Get("X-metadata-token-ttl-seconds") == "" {
			http.Error(w, "missing ttl", http.StatusBadRequest)
			return
		}
		n := s.TokenPuts.Add(1)
		tok := "tok-" + string(rune('a'+n%26))
		s.mu.Lock()
		s.tokens[tok] = true
		s.mu.Unlock()
		_, _ = w.Write([]byte(tok))
	case r.Method == http.MethodGet && r.URL.Path == "/":
		s.mu.Lock()
		ok := s.tokens[r.Header.Get("X-metadata-token")]
		doc := s.doc
		s.mu.Unlock()
		if !ok {
			s.BadTokenHit.Add(1)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		s.Gets.Add(1)
		if doc == nil {
			doc = map[string]any{}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(doc)
	default:
		http.NotFound(w, r)
	}
}
