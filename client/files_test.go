package client_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/client"
	"github.com/envd/envd/internal/envdtest"
)

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestUpload_AllFormats(t *testing.T) {
	_, c := start(t)
	dir := t.TempDir()
	data := append(bytes.Repeat([]byte("compressible "), 100_000), randomBytes(t, 300_000)...)
	cases := []struct {
		name string
		opts client.UploadOptions
	}{
		{"raw", client.UploadOptions{}},
		{"raw-sized", client.UploadOptions{Size: int64(len(data))}},
		{"raw-gzip", client.UploadOptions{Gzip: true}},
		{"multipart", client.UploadOptions{Multipart: true}},
		{"multipart-gzip", client.UploadOptions{Multipart: true, Gzip: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var last, calls atomic.Int64
			opts := tc.opts
			opts.Progress = func(done, total int64) {
				calls.Add(1)
				last.Store(done)
				if want := tc.opts.Size; (want > 0 && total != want) || (want == 0 && total != -1) {
					t.Errorf("progress total %d", total)
				}
			}
			target := filepath.Join(dir, tc.name, "file.bin")
			w, err := c.Upload(ctx(t), target, bytes.NewReader(data), &opts)
			if err != nil {
				t.Fatal(err)
			}
			if w.Path != target || w.Name != "file.bin" || w.Type != "file" {
				t.Fatalf("written %+v", w)
			}
			got, err := os.ReadFile(target)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("file content differs (%d bytes, %v)", len(got), err)
			}
			if last.Load() != int64(len(data)) || calls.Load() == 0 {
				t.Fatalf("progress ended at %d after %d calls", last.Load(), calls.Load())
			}
		})
	}
}

