package e2e

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/envd/envd/internal/envdtest"
)

func TestUpload_MultipartAsRootAndUser(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{})
	base := t.TempDir()
	os.Chmod(base, 0o777)

	// Root, the Wrenn host's form: filename "upload" with ?path=.
	rootFile := filepath.Join(base, "r", "s", "root.txt")
	got := uploadOK(t, filesURL(e, "path", rootFile, "username", "root"), nil, filePart{field: "file", filename: "upload", data: []byte("by root")})
	if len(got) != 1 || got[0].Name != "root.txt" || got[0].Path != rootFile || got[0].Type != "file" || got[0].Metadata != nil {
		t.Fatalf("%+v", got)
	}
	if uid, gid := fsOwner(t, rootFile); uid != 0 || gid != 0 {
		t.Fatalf("root file owned by %d:%d", uid, gid)
	}

	// The user: file and the parents envd creates are the user's; the
	// existing base is untouched.
	userFile := filepath.Join(base, "u1", "u2", "user.txt")
	got = uploadOK(t, filesURL(e, "path", userFile, "username", fsUserName), nil, filePart{field: "file", filename: userFile, data: []byte("by user")})
	if len(got) != 1 || got[0].Path != userFile {
		t.Fatalf("%+v", got)
	}
	for _, p := range []string{userFile, filepath.Dir(userFile), filepath.Dir(filepath.Dir(userFile))} {
		if uid, gid := fsOwner(t, p); uid != u.UID || gid != u.GID {
			t.Fatalf("%s owned by %d:%d, want %d:%d", p, uid, gid, u.UID, u.GID)
		}
	}
	if uid, _ := fsOwner(t, base); uid != 0 {
		t.Fatal("existing directory chowned")
	}
	st, _ := os.Stat(userFile)
	dst, _ := os.Stat(filepath.Dir(userFile))
	if st.Mode().Perm() != 0o644 || dst.Mode().Perm() != 0o755 {
		t.Fatalf("modes %v %v", st.Mode(), dst.Mode())
	}
	if b, _ := os.ReadFile(userFile); string(b) != "by user" {
		t.Fatalf("%q", b)
	}
	fsNoTemps(t, filepath.Dir(userFile))

	// The E2B SDK's multi-file form: no path, filenames are the targets;
	// relative ones land in the user's home, not the workdir.
	d := fsUserDir(t, u)
	rel := filepath.Base(d) + "/rel/a.txt"
	abs := filepath.Join(d, "abs.txt")
	got = uploadOK(t, filesURL(e, "username", fsUserName), nil,
		filePart{field: "file", filename: rel, data: []byte("A")},
		filePart{field: "other", filename: "ignored", data: []byte("ignored")},
		filePart{field: "file", filename: abs, data: []byte("B")},
		filePart{field: "file", filename: "~/" + filepath.Base(d) + "/tilde.txt", data: []byte("C")},
	)
	want := []string{filepath.Join(u.Home, rel), abs, filepath.Join(d, "tilde.txt")}
	if len(got) != 3 {
		t.Fatalf("%+v", got)
	}
	for i, w := range want {
		if got[i].Path != w || got[i].Name != filepath.Base(w) {
			t.Fatalf("[%d] %+v want %s", i, got[i], w)
		}
		if uid, _ := fsOwner(t, w); uid != u.UID {
			t.Fatalf("%s not the user's", w)
		}
	}
	if _, err := os.Stat(filepath.Join(d, "ignored")); err == nil {
		t.Fatal("a part not named file was written")
	}
	// No file part at all: 200 with an empty array.
	if got := uploadOK(t, filesURL(e), nil, filePart{field: "x", filename: "y", data: []byte("z")}); got == nil || len(got) != 0 {
		t.Fatalf("%+v", got)
	}
	// Basic auth does not choose the user of /files: the default (root) does.
	p := filepath.Join(base, "basic.txt")
	uploadOK(t, filesURL(e, "path", p), http.Header{"Authorization": {fsBasic(fsUserName)}}, filePart{field: "file", filename: "x", data: []byte("b")})
	if uid, _ := fsOwner(t, p); uid != 0 {
		t.Fatal("Basic-auth user chose the owner of an upload")
	}
}

