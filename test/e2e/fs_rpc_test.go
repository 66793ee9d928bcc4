package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/gen/filesystem/filesystemconnect"
	"github.com/envd/envd/internal/envdtest"
)

// fsWantCode checks a Connect error's code and message (a message ending in
// "*" is a prefix).
func fsWantCode(t testing.TB, err error, code connect.Code, msg string) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("want %v error, got %v", code, err)
	}
	if ce.Code() != code {
		t.Fatalf("code %v (%s), want %v", ce.Code(), ce.Message(), code)
	}
	if p, ok := strings.CutSuffix(msg, "*"); ok {
		if !strings.HasPrefix(ce.Message(), p) {
			t.Fatalf("message %q, want prefix %q", ce.Message(), p)
		}
	} else if ce.Message() != msg {
		t.Fatalf("message %q, want %q", ce.Message(), msg)
	}
}

func fsCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestFS_StatFieldsBothCodecs(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	p := filepath.Join(dir, "f.txt")
	os.WriteFile(p, []byte("12345"), 0o640)
	os.Chmod(p, 0o640)
	mt := time.Date(2024, 2, 3, 4, 5, 6, 789000000, time.UTC)
	os.Chtimes(p, mt, mt)
	unix.Setxattr(p, "user.e2b.tag", []byte("v1"), 0)
	os.Symlink("f.txt", filepath.Join(dir, "link"))

	for _, opts := range [][]connect.ClientOption{nil, {connect.WithProtoJSON()}} {
		fs := e.Filesystem(opts...)
		resp, err := fs.Stat(fsCtx(t), connect.NewRequest(&filesystem.StatRequest{Path: p}))
		if err != nil {
			t.Fatal(err)
		}
		en := resp.Msg.Entry
		if en.Name != "f.txt" || en.Path != p || en.Type != filesystem.FileType_FILE_TYPE_FILE || en.Size != 5 || en.Mode != 0o640 ||
			en.Permissions != "-rw-r-----" || en.Owner != "root" || en.Group != "root" || !en.ModifiedTime.AsTime().Equal(mt) ||
			en.SymlinkTarget != nil || en.Metadata["tag"] != "v1" {
			t.Fatalf("%v", en)
		}
		resp, err = fs.Stat(fsCtx(t), connect.NewRequest(&filesystem.StatRequest{Path: filepath.Join(dir, "link")}))
		if err != nil {
			t.Fatal(err)
		}
		en = resp.Msg.Entry
		if en.Type != filesystem.FileType_FILE_TYPE_FILE || en.GetSymlinkTarget() != p || en.Permissions != "Lrwxrwxrwx" || en.Mode != 0o640 || en.Size != 5 {
			t.Fatalf("link %v", en)
		}
		_, err = fs.Stat(fsCtx(t), connect.NewRequest(&filesystem.StatRequest{Path: filepath.Join(dir, "nope")}))
		fsWantCode(t, err, connect.CodeNotFound, "file not found: *")
	}
	// The E2B SDK's JSON: lowerCamelCase names, int64 as a string.
	req, _ := http.NewRequest("POST", e.URL+filesystemconnect.FilesystemStatProcedure, strings.NewReader(`{"path":"`+p+`"}`))
	req.Header.Set("Content-Type", "application/json")
	r, err := fsRawHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	for _, want := range []string{`"size":"5"`, `"type":"FILE_TYPE_FILE"`, `"modifiedTime":"2024-02-03T04:05:06.789Z"`, `"metadata":{"tag":"v1"}`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Fatalf("JSON %s lacks %s", b, want)
		}
	}
}

