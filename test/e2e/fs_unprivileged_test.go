package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/internal/envdtest"
)

// envd started by an ordinary user (a developer's machine): files are
// written as that user without chown, and requests for anyone else are
// refused with 403 / permission_denied.
func TestFS_UnprivilegedEnvd(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	publicBinary(t)
	e := envdtest.Start(t, envdtest.Options{Credential: u.Credential(), Env: []string{"HOME=" + u.Home}})
	d := fsUserDir(t, u)
	rel := filepath.Base(d)
	fs := e.Filesystem()

	got := uploadOK(t, filesURL(e, "path", "~/"+rel+"/new/dir/f.txt"), nil, filePart{field: "file", filename: "upload", data: []byte("mine")})
	p := filepath.Join(d, "new", "dir", "f.txt")
	if len(got) != 1 || got[0].Path != p {
		t.Fatalf("%+v", got)
	}
	for _, q := range []string{p, filepath.Dir(p)} {
		if uid, _ := fsOwner(t, q); uid != u.UID {
			t.Fatalf("%s owned by %d", q, uid)
		}
	}
	resp, b := xfer(t, "GET", filesURL(e, "path", rel+"/new/dir/f.txt"), nil, nil)
	if resp.StatusCode != 200 || string(b) != "mine" {
		t.Fatalf("download %d %s", resp.StatusCode, b)
	}
	mk, err := fs.MakeDir(fsCtx(t), connect.NewRequest(&filesystem.MakeDirRequest{Path: rel + "/made"}))
	if err != nil || mk.Msg.Entry.Owner != fsUserName {
		t.Fatalf("%v %v", mk, err)
	}
	if _, err := fs.ListDir(fsCtx(t), connect.NewRequest(&filesystem.ListDirRequest{Path: rel, Depth: 3})); err != nil {
		t.Fatal(err)
	}
	resp, b = postJSON(t, e.URL+"/files/compose", map[string]any{"source_paths": []string{p}, "destination": rel + "/composed"}, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("compose %d %s", resp.StatusCode, b)
	}

	// Anyone else: refused.
	resp, b = xfer(t, "POST", filesURL(e, "path", "/tmp/x", "username", "root"), strings.NewReader("x"), http.Header{"Content-Type": {"application/octet-stream"}})
	fileErr(t, resp, b, 403, "cannot access files as user 'root': envd runs unprivileged*")
	resp, b = xfer(t, "GET", filesURL(e, "path", "/etc/hostname", "username", "root"), nil, nil)
	fileErr(t, resp, b, 403, "cannot access files as user 'root': *")
	_, err = fs.Stat(fsCtx(t), fsAs(&filesystem.StatRequest{Path: "/"}, "root"))
	fsWantCode(t, err, connect.CodePermissionDenied, "cannot access files as user 'root': *")
	if _, err := os.Stat(filepath.Join(d, "composed")); err != nil {
		t.Fatal(err)
	}
}

// publicBinary makes envd executable by any user for this test: the
// checkout (and so $ENVD_BIN) may live under a directory only root can
// traverse.
func publicBinary(t *testing.T) {
	t.Helper()
	src, err := os.ReadFile(envdtest.Binary(t))
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "envd-public-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "envd")
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ENVD_BIN", bin)
}
