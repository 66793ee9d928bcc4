package e2e

import (
	"bytes"
	"compress/gzip"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/envd/envd/internal/envdtest"
)

func TestDownload_IdentityHeadersAndHEAD(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	p := filepath.Join(dir, "hello.txt")
	os.WriteFile(p, []byte("hello world\n"), 0o644)
	mt := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	os.Chtimes(p, mt, mt)

	for _, method := range []string{"GET", "HEAD"} {
		resp, body := xfer(t, method, filesURL(e, "path", p), nil, nil)
		h := resp.Header
		if resp.StatusCode != 200 || h.Get("Content-Length") != "12" || h.Get("Accept-Ranges") != "bytes" ||
			h.Get("Content-Type") != "text/plain; charset=utf-8" || h.Get("Vary") != "Accept-Encoding" ||
			h.Get("Content-Disposition") != "inline; filename=hello.txt" || h.Get("Last-Modified") != "Thu, 02 Jan 2025 03:04:05 GMT" ||
			h.Get("Content-Encoding") != "" || h.Get("Cache-Control") != "" {
			t.Fatalf("%s: %d %v", method, resp.StatusCode, h)
		}
		if method == "GET" && string(body) != "hello world\n" || method == "HEAD" && len(body) != 0 {
			t.Fatalf("%s body %q", method, body)
		}
	}
	// An empty file is recognisable by its length.
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	resp, body := xfer(t, "GET", filesURL(e, "path", empty), nil, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Length") != "0" || len(body) != 0 {
		t.Fatalf("empty: %d %v", resp.StatusCode, resp.Header)
	}
}

func TestDownload_GzipStreamed(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	p := filepath.Join(t.TempDir(), "data.json")
	content := bytes.Repeat([]byte(`{"k":"value"}`), 100000)
	os.WriteFile(p, content, 0o644)
	for _, ae := range []string{"gzip", "gzip, deflate, br", "*, identity;q=0"} {
		resp, body := xfer(t, "GET", filesURL(e, "path", p), nil, http.Header{"Accept-Encoding": {ae}})
		if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" || resp.Header.Get("Content-Length") != "" ||
			resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Vary") != "Accept-Encoding" {
			t.Fatalf("%s: %d %v", ae, resp.StatusCode, resp.Header)
		}
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(got, content) {
			t.Fatalf("%s: gunzip %d bytes, %v", ae, len(got), err)
		}
	}
	resp, body := xfer(t, "HEAD", filesURL(e, "path", p), nil, http.Header{"Accept-Encoding": {"gzip"}})
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" || len(body) != 0 || resp.Header.Get("Content-Length") != "" {
		t.Fatalf("HEAD gzip %d %v", resp.StatusCode, resp.Header)
	}
	// Go's default transport negotiates gzip and decompresses, as the
	// Wrenn host does.
	r, err := http.Get(filesURL(e, "path", p, "username", "root"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || !r.Uncompressed || !bytes.Equal(got, content) {
		t.Fatalf("transparent gzip: %d %v %d", r.StatusCode, r.Uncompressed, len(got))
	}
	// Unknown extension → application/octet-stream when compressed.
	bin := filepath.Join(filepath.Dir(p), "blob.unknownext")
	os.WriteFile(bin, []byte("xyz"), 0o644)
	resp, _ = xfer(t, "GET", filesURL(e, "path", bin), nil, http.Header{"Accept-Encoding": {"gzip"}})
	if resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("gzip content type %q", resp.Header.Get("Content-Type"))
	}
}

