package client

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// FuzzBaseURL: any address either fails or yields a base URL that New can
// build clients on (no query, no trailing slash, a port).
func FuzzBaseURL(f *testing.F) {
	for _, s := range []string{"10.0.0.2", "h:1", "http://h", "https://[::1]:8/x/", "", "://", "http://h/?q", "h:99999", "[fe80::1%eth0]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		base, err := baseURL(addr)
		if err != nil {
			return
		}
		if strings.HasSuffix(base, "/") || strings.Contains(base, "?") || !strings.HasPrefix(base, "http") {
			t.Fatalf("baseURL(%q) = %q", addr, base)
		}
		if _, err := New(addr); err != nil {
			t.Fatalf("baseURL accepted %q but New failed: %v", addr, err)
		}
	})
}

// FuzzHTTPError: any error response becomes a *Error with the response's
// status and a non-empty message.
func FuzzHTTPError(f *testing.F) {
	f.Add(404, "application/json; charset=utf-8", `{"code":404,"message":"path '/x' does not exist"}`)
	f.Add(401, "application/json", `{"code":"unauthenticated","message":"invalid username: 'x'"}`)
	f.Add(400, "text/plain; charset=utf-8", "failed to install CA bundle: x")
	f.Add(503, "", "")
	f.Add(500, "application/json", `{"code":[1],"message":null}`)
	f.Fuzz(func(t *testing.T, status int, ctype, body string) {
		if status < 100 || status > 999 {
			return
		}
		resp := &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {ctype}}, Body: io.NopCloser(bytes.NewReader([]byte(body)))}
		err := httpError("GET /x", resp)
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("not an *Error: %v", err)
		}
		if e.Status != status || e.Message == "" || e.Op != "GET /x" {
			t.Fatalf("error %+v from %d %q %q", e, status, ctype, body)
		}
		_ = e.Error()
	})
}
