package files

import (
	"bytes"
	"context"
	"errors"
	"io"
	"mime/multipart"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/logging"
)

func self() Owner { return Owner{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())} }

func write(t *testing.T, target string, body io.Reader, md map[string]string) error {
	t.Helper()
	return Write(WriteRequest{Target: target, Body: body, Owner: self(), Metadata: md, Log: logging.Discard()})
}

func noTemps(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), TempPrefix) {
			t.Fatalf("temporary file left behind: %s", e.Name())
		}
	}
}

func kindOf(err error) Kind {
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Kind
	}
	return -1
}

func TestWrite_NewFileModeAndParents(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "a", "b", "f.txt")
	if err := write(t, target, strings.NewReader("data"), nil); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(target)
	st, _ := os.Stat(target)
	if string(b) != "data" || st.Mode().Perm() != 0o644 {
		t.Fatalf("%q %v", b, st.Mode())
	}
	noTemps(t, filepath.Dir(target))
}

func TestWrite_OverwriteKeepsPermissionBitsOnly(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "x")
	os.WriteFile(target, []byte("old"), 0o755)
	os.Chmod(target, 0o750|os.ModeSetuid)
	if err := write(t, target, strings.NewReader("new"), nil); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(target)
	if st.Mode() != 0o750 {
		t.Fatalf("mode %v", st.Mode())
	}
}

func TestWrite_FollowsSymlinksAndKeepsThem(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	os.WriteFile(real, []byte("old"), 0o600)
	os.Symlink("real", filepath.Join(dir, "l1"))
	os.Symlink(filepath.Join(dir, "l1"), filepath.Join(dir, "l2"))
	if err := write(t, filepath.Join(dir, "l2"), strings.NewReader("new"), nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(real); string(b) != "new" {
		t.Fatalf("target %q", b)
	}
	if fi, _ := os.Lstat(filepath.Join(dir, "l2")); fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("symlink replaced")
	}
	// A dangling link gets its target created.
	os.Symlink("created", filepath.Join(dir, "dangling"))
	if err := write(t, filepath.Join(dir, "dangling"), strings.NewReader("c"), nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "created")); string(b) != "c" {
		t.Fatalf("created %q", b)
	}
	// A cycle is an error, not a hang.
	os.Symlink("c2", filepath.Join(dir, "c1"))
	os.Symlink("c1", filepath.Join(dir, "c2"))
	if err := write(t, filepath.Join(dir, "c1"), strings.NewReader("c"), nil); kindOf(err) != KindInternal {
		t.Fatalf("cycle: %v", err)
	}
}

func TestWrite_DirectoryIsBadRequest(t *testing.T) {
	dir := t.TempDir()
	err := write(t, dir, strings.NewReader("x"), nil)
	if kindOf(err) != KindBadRequest || err.Error() != "path is a directory: "+dir {
		t.Fatalf("%v", err)
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) > 0 {
		n := copy(p, f.data)
		f.data = f.data[n:]
		return n, nil
	}
	return 0, f.err
}

func TestWrite_ReadFailureLeavesOldContent(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "keep")
	os.WriteFile(target, []byte("precious"), 0o644)
	err := write(t, target, &failingReader{data: []byte("partial"), err: io.ErrUnexpectedEOF}, nil)
	if kindOf(err) != KindInternal || err.Error() != "error writing file: unexpected EOF" {
		t.Fatalf("%v", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "precious" {
		t.Fatalf("old content damaged: %q", b)
	}
	noTemps(t, dir)
	err = write(t, target, &failingReader{err: &StallError{After: 300 * time.Second}}, nil)
	if kindOf(err) != KindStalled || err.Error() != "upload stalled: no data received for 300s" {
		t.Fatalf("%v", err)
	}
	noTemps(t, dir)
}

func TestWrite_MetadataReplacedOnEachUpload(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "m")
	if err := write(t, target, strings.NewReader("1"), map[string]string{"a": "1", "b": "2"}); err != nil {
		t.Fatal(err)
	}
	if md := fsops.ReadMetadata(target); len(md) != 2 || md["a"] != "1" {
		t.Fatalf("%v (the test directory's filesystem must support user xattrs)", md)
	}
	write(t, target, strings.NewReader("2"), map[string]string{"c": "3"})
	if md := fsops.ReadMetadata(target); len(md) != 1 || md["c"] != "3" {
		t.Fatalf("%v", md)
	}
	write(t, target, strings.NewReader("3"), nil)
	if md := fsops.ReadMetadata(target); len(md) != 0 {
		t.Fatalf("%v", md)
	}
}