func TestDownload_AcceptEncodingMatrix(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	p := filepath.Join(t.TempDir(), "f.txt")
	os.WriteFile(p, []byte("0123456789"), 0o644)
	cases := []struct {
		accept string
		rng    bool
		want   string // "identity", "gzip" or "406"
	}{
		{"gzip", false, "gzip"},
		{"gzip;q=0.5, identity", false, "identity"},
		{"br", false, "identity"},
		{"br, identity;q=0", false, "406"},
		{"*", false, "identity"},
		{"*, identity;q=0", false, "gzip"},
		{"identity;q=0, gzip;q=0", false, "406"},
		{"gzip;q=1, *;q=0", false, "gzip"},
		{"gzip;q=1, *;q=0", true, "406range"},
		{"gzip", true, "identity"},
	}
	for _, c := range cases {
		h := http.Header{"Accept-Encoding": {c.accept}}
		if c.rng {
			h.Set("Range", "bytes=0-1")
		}
		resp, body := xfer(t, "GET", filesURL(e, "path", p), nil, h)
		switch c.want {
		case "406":
			fileErr(t, resp, body, 406, "error parsing Accept-Encoding: no acceptable encoding found, supported: [gzip]")
		case "406range":
			fileErr(t, resp, body, 406, "identity encoding not acceptable for Range or conditional request")
		case "gzip":
			if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" {
				t.Errorf("%q: %d %v", c.accept, resp.StatusCode, resp.Header)
			}
		default:
			if resp.Header.Get("Content-Encoding") != "" || (resp.StatusCode != 200 && resp.StatusCode != 206) {
				t.Errorf("%q range=%v: %d %v", c.accept, c.rng, resp.StatusCode, resp.Header)
			}
		}
	}
}

