package auth

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestRefuseBrowsers(t *testing.T) {
	var tok Token
	h := RefuseBrowsers(&tok, []string{"/init", "/snapshot/prepare"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(299) }))
	do := func(method, path, origin string) int {
		r := httptest.NewRequest(method, path, nil)
		if origin != "-" {
			r.Header.Set("Origin", origin)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	cases := []struct {
		method, path, origin string
		noToken, withToken   int
	}{
		{"POST", "/files", "https://evil.example", 403, 299},
		{"POST", "/files", "null", 403, 299},
		{"POST", "/files", "", 403, 299}, // present though empty
		{"GET", "/files", "https://evil.example", 403, 299},
		{"POST", "/process.Process/Start", "https://evil.example", 403, 299},
		{"GET", "/health", "https://evil.example", 299, 299},
		{"HEAD", "/health", "https://evil.example", 299, 299},
		{"POST", "/health", "https://evil.example", 403, 299},
		{"OPTIONS", "/files", "https://evil.example", 299, 299},
		{"POST", "/init", "https://evil.example", 403, 403},
		{"POST", "//init", "https://evil.example", 403, 403},
		{"POST", "/snapshot/prepare", "https://app.example", 403, 403},
		{"POST", "/files", "-", 299, 299}, // no Origin: not a browser
		{"POST", "/init", "-", 299, 299},
	}
	for _, c := range cases {
		if got := do(c.method, c.path, c.origin); got != c.noToken {
			t.Errorf("no token: %s %s Origin %q: %d, want %d", c.method, c.path, c.origin, got, c.noToken)
		}
	}
	tok.Set([]byte("t"))
	for _, c := range cases {
		if got := do(c.method, c.path, c.origin); got != c.withToken {
			t.Errorf("token set: %s %s Origin %q: %d, want %d", c.method, c.path, c.origin, got, c.withToken)
		}
	}
}