func TestUpload_RawAndGzip(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	p := filepath.Join(dir, "raw.bin")
	resp, b := xfer(t, "POST", filesURL(e, "path", p), strings.NewReader("raw body"), http.Header{"Content-Type": {"application/octet-stream"}})
	if got := decodeWritten(t, resp, b); len(got) != 1 || got[0].Path != p {
		t.Fatalf("%+v", got)
	}
	if data, _ := os.ReadFile(p); string(data) != "raw body" {
		t.Fatalf("%q", data)
	}
	// Whole-body gzip, including several concatenated members.
	var gz bytes.Buffer
	for _, s := range []string{"first member, ", "second member"} {
		w := gzip.NewWriter(&gz)
		w.Write([]byte(s))
		w.Close()
	}
	resp, b = xfer(t, "POST", filesURL(e, "path", p), bytes.NewReader(gz.Bytes()), http.Header{"Content-Type": {"application/octet-stream"}, "Content-Encoding": {"GZIP"}})
	decodeWritten(t, resp, b)
	if data, _ := os.ReadFile(p); string(data) != "first member, second member" {
		t.Fatalf("multi-member gzip: %q", data)
	}
	// Multipart gzipped as a whole body.
	body, ct := fileMultipart(t, filePart{field: "file", filename: filepath.Join(dir, "m1"), data: []byte("one")}, filePart{field: "file", filename: filepath.Join(dir, "m2"), data: []byte("two")})
	gz.Reset()
	w := gzip.NewWriter(&gz)
	io.Copy(w, body)
	w.Close()
	resp, b = xfer(t, "POST", filesURL(e), &gz, http.Header{"Content-Type": {ct}, "Content-Encoding": {"gzip"}})
	if got := decodeWritten(t, resp, b); len(got) != 2 {
		t.Fatalf("%+v", got)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "m2")); string(data) != "two" {
		t.Fatalf("%q", data)
	}
	// A round trip: upload gzip, download gzip.
	big := bytes.Repeat([]byte("round trip "), 50000)
	gz.Reset()
	w = gzip.NewWriter(&gz)
	w.Write(big)
	w.Close()
	resp, b = xfer(t, "POST", filesURL(e, "path", p), &gz, http.Header{"Content-Type": {"application/octet-stream"}, "Content-Encoding": {"gzip"}})
	decodeWritten(t, resp, b)
	resp, b = xfer(t, "GET", filesURL(e, "path", p), nil, http.Header{"Accept-Encoding": {"gzip"}})
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil || resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("%v %v", err, resp.Header)
	}
	if back, _ := io.ReadAll(zr); !bytes.Equal(back, big) {
		t.Fatal("gzip round trip differs")
	}
}

func TestUpload_Errors(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	octet := http.Header{"Content-Type": {"application/octet-stream"}}
	post := func(u string, body string, h http.Header) (*http.Response, []byte) {
		return xfer(t, "POST", u, strings.NewReader(body), h)
	}
	resp, b := post(filesURL(e), "x", octet)
	fileErr(t, resp, b, 400, "path query parameter is required for raw body upload")
	resp, b = post(filesURL(e, "path", "~bob/x"), "x", octet)
	fileErr(t, resp, b, 400, "error resolving path: failed to expand path '~bob/x' for user 'root': cannot expand user-specific home dir")
	resp, b = post(filesURL(e, "path", dir), "x", octet)
	fileErr(t, resp, b, 400, "path is a directory: "+dir)
	resp, b = post(filesURL(e, "path", filepath.Join(dir, "x")), "x", http.Header{"Content-Type": {"text/plain; charset=utf-8"}})
	fileErr(t, resp, b, 400, "unsupported content type: text/plain; charset=utf-8, expected multipart/form-data or application/octet-stream")
	resp, b = post(filesURL(e, "path", filepath.Join(dir, "x")), "x", nil)
	fileErr(t, resp, b, 400, "unsupported content type: , expected multipart/form-data or application/octet-stream")
	resp, b = post(filesURL(e, "path", filepath.Join(dir, "x")), "x", http.Header{"Content-Type": {"application/octet-stream"}, "Content-Encoding": {"br"}})
	fileErr(t, resp, b, 400, "error decompressing request body: unsupported Content-Encoding: br, supported: [gzip]")
	resp, b = post(filesURL(e, "path", filepath.Join(dir, "x")), "not gzip", http.Header{"Content-Type": {"application/octet-stream"}, "Content-Encoding": {"gzip"}})
	fileErr(t, resp, b, 400, "error decompressing request body: failed to create gzip reader: *")
	resp, b = post(filesURL(e, "path", filepath.Join(dir, "x"), "username", "no-such-user-xyz"), "x", octet)
	fileErr(t, resp, b, 401, "error looking up user 'no-such-user-xyz': unknown user no-such-user-xyz")
	resp, b = post(filesURL(e, "path", filepath.Join(dir, "x")), "x", http.Header{"Content-Type": {"multipart/form-data"}})
	fileErr(t, resp, b, 500, "error parsing multipart form: *")
	resp, b = post(filesURL(e, "path", filepath.Join(dir, "x")), "not multipart", http.Header{"Content-Type": {"multipart/form-data; boundary=xyz"}})
	fileErr(t, resp, b, 500, "error parsing multipart form: *")
	body, ct := fileMultipart(t, filePart{field: "file", noFilename: true, data: []byte("x")})
	resp, b = xfer(t, "POST", filesURL(e), body, http.Header{"Content-Type": {ct}})
	fileErr(t, resp, b, 400, "error getting multipart custom part file name: filename not found in Content-Disposition header")
	// Metadata validation.
	long := strings.Repeat("k", 247)
	resp, b = post(filesURL(e, "path", filepath.Join(dir, "x")), "x", http.Header{"Content-Type": {"application/octet-stream"}, "X-Metadata-" + long: {"v"}})
	fileErr(t, resp, b, 400, "invalid metadata: *")
	resp, b = post(filesURL(e, "path", filepath.Join(dir, "x")), "x", http.Header{"Content-Type": {"application/octet-stream"}, "X-Metadata-A": {strings.Repeat("v", 4090)}})
	fileErr(t, resp, b, 400, "invalid metadata: *")
	resp, b = post(filesURL(e, "path", filepath.Join(dir, "x")), "x", http.Header{"Content-Type": {"application/octet-stream"}, "X-Metadata-A": {"caf\xc3\xa9"}})
	fileErr(t, resp, b, 400, "invalid metadata: *")
	if _, err := os.Stat(filepath.Join(dir, "x")); err == nil {
		t.Fatal("a refused upload wrote its file")
	}
	fsNoTemps(t, dir)
}