func TestDownload_Ranges(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	p := filepath.Join(t.TempDir(), "r.txt")
	os.WriteFile(p, []byte("0123456789"), 0o644)
	u := filesURL(e, "path", p)

	resp, body := xfer(t, "GET", u, nil, http.Header{"Range": {"bytes=2-4"}})
	if resp.StatusCode != 206 || string(body) != "234" || resp.Header.Get("Content-Range") != "bytes 2-4/10" || resp.Header.Get("Content-Length") != "3" {
		t.Fatalf("single: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	resp, body = xfer(t, "GET", u, nil, http.Header{"Range": {"bytes=-3"}})
	if resp.StatusCode != 206 || string(body) != "789" {
		t.Fatalf("suffix: %d %q", resp.StatusCode, body)
	}
	resp, body = xfer(t, "GET", u, nil, http.Header{"Range": {"bytes=0-0,8-"}})
	mt, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != 206 || mt != "multipart/byteranges" {
		t.Fatalf("multi: %d %v", resp.StatusCode, resp.Header)
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	var got []string
	for {
		part, err := mr.NextPart()
		if err != nil {
			break
		}
		b, _ := io.ReadAll(part)
		got = append(got, part.Header.Get("Content-Range")+"="+string(b))
	}
	if strings.Join(got, ";") != "bytes 0-0/10=0;bytes 8-9/10=89" {
		t.Fatalf("multi parts %v", got)
	}
	resp, _ = xfer(t, "GET", u, nil, http.Header{"Range": {"bytes=50-60"}})
	if resp.StatusCode != 416 || resp.Header.Get("Content-Range") != "bytes */10" {
		t.Fatalf("unsatisfiable: %d %v", resp.StatusCode, resp.Header)
	}
}

func TestDownload_Conditionals(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	p := filepath.Join(t.TempDir(), "c.txt")
	os.WriteFile(p, []byte("conditional"), 0o644)
	mt := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	os.Chtimes(p, mt, mt)
	u := filesURL(e, "path", p)
	lm := mt.Format(http.TimeFormat)
	older := mt.Add(-time.Hour).Format(http.TimeFormat)
	newer := mt.Add(time.Hour).Format(http.TimeFormat)
	cases := []struct {
		hdr    http.Header
		status int
	}{
		{http.Header{"If-Modified-Since": {lm}}, 304},
		{http.Header{"If-Modified-Since": {newer}}, 304},
		{http.Header{"If-Modified-Since": {older}}, 200},
		{http.Header{"If-Unmodified-Since": {older}}, 412},
		{http.Header{"If-Unmodified-Since": {lm}}, 200},
		{http.Header{"If-None-Match": {"*"}}, 304},
		{http.Header{"If-None-Match": {`"abc"`}}, 200},
		{http.Header{"If-Match": {`"abc"`}}, 412},
		{http.Header{"If-Match": {"*"}}, 200},
		{http.Header{"If-Range": {older}, "Range": {"bytes=0-1"}}, 200},
		{http.Header{"If-Range": {lm}, "Range": {"bytes=0-1"}}, 206},
	}
	for _, c := range cases {
		resp, body := xfer(t, "GET", u, nil, c.hdr)
		if resp.StatusCode != c.status {
			t.Errorf("%v: %d %q", c.hdr, resp.StatusCode, body)
		}
		if c.status == 200 && string(body) != "conditional" {
			t.Errorf("%v: body %q", c.hdr, body)
		}
	}
	// Conditionals force identity even when gzip is offered.
	resp, _ := xfer(t, "GET", u, nil, http.Header{"If-Modified-Since": {older}, "Accept-Encoding": {"gzip"}})
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "" || resp.Header.Get("Content-Length") != "11" {
		t.Fatalf("conditional with gzip: %d %v", resp.StatusCode, resp.Header)
	}
}

func TestDownload_ContentTypeAndDisposition(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	png := append([]byte("\x89PNG\r\n\x1a\n"), make([]byte, 32)...)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		path, ctype, disp string
	}{
		{write("noext", png), "image/png", "inline; filename=noext"},
		{write("my document.pdf", []byte("%PDF")), "application/pdf", `inline; filename="my document.pdf"`},
		{write(`a"b.txt`, []byte("q")), "text/plain; charset=utf-8", `inline; filename="a\"b.txt"`},
		{write("文档.pdf", []byte("x")), "application/pdf", "inline; filename*=utf-8''%E6%96%87%E6%A1%A3.pdf"},
	}
	for _, c := range cases {
		resp, _ := xfer(t, "GET", filesURL(e, "path", c.path), nil, nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != c.ctype || resp.Header.Get("Content-Disposition") != c.disp {
			t.Errorf("%s: %d %q %q", c.path, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition"))
		}
	}
	// The type comes from the raw path parameter: through a symlink named
	// .txt the target's .pdf does not matter; the disposition names the
	// resolved path's base name (the link's).
	os.Symlink(filepath.Join(dir, "my document.pdf"), filepath.Join(dir, "link.txt"))
	resp, _ := xfer(t, "GET", filesURL(e, "path", filepath.Join(dir, "link.txt")), nil, nil)
	if resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" || resp.Header.Get("Content-Disposition") != "inline; filename=link.txt" {
		t.Fatalf("symlink: %v", resp.Header)
	}
}

func TestDownload_Errors(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	syscall.Mkfifo(fifo, 0o644)
	missing := filepath.Join(dir, "missing.txt")
	cases := []struct {
		kv     []string
		status int
		msg    string
	}{
		{[]string{"path", missing}, 404, "path '" + missing + "' does not exist"},
		{[]string{"path", dir}, 400, "path '" + dir + "' is a directory"},
		{[]string{"path", "/dev/null"}, 400, "path '/dev/null' is not a regular file"},
		{[]string{"path", fifo}, 400, "path '" + fifo + "' is not a regular file"},
		{[]string{"path", "~bob/x"}, 400, "error expanding and resolving path '~bob/x': failed to expand path '~bob/x' for user 'root': cannot expand user-specific home dir"},
		{[]string{"path", "/etc/hostname", "username", "no-such-user-xyz"}, 401, "error looking up user 'no-such-user-xyz': unknown user no-such-user-xyz"},
		// An empty path is the default workdir if set, else home: a directory.
		{[]string{"path", ""}, 400, "path '/root' is a directory"},
		{nil, 400, "path '/root' is a directory"},
		{[]string{"path", filepath.Join(dir, "fifo", "x")}, 404, "path '" + filepath.Join(dir, "fifo", "x") + "' does not exist"},
		{[]string{"path", "/etc/hostname", "signature_expiration", "soon"}, 400, `Invalid format for parameter signature_expiration: *`},
	}
	for _, c := range cases {
		resp, body := xfer(t, "GET", filesURL(e, c.kv...), nil, nil)
		fileErr(t, resp, body, c.status, c.msg)
		resp, body = xfer(t, "HEAD", filesURL(e, c.kv...), nil, nil)
		if resp.StatusCode != c.status || len(body) != 0 {
			t.Errorf("HEAD %v: %d %q", c.kv, resp.StatusCode, body)
		}
	}
	// An unknown Basic-auth user is refused even on /files (Connect JSON).
	resp, body := xfer(t, "GET", filesURL(e, "path", "/etc/hostname"), nil, http.Header{"Authorization": {fsBasic("ghost-user-xyz")}})
	if resp.StatusCode != 401 || !strings.Contains(string(body), `"code":"unauthenticated"`) {
		t.Fatalf("bad basic user: %d %s", resp.StatusCode, body)
	}
	// Wrong method on /files: 405 listing the allowed ones.
	resp, _ = xfer(t, "PUT", filesURL(e), nil, nil)
	if resp.StatusCode != 405 || !strings.Contains(resp.Header.Get("Allow"), "POST") || !strings.Contains(resp.Header.Get("Allow"), "GET") {
		t.Fatalf("PUT: %d %v", resp.StatusCode, resp.Header)
	}
}

func TestDownload_PseudoFileStreamsWithoutLength(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	for _, p := range []string{"/proc/cpuinfo", "/proc/self/status"} {
		resp, body := xfer(t, "GET", filesURL(e, "path", p), nil, http.Header{"Range": {"bytes=0-3"}})
		if resp.StatusCode != 200 || resp.Header.Get("Content-Length") != "" || len(body) < 10 ||
			resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Fatalf("%s: %d %v %d bytes", p, resp.StatusCode, resp.Header, len(body))
		}
		if len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
			t.Fatalf("%s: not streamed: %v", p, resp.TransferEncoding)
		}
	}
	resp, body := xfer(t, "GET", filesURL(e, "path", "/proc/cpuinfo"), nil, http.Header{"Accept-Encoding": {"gzip"}})
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("gzip pseudo: %d %v", resp.StatusCode, err)
	}
	if b, _ := io.ReadAll(zr); !bytes.Contains(b, []byte("processor")) {
		t.Fatal("gzip pseudo content")
	}
}

