package e2e

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// A web page cannot use a token-less envd (D18; issue 11 item 17). The
// requests are exactly what a browser sends for a page on another origin:
// a form submission (multipart or text/plain, no preflight), a fetch() in
// no-cors mode (text/plain POST), a CORS GET whose response the page may
// read, and the same from envd's own origin and from an opaque one.

// browserHeaders are the headers a browser adds to a request of a page at
// origin (Sec-Fetch-* as Chromium sends them; same-origin for a page envd
// served itself).
func browserHeaders(origin, mode string) map[string]string {
	site := "cross-site"
	if strings.HasPrefix(origin, "http://127.0.0.1:") {
		site = "same-origin"
	}
	return map[string]string{
		"Origin":         origin,
		"Sec-Fetch-Site": site,
		"Sec-Fetch-Mode": mode,
		"User-Agent":     "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
	}
}

func withHeader(h map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for a, b := range h {
		out[a] = b
	}
	return out
}

func TestHardening_WebPagesRefusedWithoutToken(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	target := filepath.Join(dir, "pwned.txt")
	existing := filepath.Join(dir, "secret.txt")
	must(t, os.WriteFile(existing, []byte("secret"), 0o644))

	for _, origin := range []string{"https://evil.example", "null", strings.TrimSuffix(e.URL, "/")} {
		form := browserHeaders(origin, "navigate")
		// <form method=post enctype=multipart/form-data action=…/files?path=…>
		body, ct := fileMultipart(t, filePart{field: "file", filename: "pwned.txt", data: []byte("owned")})
		resp, b := do(t, "POST", filesURL(e, "path", target), body, withHeader(form, "Content-Type", ct))
		jsonError(t, resp, b, 403, "requests from web pages (with an Origin header) are refused while envd has no access token")
		if _, err := os.Stat(target); err == nil {
			t.Fatalf("origin %s: a form wrote %s", origin, target)
		}
		// <form enctype=text/plain> and fetch(…, {mode: "no-cors"}) to the
		// other writing routes.
		plain := withHeader(browserHeaders(origin, "no-cors"), "Content-Type", "text/plain;charset=UTF-8")
		for path, payload := range map[string]string{
			"/init":                         `{"envVars":{"PWNED":"1"},"accessToken":"page-token"}`,
			"/snapshot/prepare":             ``,
			"/files/compose":                `{"source_paths":["` + existing + `"],"destination":"` + target + `"}`,
			"/process.Process/Start":        `{"process":{"cmd":"/bin/sh","args":["-c","touch ` + target + `"]}}`,
			"/filesystem.Filesystem/Remove": `{"path":"` + existing + `"}`,
		} {
			resp, b := do(t, "POST", e.URL+path, strings.NewReader(payload), plain)
			if resp.StatusCode != 403 {
				t.Fatalf("origin %s: text/plain POST %s: %d %q", origin, path, resp.StatusCode, b)
			}
		}
		// A CORS GET whose response the page could read.
		get := browserHeaders(origin, "cors")
		for _, u := range []string{filesURL(e, "path", existing), e.URL + "/envs", e.URL + "/metrics"} {
			resp, b := do(t, "GET", u, nil, get)
			if resp.StatusCode != 403 || strings.Contains(string(b), "secret") {
				t.Fatalf("origin %s: GET %s: %d %q", origin, u, resp.StatusCode, b)
			}
		}
		// /health stays readable (it says nothing), and preflights are
		// answered by CORS as before.
		resp, _ = do(t, "GET", e.URL+"/health", nil, get)
		if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
			t.Fatalf("origin %s: health %d %v", origin, resp.StatusCode, resp.Header)
		}
		resp, _ = do(t, "OPTIONS", e.URL+"/files", nil, withHeader(get, "Access-Control-Request-Method", "POST"))
		if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Methods") != "POST" {
			t.Fatalf("origin %s: preflight %d %v", origin, resp.StatusCode, resp.Header)
		}
	}
	time.Sleep(300 * time.Millisecond) // a Start that slipped through would have run by now
	if _, err := os.Stat(target); err == nil {
		t.Fatalf("%s written by a web page", target)
	}
	if b, err := os.ReadFile(existing); err != nil || string(b) != "secret" {
		t.Fatalf("%s after the page's requests: %q %v", existing, b, err)
	}
	resp, b := do(t, "GET", e.URL+"/envs", nil, nil)
	if resp.StatusCode != 200 || strings.Contains(string(b), "PWNED") {
		t.Fatalf("the page's /init applied: %d %s", resp.StatusCode, b)
	}
	if strings.Contains(e.Log(), "snapshot prepared") {
		t.Fatal("the page prepared a snapshot")
	}

	// Clients that are not browsers send no Origin and are served (the E2B
	// SDK in Node, the Wrenn host).
	resp, b = do(t, "GET", filesURL(e, "path", existing), nil, nil)
	if resp.StatusCode != 200 || string(b) != "secret" {
		t.Fatalf("download without Origin: %d %q", resp.StatusCode, b)
	}
}