func TestFS_MakeDirMoveRemoveAsUser(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem(connect.WithProtoJSON())
	d := fsUserDir(t, u)
	rel := filepath.Base(d)

	// Relative to the Basic-auth user's home; parents are the user's.
	resp, err := fs.MakeDir(fsCtx(t), fsAs(&filesystem.MakeDirRequest{Path: rel + "/a/b"}, fsUserName))
	if err != nil {
		t.Fatal(err)
	}
	if en := resp.Msg.Entry; en.Path != filepath.Join(d, "a", "b") || en.Type != filesystem.FileType_FILE_TYPE_DIRECTORY || en.Owner != fsUserName || en.Permissions != "drwxr-xr-x" {
		t.Fatalf("%v", en)
	}
	for _, p := range []string{filepath.Join(d, "a"), filepath.Join(d, "a", "b")} {
		if uid, gid := fsOwner(t, p); uid != u.UID || gid != u.GID {
			t.Fatalf("%s owned by %d:%d", p, uid, gid)
		}
	}
	_, err = fs.MakeDir(fsCtx(t), fsAs(&filesystem.MakeDirRequest{Path: "~/" + rel + "/a/b"}, fsUserName))
	fsWantCode(t, err, connect.CodeAlreadyExists, "directory already exists: "+filepath.Join(d, "a", "b"))
	f := filepath.Join(d, "file")
	os.WriteFile(f, nil, 0o644)
	_, err = fs.MakeDir(fsCtx(t), fsAs(&filesystem.MakeDirRequest{Path: f}, fsUserName))
	fsWantCode(t, err, connect.CodeInvalidArgument, "path already exists but it is not a directory: "+f)
	_, err = fs.MakeDir(fsCtx(t), fsAs(&filesystem.MakeDirRequest{Path: f + "/sub"}, fsUserName))
	fsWantCode(t, err, connect.CodeInternal, "path is a file: "+f)
	_, err = fs.MakeDir(fsCtx(t), fsAs(&filesystem.MakeDirRequest{Path: "~root/x"}, fsUserName))
	fsWantCode(t, err, connect.CodeInvalidArgument, "failed to expand path '~root/x' for user '"+fsUserName+"': cannot expand user-specific home dir")

	// Move creates the destination's parents as the user.
	mresp, err := fs.Move(fsCtx(t), fsAs(&filesystem.MoveRequest{Source: rel + "/file", Destination: rel + "/m/n/moved"}, fsUserName))
	if err != nil {
		t.Fatal(err)
	}
	if mresp.Msg.Entry.Path != filepath.Join(d, "m", "n", "moved") || mresp.Msg.Entry.Name != "moved" {
		t.Fatalf("%v", mresp.Msg.Entry)
	}
	if uid, _ := fsOwner(t, filepath.Join(d, "m", "n")); uid != u.UID {
		t.Fatal("move parents not the user's")
	}
	_, err = fs.Move(fsCtx(t), fsAs(&filesystem.MoveRequest{Source: rel + "/file", Destination: rel + "/x"}, fsUserName))
	fsWantCode(t, err, connect.CodeNotFound, "source file not found: *")
	// Across filesystems there is no copy fallback.
	other := fsMountTmpfs(t, "size=1m")
	_, err = fs.Move(fsCtx(t), fsAs(&filesystem.MoveRequest{Source: filepath.Join(d, "m"), Destination: filepath.Join(other, "m")}, fsUserName))
	fsWantCode(t, err, connect.CodeInternal, "error renaming: *")
	if !strings.Contains(err.Error(), "invalid cross-device link") {
		t.Fatalf("not EXDEV: %v", err)
	}

	// Remove: a tree, then a missing path (success).
	if _, err := fs.Remove(fsCtx(t), fsAs(&filesystem.RemoveRequest{Path: rel + "/a"}, fsUserName)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(d, "a")); !os.IsNotExist(err) {
		t.Fatal("not removed")
	}
	if _, err := fs.Remove(fsCtx(t), fsAs(&filesystem.RemoveRequest{Path: rel + "/a"}, fsUserName)); err != nil {
		t.Fatalf("removing a missing path: %v", err)
	}

	// Without Basic auth the default user acts; an unknown one is refused.
	resp, err = fs.MakeDir(fsCtx(t), connect.NewRequest(&filesystem.MakeDirRequest{Path: filepath.Join(d, "byroot")}))
	if err != nil || resp.Msg.Entry.Owner != "root" {
		t.Fatalf("%v %v", resp, err)
	}
	_, err = fs.Stat(fsCtx(t), fsAs(&filesystem.StatRequest{Path: "/"}, "ghost-user-xyz"))
	fsWantCode(t, err, connect.CodeUnauthenticated, "invalid username: 'ghost-user-xyz'")
}