func TestDownload_UserPathsAndDefaultWorkdir(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{})
	d := fsUserDir(t, u)
	os.WriteFile(filepath.Join(d, "mine.txt"), []byte("mine"), 0o644)
	rel := filepath.Base(d) + "/mine.txt"
	for _, kv := range [][]string{
		{"path", rel, "username", fsUserName},
		{"path", "~/" + rel, "username", fsUserName},
		{"path", "~/./x/../" + rel, "username", fsUserName},
		{"path", filepath.Join(d, "mine.txt")},
	} {
		resp, body := xfer(t, "GET", filesURL(e, kv...), nil, nil)
		if resp.StatusCode != 200 || string(body) != "mine" {
			t.Fatalf("%v: %d %s", kv, resp.StatusCode, body)
		}
	}
	// Relative paths are relative to the home, never to the workdir; an
	// empty path is the workdir.
	resp, _ := postJSON(t, e.URL+"/init", map[string]any{"defaultWorkdir": d, "defaultUser": fsUserName}, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("init %d", resp.StatusCode)
	}
	resp, body := xfer(t, "GET", filesURL(e), nil, nil)
	fileErr(t, resp, body, 400, "path '"+d+"' is a directory")
	resp, body = xfer(t, "GET", filesURL(e, "path", rel), nil, nil)
	if resp.StatusCode != 200 || string(body) != "mine" {
		t.Fatalf("default user relative: %d %s", resp.StatusCode, body)
	}
	resp, body = xfer(t, "GET", filesURL(e, "path", "mine.txt"), nil, nil)
	fileErr(t, resp, body, 404, "path '"+filepath.Join(u.Home, "mine.txt")+"' does not exist")
}