// TestHardening_WebPagesWithTokenWork: the E2B SDK in a browser sends the
// token; with it a page is served as before, CORS headers included. The
// host-only routes refuse pages even then.
func TestHardening_WebPagesWithTokenWork(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"accessToken": "browser-token"}, nil); resp.StatusCode != 204 {
		t.Fatal("set token")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "f.txt")
	page := withHeader(browserHeaders("https://app.example", "cors"), "X-Access-Token", "browser-token")

	body, ct := fileMultipart(t, filePart{field: "file", filename: "f.txt", data: []byte("from the page")})
	resp, b := do(t, "POST", filesURL(e, "path", file), body, withHeader(page, "Content-Type", ct))
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("upload with token: %d %v %q", resp.StatusCode, resp.Header, b)
	}
	resp, b = do(t, "GET", filesURL(e, "path", file), nil, page)
	if resp.StatusCode != 200 || string(b) != "from the page" || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("download with token: %d %v %q", resp.StatusCode, resp.Header, b)
	}
	// A process through Connect JSON, as the SDK does.
	c := e.Process(connect.WithProtoJSON())
	req := connect.NewRequest(&pb.StartRequest{Process: procSh("echo page")})
	for k, v := range page {
		req.Header().Set(k, v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := c.Start(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for s.Receive() {
		out.Write(s.Msg().GetEvent().GetData().GetStdout())
	}
	if s.Err() != nil || out.String() != "page\n" || s.ResponseHeader().Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("Start with token: %v %q %v", s.Err(), out.String(), s.ResponseHeader())
	}
	// Without the token the page gets 401 as any client would.
	resp, _ = do(t, "GET", e.URL+"/envs", nil, browserHeaders("https://app.example", "cors"))
	if resp.StatusCode != 401 {
		t.Fatalf("envs without token: %d", resp.StatusCode)
	}
	for _, path := range []string{"/init", "/snapshot/prepare"} {
		resp, b := do(t, "POST", e.URL+path, strings.NewReader(`{"accessToken":"browser-token"}`), withHeader(page, "Content-Type", "text/plain"))
		jsonError(t, resp, b, 403, "this endpoint is for the host only and refuses requests from web pages (with an Origin header)")
	}
	if strings.Contains(e.Log(), "snapshot prepared") {
		t.Fatal("a page prepared a snapshot")
	}
	// The host, without Origin, still may.
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"accessToken": "browser-token"}, nil); resp.StatusCode != 204 {
		t.Fatal("host /init")
	}
}

// A file a guest process wrote is never served as a page of envd's origin:
// HTML downloads are sandboxed and not sniffed (D18), in both codings.
func TestHardening_DownloadsNeverRunAsPages(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	p := filepath.Join(t.TempDir(), "page.html")
	if err := os.WriteFile(p, []byte("<html><script>fetch('/files?path=/etc/passwd')</script></html>"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, enc := range []string{"identity", "gzip"} {
		resp, _ := xfer(t, http.MethodGet, filesURL(e, "path", p), nil, http.Header{"Accept-Encoding": {enc}})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d", enc, resp.StatusCode)
		}
		if got := resp.Header.Get("Content-Security-Policy"); got != "sandbox" {
			t.Errorf("%s: Content-Security-Policy %q, want sandbox", enc, got)
		}
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s: X-Content-Type-Options %q, want nosniff", enc, got)
		}
	}
}