func TestUpload_OwnerMetadataAndErrors(t *testing.T) {
	_, c := start(t)
	u := envdtest.EnsureUser(t, "envdclient")
	uc := c.As(u.Name)
	t.Cleanup(func() { os.RemoveAll(filepath.Join(u.Home, "up")) })
	w, err := uc.Upload(ctx(t), "~/up/meta.txt", strings.NewReader("hello"), &client.UploadOptions{Metadata: map[string]string{"Owner-Team": "blue", "k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(u.Home, "up", "meta.txt")
	if w.Path != want || w.Metadata["owner-team"] != "blue" || w.Metadata["k"] != "v" {
		t.Fatalf("written %+v", w)
	}
	for _, p := range []string{want, filepath.Dir(want)} {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != u.UID || st.Gid != u.GID {
			t.Fatalf("%s owned by %d:%d, want %d:%d", p, st.Uid, st.Gid, u.UID, u.GID)
		}
	}
	e, err := uc.Stat(ctx(t), "~/up/meta.txt")
	if err != nil {
		t.Fatal(err)
	}
	if e.Metadata["owner-team"] != "blue" || e.Owner != u.Name || e.Size != 5 {
		t.Fatalf("stat %+v", e)
	}
	// Bad metadata is refused and nothing is written.
	_, err = uc.Upload(ctx(t), "~/up/bad.txt", strings.NewReader("x"), &client.UploadOptions{Metadata: map[string]string{"k": "caf\u00e9"}})
	wantError(t, err, connect.CodeInvalidArgument, 400, "")
	if _, err := os.Stat(filepath.Join(u.Home, "up", "bad.txt")); !os.IsNotExist(err) {
		t.Fatalf("bad upload left a file: %v", err)
	}
	_, err = c.Upload(ctx(t), "", strings.NewReader("x"), nil)
	wantError(t, err, connect.CodeInvalidArgument, 400, "")
	_, err = c.WriteFile(ctx(t), t.TempDir(), []byte("x"))
	wantError(t, err, connect.CodeInvalidArgument, 400, "")
	// An empty file.
	empty := filepath.Join(t.TempDir(), "empty")
	if _, err := c.WriteFile(ctx(t), empty, nil); err != nil {
		t.Fatal(err)
	}
	if b, err := c.ReadFile(ctx(t), empty); err != nil || len(b) != 0 {
		t.Fatalf("empty file: %q %v", b, err)
	}
}

func TestUploadFiles_Multipart(t *testing.T) {
	_, c := start(t)
	dir := t.TempDir()
	files := []client.UploadFile{
		{Path: filepath.Join(dir, "a.txt"), Content: strings.NewReader("A"), Size: 1},
		{Path: filepath.Join(dir, "sub", "b.txt"), Content: strings.NewReader("BB"), Size: 2},
	}
	var total int64
	written, err := c.UploadFiles(ctx(t), files, &client.UploadOptions{Gzip: true, Progress: func(done, tot int64) { total = tot }})
	if err != nil {
		t.Fatal(err)
	}
	if len(written) != 2 || written[0].Path != files[0].Path || written[1].Path != files[1].Path || total != 3 {
		t.Fatalf("written %+v (progress total %d)", written, total)
	}
	if b, _ := os.ReadFile(files[1].Path); string(b) != "BB" {
		t.Fatalf("b.txt = %q", b)
	}
	// Two parts to one path: the first is kept, the request fails.
	dup := []client.UploadFile{
		{Path: filepath.Join(dir, "d.txt"), Content: strings.NewReader("1")},
		{Path: filepath.Join(dir, "d.txt"), Content: strings.NewReader("2")},
	}
	_, err = c.UploadFiles(ctx(t), dup, nil)
	wantError(t, err, connect.CodeInvalidArgument, 400, "")
	if b, _ := os.ReadFile(filepath.Join(dir, "d.txt")); string(b) != "1" {
		t.Fatalf("d.txt = %q", b)
	}
}

func TestDownload(t *testing.T) {
	_, c := start(t)
	dir := t.TempDir()
	data := append(bytes.Repeat([]byte("line of text\n"), 50_000), randomBytes(t, 100_000)...)
	path := filepath.Join(dir, "d.txt")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	_ = os.Chtimes(path, mtime, mtime)
	for _, gz := range []bool{false, true} {
		var done, total int64
		f, err := c.OpenFile(ctx(t), path, &client.DownloadOptions{Gzip: gz, Progress: func(d, tot int64) { done, total = d, tot }})
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(f)
		f.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("gzip=%v: content differs (%d bytes, %v)", gz, len(got), err)
		}
		if done != int64(len(data)) {
			t.Fatalf("gzip=%v: progress ended at %d", gz, done)
		}
		if gz && (f.Size != -1 || total != -1) || !gz && (f.Size != int64(len(data)) || total != f.Size || !f.ModTime.Equal(mtime)) {
			t.Fatalf("gzip=%v: size %d total %d mtime %v", gz, f.Size, total, f.ModTime)
		}
		if !strings.HasPrefix(f.ContentType, "text/plain") {
			t.Fatalf("content type %q", f.ContentType)
		}
	}
	var buf bytes.Buffer
	if n, err := c.Download(ctx(t), path, &buf, nil); err != nil || n != int64(len(data)) || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("Download: %d %v", n, err)
	}
	_, err := c.ReadFile(ctx(t), filepath.Join(dir, "missing"))
	wantError(t, err, connect.CodeNotFound, 404, "path '"+filepath.Join(dir, "missing")+"' does not exist")
	_, err = c.ReadFile(ctx(t), dir)
	wantError(t, err, connect.CodeInvalidArgument, 400, "path '"+dir+"' is a directory")
	// Relative paths resolve in the user's home.
	if _, err := c.WriteFile(ctx(t), "envd-client-rel.txt", []byte("rel")); err != nil {
		t.Fatal(err)
	}
	defer os.Remove("/root/envd-client-rel.txt")
	if b, err := os.ReadFile("/root/envd-client-rel.txt"); err != nil || string(b) != "rel" {
		t.Fatalf("relative upload: %q %v", b, err)
	}
}

func TestCompose(t *testing.T) {
	_, c := start(t)
	dir := t.TempDir()
	for i, s := range []string{"one,", "two,", "three"} {
		if _, err := c.WriteFile(ctx(t), filepath.Join(dir, "p", string(rune('a'+i))), []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	dest := filepath.Join(dir, "out", "all.txt")
	w, err := c.Compose(ctx(t), []string{filepath.Join(dir, "p/a"), filepath.Join(dir, "p/b"), filepath.Join(dir, "p/c")}, dest)
	if err != nil {
		t.Fatal(err)
	}
	if w.Path != dest || w.Name != "all.txt" || w.Type != "file" {
		t.Fatalf("compose answered %+v", w)
	}
	if b, _ := os.ReadFile(dest); string(b) != "one,two,three" {
		t.Fatalf("composed %q", b)
	}
	if _, err := os.Stat(filepath.Join(dir, "p/a")); !os.IsNotExist(err) {
		t.Fatal("source not deleted")
	}
	_, err = c.Compose(ctx(t), []string{filepath.Join(dir, "nope")}, dest)
	wantError(t, err, connect.CodeNotFound, 404, "source file not found: "+filepath.Join(dir, "nope"))
	_, err = c.Compose(ctx(t), nil, dest)
	wantError(t, err, connect.CodeInvalidArgument, 400, "source_paths must not be empty")
}

func TestSignedURLs(t *testing.T) {
	e, c := start(t)
	const tok = "signing-token"
	if _, err := c.Init(ctx(t), &client.InitRequest{AccessToken: tok}); err != nil {
		t.Fatal(err)
	}
	authed, _ := client.New(e.URL, client.WithAccessToken(tok))
	dir := t.TempDir()
	path := filepath.Join(dir, "s.txt")

	up := authed.UploadURL(path, time.Now().Add(time.Hour))
	resp, err := http.Post(up, "application/octet-stream", strings.NewReader("signed"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("upload URL: %d", resp.StatusCode)
	}
	down := authed.DownloadURL(path, time.Time{})
	if strings.Contains(down, "signature_expiration") {
		t.Fatalf("unexpiring URL %q has an expiration", down)
	}
	resp, err = http.Get(down)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "signed" {
		t.Fatalf("download URL: %d %q", resp.StatusCode, b)
	}
	// A URL signed for another user, for the other operation, or expired
	// is refused.
	rootURL := authed.As("root").DownloadURL(path, time.Time{})
	if resp, _ := http.Get(rootURL); resp == nil || resp.StatusCode != 200 {
		t.Fatalf("URL signed for root refused")
	}
	for name, u := range map[string]string{
		"write-for-read": strings.Replace(up, "signature_expiration", "x", 1),
		"expired":        authed.DownloadURL(path, time.Now().Add(-time.Minute)),
		"upload-as-get":  authed.UploadURL(path, time.Time{}),
	} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("%s: status %d, want 401", name, resp.StatusCode)
		}
	}
	// Without a token the URL carries no signature.
	if u := c.DownloadURL("/x", time.Now()); strings.Contains(u, "signature") {
		t.Fatalf("unsigned client made %q", u)
	}
}
