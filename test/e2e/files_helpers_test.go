package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"connectrpc.com/connect"

	"github.com/envd/envd/internal/envdtest"
)

// fsUserName is the unprivileged user of the filesystem tests.
const fsUserName = "envd-fs-user"

// fsRawHTTP never adds Accept-Encoding nor decompresses, so the tests see the
// bytes envd sends.
var fsRawHTTP = &http.Client{Transport: validated(&http.Transport{DisableCompression: true})}

// xfer issues a request with fsRawHTTP and returns the response and its body.
func xfer(t testing.TB, method, u string, body io.Reader, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := fsRawHTTP.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, u, err)
	}
	return resp, b
}

// filesURL builds /files?k=v&… (pairs of key and value).
func filesURL(e *envdtest.Envd, kv ...string) string {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Add(kv[i], kv[i+1])
	}
	return e.URL + "/files?" + q.Encode()
}

type filePart struct {
	field, filename string
	data            []byte
	noFilename      bool
}

// fileMultipart encodes parts like browsers and SDKs do.
func fileMultipart(t testing.TB, parts ...filePart) (*bytes.Buffer, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		cd := `form-data; name="` + p.field + `"`
		if !p.noFilename {
			cd += `; filename="` + strings.ReplaceAll(p.filename, `"`, `\"`) + `"`
		}
		h.Set("Content-Disposition", cd)
		h.Set("Content-Type", "application/octet-stream")
		w, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(p.data)
	}
	mw.Close()
	return &buf, mw.FormDataContentType()
}

type writtenEntry struct {
	Name     string            `json:"name"`
	Path     string            `json:"path"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata"`
}

// uploadOK uploads parts and expects 200 with a JSON array.
func uploadOK(t testing.TB, u string, hdr http.Header, parts ...filePart) []writtenEntry {
	t.Helper()
	body, ct := fileMultipart(t, parts...)
	h := http.Header{"Content-Type": {ct}}
	for k, v := range hdr {
		h[k] = v
	}
	resp, b := xfer(t, "POST", u, body, h)
	return decodeWritten(t, resp, b)
}

func decodeWritten(t testing.TB, resp *http.Response, b []byte) []writtenEntry {
	t.Helper()
	if resp.StatusCode != 200 {
		t.Fatalf("upload: %d %s", resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("upload content type %q", ct)
	}
	var out []writtenEntry
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("upload body %q: %v", b, err)
	}
	return out
}

// fileErr checks envd's JSON error: status, shape and exact message
// (a message ending in "*" is a prefix).
func fileErr(t testing.TB, resp *http.Response, body []byte, status int, msg string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Fatalf("error content type %q (body %q)", ct, body)
	}
	var e struct {
		Code    *int    `json:"code"`
		Message *string `json:"message"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Code == nil || e.Message == nil || *e.Code != status {
		t.Fatalf("error body %q: %v", body, err)
	}
	if p, ok := strings.CutSuffix(msg, "*"); ok {
		if !strings.HasPrefix(*e.Message, p) {
			t.Fatalf("message %q, want prefix %q", *e.Message, p)
		}
	} else if *e.Message != msg {
		t.Fatalf("message %q, want %q", *e.Message, msg)
	}
}

func fsBasic(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"))
}

// fsAs attaches a Basic-auth user to a Connect request.
func fsAs[T any](msg *T, user string) *connect.Request[T] {
	req := connect.NewRequest(msg)
	if user != "" {
		req.Header().Set("Authorization", fsBasic(user))
	}
	return req
}

func fsOwner(t testing.TB, p string) (uid, gid uint32) {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	s := st.Sys().(*syscall.Stat_t)
	return s.Uid, s.Gid
}

// fsNoTemps fails if envd left staging files in dir.
func fsNoTemps(t testing.TB, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".envd-tmp-") {
			t.Fatalf("staging file left in %s: %s", dir, e.Name())
		}
	}
}

func fsTemps(dir string) int {
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".envd-tmp-") {
			n++
		}
	}
	return n
}

// fsMountTmpfs mounts a fresh tmpfs with opts on a new directory; unmounted at
// the end of the test.
func fsMountTmpfs(t testing.TB, opts string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs (needs root and util-linux): %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// fsUserDir is a fresh directory in the user's home for files of the test user; cleaned up
// after the test.
func fsUserDir(t testing.TB, u envdtest.TestUser) string {
	t.Helper()
	d, err := os.MkdirTemp(u.Home, "e2e-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chown(d, int(u.UID), int(u.GID))
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