func TestFS_DefaultUserAndWorkdirFromInit(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem()
	d := fsUserDir(t, u)
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"defaultUser": fsUserName, "defaultWorkdir": d}, nil); resp.StatusCode != 204 {
		t.Fatal("init")
	}
	// An empty path is the workdir; relative paths stay relative to home.
	resp, err := fs.Stat(fsCtx(t), connect.NewRequest(&filesystem.StatRequest{}))
	if err != nil || resp.Msg.Entry.Path != d {
		t.Fatalf("%v %v", resp, err)
	}
	mk, err := fs.MakeDir(fsCtx(t), connect.NewRequest(&filesystem.MakeDirRequest{Path: "fromhome"}))
	if err != nil || mk.Msg.Entry.Path != filepath.Join(u.Home, "fromhome") || mk.Msg.Entry.Owner != fsUserName {
		t.Fatalf("%v %v", mk, err)
	}
	os.RemoveAll(filepath.Join(u.Home, "fromhome"))
	list, err := fs.ListDir(fsCtx(t), connect.NewRequest(&filesystem.ListDirRequest{}))
	if err != nil || len(list.Msg.Entries) != 0 {
		t.Fatalf("%v %v", list, err)
	}
	// An unknown default user makes RPCs unauthenticated.
	postJSON(t, e.URL+"/init", map[string]any{"defaultUser": "ghost-user-xyz"}, nil)
	_, err = fs.Stat(fsCtx(t), connect.NewRequest(&filesystem.StatRequest{Path: "/"}))
	fsWantCode(t, err, connect.CodeUnauthenticated, "invalid default user: 'ghost-user-xyz'")
}

func TestFS_ListDir(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem(connect.WithProtoJSON())
	base := t.TempDir()
	real := filepath.Join(base, "mnt", "d")
	os.MkdirAll(filepath.Join(real, "a", "x", "deep"), 0o755)
	os.MkdirAll(filepath.Join(real, "b"), 0o755)
	os.WriteFile(filepath.Join(real, "a", "x", "f"), []byte("f"), 0o644)
	os.WriteFile(filepath.Join(real, "Z.txt"), nil, 0o644)
	os.Symlink(filepath.Join(real, "a"), filepath.Join(real, "link-a"))
	data := filepath.Join(base, "data")
	os.Symlink(real, data)

	list := func(path string, depth uint32) []string {
		t.Helper()
		resp, err := fs.ListDir(fsCtx(t), connect.NewRequest(&filesystem.ListDirRequest{Path: path, Depth: depth}))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, en := range resp.Msg.Entries {
			if en.Name != filepath.Base(en.Path) {
				t.Fatalf("name %q path %q", en.Name, en.Path)
			}
			rel := strings.TrimPrefix(en.Path, data+"/")
			if en.SymlinkTarget != nil {
				rel += "@" + en.GetSymlinkTarget()
			}
			out = append(out, rel)
		}
		return out
	}
	got := list(data, 0)
	want := []string{"Z.txt", "a", "b", "link-a@" + filepath.Join(real, "a")}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("depth 0: %v", got)
	}
	got = list(data, 2)
	want = []string{"Z.txt", "a", "a/x", "b", "link-a@" + filepath.Join(real, "a")}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("depth 2: %v", got)
	}
	got = list(data, 10)
	want = []string{"Z.txt", "a", "a/x", "a/x/deep", "a/x/f", "b", "link-a@" + filepath.Join(real, "a")}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("depth 10: %v", got)
	}

	_, err := fs.ListDir(fsCtx(t), connect.NewRequest(&filesystem.ListDirRequest{Path: filepath.Join(base, "missing")}))
	fsWantCode(t, err, connect.CodeNotFound, "path not found: *")
	_, err = fs.ListDir(fsCtx(t), connect.NewRequest(&filesystem.ListDirRequest{Path: filepath.Join(real, "Z.txt")}))
	fsWantCode(t, err, connect.CodeInvalidArgument, "path is not a directory: "+filepath.Join(real, "Z.txt"))
	os.Symlink("loop2", filepath.Join(base, "loop1"))
	os.Symlink("loop1", filepath.Join(base, "loop2"))
	_, err = fs.ListDir(fsCtx(t), connect.NewRequest(&filesystem.ListDirRequest{Path: filepath.Join(base, "loop1")}))
	fsWantCode(t, err, connect.CodeFailedPrecondition, `cyclic symlink or chain >255 links at "`+filepath.Join(base, "loop1")+`"`)

	// Entry JSON as the Wrenn host and SDKs read it.
	req, _ := http.NewRequest("POST", e.URL+filesystemconnect.FilesystemListDirProcedure, strings.NewReader(`{"path":"`+data+`","depth":1}`))
	req.Header.Set("Content-Type", "application/json")
	r, err := fsRawHTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Entries []map[string]any `json:"entries"`
	}
	json.NewDecoder(r.Body).Decode(&body)
	r.Body.Close()
	if len(body.Entries) != 4 || body.Entries[3]["symlinkTarget"] != filepath.Join(real, "a") || body.Entries[3]["type"] != "FILE_TYPE_DIRECTORY" {
		t.Fatalf("%v", body.Entries)
	}
}