func TestUpload_DuplicateTargets(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	target := filepath.Join(dir, "same")
	body, ct := fileMultipart(t, filePart{field: "file", filename: "a", data: []byte("first")}, filePart{field: "file", filename: "b", data: []byte("second")})
	resp, b := xfer(t, "POST", filesURL(e, "path", target), body, http.Header{"Content-Type": {ct}})
	fileErr(t, resp, b, 400, "you cannot upload multiple files to the same path '"+target+"' in one upload request, only the first specified file was uploaded")
	if data, _ := os.ReadFile(target); string(data) != "first" {
		t.Fatalf("%q", data)
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	body, ct = fileMultipart(t,
		filePart{field: "file", filename: p("x"), data: []byte("x")},
		filePart{field: "file", filename: p("y"), data: []byte("y")},
		filePart{field: "file", filename: p("z"), data: []byte("z")},
		filePart{field: "file", filename: p("x"), data: []byte("x2")},
	)
	resp, b = xfer(t, "POST", filesURL(e), body, http.Header{"Content-Type": {ct}})
	fileErr(t, resp, b, 400, "you cannot upload multiple files to the same path '"+p("x")+"' in one upload request, only the first specified file was uploaded, also the following files were uploaded: "+p("y")+", "+p("z"))
}

func TestUpload_OverwriteModeSymlinkAndMetadata(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	real := filepath.Join(dir, "real.sh")
	os.WriteFile(real, []byte("old"), 0o755)
	os.Chmod(real, 0o750)
	link := filepath.Join(dir, "link.sh")
	os.Symlink("real.sh", link)
	h := http.Header{"Content-Type": {"application/octet-stream"}, "X-Metadata-Owner": {"team-a"}, "X-Metadata-Build-Id": {"42"}}
	resp, b := xfer(t, "POST", filesURL(e, "path", link), strings.NewReader("new"), h)
	got := decodeWritten(t, resp, b)
	if len(got) != 1 || got[0].Path != link || got[0].Name != "link.sh" || len(got[0].Metadata) != 2 || got[0].Metadata["build-id"] != "42" || got[0].Metadata["owner"] != "team-a" {
		t.Fatalf("%+v (the test directory's filesystem must support user xattrs)", got)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("symlink replaced")
	}
	st, _ := os.Stat(real)
	if data, _ := os.ReadFile(real); string(data) != "new" || st.Mode().Perm() != 0o750 {
		t.Fatalf("%q %v", data, st.Mode())
	}
	// The metadata is visible in Stat, and the next upload replaces the set.
	resp, b = xfer(t, "POST", filesURL(e, "path", real), strings.NewReader("again"), http.Header{"Content-Type": {"application/octet-stream"}})
	if got := decodeWritten(t, resp, b); got[0].Metadata != nil {
		t.Fatalf("metadata survived a new upload: %+v", got)
	}
	// Device files are written in place.
	resp, b = xfer(t, "POST", filesURL(e, "path", "/dev/null"), strings.NewReader("gone"), http.Header{"Content-Type": {"application/octet-stream"}})
	decodeWritten(t, resp, b)
	fsNoTemps(t, dir)
}

// A small tmpfs fills up: 507, the previous file is byte-identical and no
// staging file remains.
func TestUpload_ENOSPCLeavesOldFileIntact(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := fsMountTmpfs(t, "size=1m")
	target := filepath.Join(dir, "keep.bin")
	old := bytes.Repeat([]byte{0xab}, 100<<10)
	if err := os.WriteFile(target, old, 0o644); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte{0xcd}, 2<<20)
	resp, b := xfer(t, "POST", filesURL(e, "path", target), bytes.NewReader(big), http.Header{"Content-Type": {"application/octet-stream"}})
	fileErr(t, resp, b, 507, fmt.Sprintf("attempted to write %d bytes: not enough disk space available", len(big)))
	// Chunked (no Content-Length) and multipart.
	body, ct := fileMultipart(t, filePart{field: "file", filename: target, data: big})
	resp, b = xfer(t, "POST", filesURL(e), io.MultiReader(body), http.Header{"Content-Type": {ct}})
	fileErr(t, resp, b, 507, "not enough disk space available")
	if data, _ := os.ReadFile(target); !bytes.Equal(data, old) {
		t.Fatal("previous content damaged")
	}
	fsNoTemps(t, dir)
	// The space is free again: a small upload succeeds.
	resp, b = xfer(t, "POST", filesURL(e, "path", target), strings.NewReader("small"), http.Header{"Content-Type": {"application/octet-stream"}})
	decodeWritten(t, resp, b)
}