func TestWrite_InPlaceForDevicesAndFIFOs(t *testing.T) {
	if err := write(t, "/dev/null", strings.NewReader("discarded"), map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Without a reader the write fails instead of blocking forever.
	if err := write(t, fifo, strings.NewReader("x"), nil); kindOf(err) != KindInternal || !strings.HasPrefix(err.Error(), "error opening file: ") {
		t.Fatalf("fifo without reader: %v", err)
	}
	got := make(chan []byte, 1)
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		// A FIFO without a writer reads as EOF: read until the writer has
		// come and gone with the whole message (or 5 s).
		var b []byte
		for deadline := time.Now().Add(5 * time.Second); len(b) < len("through the pipe") && time.Now().Before(deadline); {
			more, _ := io.ReadAll(r)
			b = append(b, more...)
			time.Sleep(time.Millisecond)
		}
		got <- b
	}()
	if err := write(t, fifo, strings.NewReader("through the pipe"), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if string(b) != "through the pipe" {
			t.Fatalf("%q", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reader got nothing")
	}
	r.Close()
	noTemps(t, dir)
	// A pseudo filesystem: a file that cannot be created there fails
	// without leaving anything.
	if err := write(t, "/proc/envd-no-such-file", strings.NewReader("x"), nil); kindOf(err) != KindInternal {
		t.Fatalf("procfs: %v", err)
	}
}

type mpBody struct {
	r        io.Reader
	boundary string
}

func multipartBody(t *testing.T, parts ...[3]string) (mpBody, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		h := make(map[string][]string)
		h["Content-Disposition"] = []string{p[0]}
		w, _ := mw.CreatePart(h)
		io.WriteString(w, p[1])
	}
	mw.Close()
	return mpBody{bytes.NewReader(buf.Bytes()), mw.Boundary()}, &buf
}

func upload(dir string) *Upload {
	return &Upload{Owner: self(), Log: logging.Discard(), Resolve: func(p string) (string, error) {
		if filepath.IsAbs(p) {
			return p, nil
		}
		return filepath.Join(dir, p), nil
	}}
}

func TestMultipart_TargetsAndSkippedParts(t *testing.T) {
	dir := t.TempDir()
	mr, _ := multipartBody(t,
		[3]string{`form-data; name="meta"`, "ignored", ""},
		[3]string{`form-data; name="file"; filename="sub/one.txt"`, "1", ""},
		[3]string{`form-data; name="file"; filename="` + dir + `/two.txt"`, "2", ""},
	)
	got, err := upload(dir).Multipart(t.Context(), mr.r, mr.boundary, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Path != filepath.Join(dir, "sub/one.txt") || got[0].Name != "one.txt" || got[1].Path != filepath.Join(dir, "two.txt") || got[0].Type != "file" {
		t.Fatalf("%+v", got)
	}
	mr, _ = multipartBody(t)
	if got, err := upload(dir).Multipart(t.Context(), mr.r, mr.boundary, ""); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("no parts: %v %v", got, err)
	}
	mr, _ = multipartBody(t, [3]string{`form-data; name="file"`, "x", ""})
	if _, err := upload(dir).Multipart(t.Context(), mr.r, mr.boundary, ""); kindOf(err) != KindBadRequest ||
		err.Error() != "error getting multipart custom part file name: filename not found in Content-Disposition header" {
		t.Fatalf("%v", err)
	}
}

func TestMultipart_Duplicates(t *testing.T) {
	dir := t.TempDir()
	// With ?path= every part targets it: the second part is a duplicate.
	mr, _ := multipartBody(t,
		[3]string{`form-data; name="file"; filename="a"`, "first", ""},
		[3]string{`form-data; name="file"; filename="b"`, "second", ""},
	)
	target := filepath.Join(dir, "q")
	_, err := upload(dir).Multipart(t.Context(), mr.r, mr.boundary, target)
	want := "you cannot upload multiple files to the same path '" + target + "' in one upload request, only the first specified file was uploaded"
	if kindOf(err) != KindBadRequest || err.Error() != want {
		t.Fatalf("%v", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "first" {
		t.Fatalf("first file %q", b)
	}
	// Two other files written before: they are listed.
	mr, _ = multipartBody(t,
		[3]string{`form-data; name="file"; filename="x"`, "x", ""},
		[3]string{`form-data; name="file"; filename="y"`, "y", ""},
		[3]string{`form-data; name="file"; filename="z"`, "z", ""},
		[3]string{`form-data; name="file"; filename="y"`, "y2", ""},
	)
	_, err = upload(dir).Multipart(t.Context(), mr.r, mr.boundary, "")
	p := func(n string) string { return filepath.Join(dir, n) }
	want = "you cannot upload multiple files to the same path '" + p("y") + "' in one upload request, only the first specified file was uploaded, also the following files were uploaded: " + p("x") + ", " + p("z")
	if err == nil || err.Error() != want {
		t.Fatalf("%v", err)
	}
}

func TestMultipart_TruncatedBody(t *testing.T) {
	dir := t.TempDir()
	_, buf := multipartBody(t,
		[3]string{`form-data; name="file"; filename="done"`, "complete", ""},
		[3]string{`form-data; name="file"; filename="cut"`, strings.Repeat("x", 4096), ""},
	)
	os.WriteFile(filepath.Join(dir, "cut"), []byte("old"), 0o644)
	full := buf.Bytes()
	boundary := string(full[2:bytes.IndexByte(full, '\r')])
	cut := full[:len(full)-2000]
	_, err := upload(dir).Multipart(t.Context(), bytes.NewReader(cut), boundary, "")
	if kindOf(err) != KindInternal || !strings.HasPrefix(err.Error(), "error writing file: ") {
		t.Fatalf("%v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "done")); string(b) != "complete" {
		t.Fatal("completed file lost")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "cut")); string(b) != "old" {
		t.Fatalf("partial file replaced the old one: %q", b[:min(len(b), 10)])
	}
	noTemps(t, dir)
	// Cut inside the second part's headers: an error reading the form.
	i := bytes.Index(full, []byte(`filename="cut"`))
	_, err = upload(dir).Multipart(t.Context(), bytes.NewReader(full[:i]), boundary, "")
	if kindOf(err) != KindInternal || !strings.HasPrefix(err.Error(), "error reading form: ") {
		t.Fatalf("%v", err)
	}
	// Not multipart at all.
	_, err = upload(dir).Multipart(t.Context(), strings.NewReader("garbage"), boundary, "")
	if kindOf(err) != KindInternal || !strings.HasPrefix(err.Error(), "error parsing multipart form: ") {
		t.Fatalf("%v", err)
	}
}

func TestRaw(t *testing.T) {
	dir := t.TempDir()
	if _, err := upload(dir).Raw(t.Context(), strings.NewReader("x"), ""); kindOf(err) != KindBadRequest || err.Error() != "path query parameter is required for raw body upload" {
		t.Fatalf("%v", err)
	}
	got, err := upload(dir).Raw(t.Context(), strings.NewReader("raw"), "r.bin")
	if err != nil || len(got) != 1 || got[0].Path != filepath.Join(dir, "r.bin") {
		t.Fatalf("%v %v", got, err)
	}
}

func compose(dir string, dest string, srcs ...string) (*Composed, error) {
	return Compose(context.Background(), ComposeRequest{Sources: srcs, Destination: dest, Owner: self(), Log: logging.Discard(),
		Resolve: func(p string) (string, error) { return filepath.Join(dir, p), nil }})
}

func TestCompose(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p1"), []byte("hello "), 0o600)
	os.WriteFile(filepath.Join(dir, "p2"), []byte("world"), 0o600)
	dest := filepath.Join(dir, "out", "joined.txt")
	out, err := compose(dir, dest, "p1", "p2")
	if err != nil {
		t.Fatal(err)
	}
	if *out != (Composed{Path: dest, Name: "joined.txt", Type: "file"}) {
		t.Fatalf("%+v", out)
	}
	b, _ := os.ReadFile(dest)
	st, _ := os.Stat(dest)
	if string(b) != "hello world" || st.Mode().Perm() != 0o644 {
		t.Fatalf("%q %v", b, st.Mode())
	}
	for _, p := range []string{"p1", "p2"} {
		if _, err := os.Stat(filepath.Join(dir, p)); !os.IsNotExist(err) {
			t.Fatalf("source %s kept", p)
		}
	}
	noTemps(t, filepath.Dir(dest))
}

func TestCompose_Errors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "s"), []byte("s"), 0o644)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	dest := filepath.Join(dir, "dest")
	os.WriteFile(dest, []byte("before"), 0o644)
	cases := []struct {
		srcs []string
		kind Kind
		msg  string
	}{
		{[]string{"s", "missing"}, KindNotFound, "source file not found: missing"},
		{[]string{"d"}, KindBadRequest, "source path is not a regular file: d"},
		{[]string{"dest"}, KindBadRequest, `source path "dest" cannot be the same as destination`},
		{[]string{"missing", "d"}, KindNotFound, "source file not found: missing"},
		{[]string{"s", "./s"}, KindBadRequest, `source path "./s" is listed twice`},
		{[]string{".//dest"}, KindBadRequest, `source path ".//dest" cannot be the same as destination`},
	}
	for _, c := range cases {
		_, err := compose(dir, dest, c.srcs...)
		if kindOf(err) != c.kind || err.Error() != c.msg {
			t.Errorf("%v: %v", c.srcs, err)
		}
	}
	if b, _ := os.ReadFile(dest); string(b) != "before" {
		t.Fatal("destination changed by a failed compose")
	}
	if _, err := os.Stat(filepath.Join(dir, "s")); err != nil {
		t.Fatal("source removed by a failed compose")
	}
	noTemps(t, dir)
}

func TestOnPseudoFS(t *testing.T) {
	for _, p := range []string{"/proc/cpuinfo", "/sys/kernel", "/dev/pts"} {
		if !onPseudoFS(p) {
			t.Errorf("%s is on a pseudo filesystem", p)
		}
	}
	for _, p := range []string{t.TempDir(), "/dev/shm", "/nonexistent"} {
		if onPseudoFS(p) {
			t.Errorf("%s is not on a pseudo filesystem", p)
		}
	}
}
