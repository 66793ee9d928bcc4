package server

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/envd/envd/internal/logging"
)

func TestRecover_PanicBecomes500AndIsLogged(t *testing.T) {
	var logBuf bytes.Buffer
	log := logging.New(&logBuf, logging.Options{JSON: true})
	h := Recover(log, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { panic("boom") }))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/x?signature=secret", nil))
	if w.Code != 500 {
		t.Fatalf("status %d", w.Code)
	}
	var body struct {
		Code    int
		Message string
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Code != 500 {
		t.Fatalf("body %q", w.Body.String())
	}
	if !strings.Contains(logBuf.String(), `"panic":"boom"`) || !strings.Contains(logBuf.String(), "goroutine") {
		t.Fatalf("panic not logged with stack: %s", logBuf.String())
	}
	if strings.Contains(logBuf.String(), "secret") {
		t.Fatal("query string logged")
	}
}

func TestRecover_AfterHeadersWrittenKeepsStatus(t *testing.T) {
	h := Recover(logging.Discard(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(202)
		panic("late")
	}))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
	if w.Code != 202 || w.Body.Len() != 0 {
		t.Fatalf("got %d %q", w.Code, w.Body.String())
	}
}

func TestCORS(t *testing.T) {
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(299) })
	h := CORS(next)
	do := func(method string, hdr map[string]string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, "/process.Process/Start", nil)
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	w := do("OPTIONS", map[string]string{"Origin": "https://app", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-access-token"})
	if w.Code != 204 || w.Header().Get("Access-Control-Allow-Origin") != "*" || w.Header().Get("Access-Control-Allow-Methods") != "POST" ||
		w.Header().Get("Access-Control-Allow-Headers") != "content-type,x-access-token" || w.Header().Get("Access-Control-Max-Age") != "7200" ||
		w.Header().Get("Vary") != "Origin, Access-Control-Request-Method, Access-Control-Request-Headers" {
		t.Fatalf("preflight %d %v", w.Code, w.Header())
	}
	if w.Header().Get("Access-Control-Allow-Credentials") != "" {
		t.Fatal("credentials allowed")
	}
	w = do("OPTIONS", map[string]string{"Origin": "https://app", "Access-Control-Request-Method": "CONNECT"})
	if w.Code != 204 || w.Header().Get("Access-Control-Allow-Origin") != "" || w.Header().Get("Access-Control-Allow-Methods") != "" {
		t.Fatalf("refused method preflight %d %v", w.Code, w.Header())
	}
	w = do("OPTIONS", map[string]string{"Origin": "https://app"})
	if w.Code != 299 {
		t.Fatal("OPTIONS without request method must fall through")
	}
	w = do("POST", map[string]string{"Origin": "https://app"})
	if w.Code != 299 || w.Header().Get("Access-Control-Allow-Origin") != "*" || w.Header().Get("Vary") != "Origin" ||
		!strings.Contains(w.Header().Get("Access-Control-Expose-Headers"), "Grpc-Status-Details-Bin") {
		t.Fatalf("actual request %v", w.Header())
	}
	w = do("POST", nil)
	if w.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Fatal("CORS headers without Origin")
	}
}