func TestUpload_NoInodes(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := fsMountTmpfs(t, "size=1m,nr_inodes=2")
	target := filepath.Join(dir, "f")
	if err := os.WriteFile(target, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	resp, b := xfer(t, "POST", filesURL(e, "path", target), strings.NewReader("new"), http.Header{"Content-Type": {"application/octet-stream"}})
	fileErr(t, resp, b, 507, "not enough inodes available: *")
	if data, _ := os.ReadFile(target); string(data) != "old" {
		t.Fatalf("%q", data)
	}
	fsNoTemps(t, dir)
}

// A client that disconnects mid-upload: once envd notices, the staging file
// is gone and the old content is intact; envd keeps serving.
func TestUpload_ClientDisconnectLeavesNothing(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("intact"), 0o644)
	for _, form := range []string{"raw", "multipart"} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(e.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		chunk := bytes.Repeat([]byte("z"), 64<<10)
		if form == "raw" {
			fmt.Fprintf(conn, "POST /files?path=%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 104857600\r\n\r\n", target)
		} else {
			fmt.Fprintf(conn, "POST /files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=BND\r\nTransfer-Encoding: chunked\r\n\r\n")
			head := fmt.Sprintf("--BND\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n\r\n", target)
			fmt.Fprintf(conn, "%x\r\n%s\r\n", len(head), head)
		}
		deadline := time.Now().Add(10 * time.Second)
		for fsTemps(dir) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the upload never started", form)
			}
			if form == "raw" {
				conn.Write(chunk)
			} else {
				fmt.Fprintf(conn, "%x\r\n%s\r\n", len(chunk), chunk)
			}
		}
		conn.Close()
		for fsTemps(dir) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: staging file not removed after the client left", form)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if data, _ := os.ReadFile(target); string(data) != "intact" {
			t.Fatalf("%s: previous content damaged: %q", form, data[:min(len(data), 20)])
		}
	}
	if resp, _ := xfer(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("envd stopped serving")
	}
}

// gRPC clients speak h2c; file transfer works over it too (uploads stream,
// downloads negotiate gzip).
func TestTransfer_H2C(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	tr := &http.Transport{Protocols: new(http.Protocols), DisableCompression: true}
	tr.Protocols.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: validated(tr)}
	p := filepath.Join(t.TempDir(), "h2.bin")
	data := bytes.Repeat([]byte("h2c "), 1<<18)
	req, _ := http.NewRequest("POST", filesURL(e, "path", p), io.MultiReader(bytes.NewReader(data)))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("not HTTP/2: %s", resp.Proto)
	}
	decodeWritten(t, resp, b)
	req, _ = http.NewRequest("GET", filesURL(e, "path", p), nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	zr, err := gzip.NewReader(resp.Body)
	if err != nil || resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("%v %v", err, resp.Header)
	}
	if got, _ := io.ReadAll(zr); !bytes.Equal(got, data) {
		t.Fatal("h2c round trip differs")
	}
}
