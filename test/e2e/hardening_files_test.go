package e2e

// Attacks on files and paths (issue 11, items 11–14 and 16): a guest
// process that plants or races symlinks, spellings of one file that fool
// string comparisons, empty RPC paths, metadata a filesystem refuses and a
// FIFO swapped in under a download.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/internal/envdtest"
)

// hardUser2 is a second unprivileged user: the owner of links planted
// against fsUserName's files. hardGroup is shared by the two.
const (
	hardUser2 = "envd-fs-user2"
	hardGroup = "envd-fs-shared"
)

// hardRootDir is a root-owned 0755 directory holding a root-owned 0644 file
// "somefile": what a planted link points at.
func hardRootDir(t *testing.T) (dir, file string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "rootowned")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file = filepath.Join(dir, "somefile")
	if err := os.WriteFile(file, []byte("root's content\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, file
}

// hardLink plants a symlink owned by uid:gid.
func hardLink(t *testing.T, target, link string, uid, gid uint32) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, int(uid), int(gid)); err != nil {
		t.Fatal(err)
	}
}

// hardUnchanged fails unless path still has content, owner root:root, the
// given mode and (for directories) exactly the entries listed.
func hardUnchanged(t *testing.T, path string, content string, mode os.FileMode, entries ...string) {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	s := st.Sys().(*syscall.Stat_t)
	if s.Uid != 0 || s.Gid != 0 || st.Mode() != mode {
		t.Fatalf("%s changed: owner %d:%d mode %v", path, s.Uid, s.Gid, st.Mode())
	}
	if st.IsDir() {
		ents, _ := os.ReadDir(path)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if strings.Join(names, ",") != strings.Join(entries, ",") {
			t.Fatalf("%s holds %v, want %v", path, names, entries)
		}
		return
	}
	if b, _ := os.ReadFile(path); string(b) != content {
		t.Fatalf("%s content %q", path, b)
	}
}

func rawUpload(t *testing.T, e *envdtest.Envd, path, user, data string) (*http.Response, []byte) {
	t.Helper()
	return xfer(t, "POST", filesURL(e, "path", path, "username", user), strings.NewReader(data), http.Header{"Content-Type": {"application/octet-stream"}})
}

func multipartUpload(t *testing.T, e *envdtest.Envd, user string, parts ...filePart) (*http.Response, []byte) {
	t.Helper()
	body, ct := fileMultipart(t, parts...)
	return xfer(t, "POST", filesURL(e, "username", user), body, http.Header{"Content-Type": {ct}})
}

// Item 12: ~/notes.txt -> a root-owned file, planted by the user. Neither
// an upload as that user nor one as root may write (or take over) the
// target, by raw body or multipart, by file name or ?path=.
func TestHardening_UploadRefusesPlantedSymlink(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{})
	rootDir, victim := hardRootDir(t)
	d := fsUserDir(t, u)
	notes := filepath.Join(d, "notes.txt")
	hardLink(t, victim, notes, u.UID, u.GID)
	// A dangling link into the root-owned directory: creating there is
	// just as much out of the user's reach.
	fresh := filepath.Join(d, "fresh.txt")
	hardLink(t, filepath.Join(rootDir, "created"), fresh, u.UID, u.GID)
	// A relative chain: the user's link to the user's link.
	chain := filepath.Join(d, "chain")
	hardLink(t, "notes.txt", chain, u.UID, u.GID)

	refused := func(link string) string {
		return "refusing to follow symlink " + link + " owned by " + fsUserName
	}
	for _, as := range []string{fsUserName, "root"} {
		for _, c := range []struct{ path, link string }{{notes, notes}, {fresh, fresh}, {chain, chain}, {filepath.Base(d) + "/notes.txt", notes}} {
			if as == "root" && !filepath.IsAbs(c.path) {
				continue // relative to root's home
			}
			resp, b := rawUpload(t, e, c.path, as, "owned!")
			fileErr(t, resp, b, 403, refused(c.link))
			resp, b = multipartUpload(t, e, as, filePart{field: "file", filename: c.path, data: []byte("owned!")})
			fileErr(t, resp, b, 403, refused(c.link))
			body, ct := fileMultipart(t, filePart{field: "file", filename: "upload", data: []byte("owned!")})
			resp, b = xfer(t, "POST", filesURL(e, "path", c.path, "username", as), body, http.Header{"Content-Type": {ct}})
			fileErr(t, resp, b, 403, refused(c.link))
		}
	}
	hardUnchanged(t, victim, "root's content\n", 0o644)
	hardUnchanged(t, rootDir, "", os.ModeDir|0o755, "somefile")
	for _, l := range []string{notes, fresh, chain} {
		if fi, err := os.Lstat(l); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("%s is no longer the symlink: %v", l, err)
		}
	}
	fsNoTemps(t, d)
	fsNoTemps(t, rootDir)
	// envd still writes where the user may: the home directory itself.
	resp, b := rawUpload(t, e, filepath.Join(d, "plain.txt"), fsUserName, "fine")
	decodeWritten(t, resp, b)
}

// Item 12, the other side of the rule: links owned by root, and links whose
// owner could write the final file (owner or group bits) or create it, are
// followed; a link owned by someone else who could not is refused even when
// the file belongs to the uploading user.
func TestHardening_UploadFollowsTrustedSymlinks(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	u2 := envdtest.EnsureUser(t, hardUser2, hardGroup)
	e := envdtest.Start(t, envdtest.Options{})
	_, victim := hardRootDir(t)
	d := fsUserDir(t, u)
	gs, err := strconv.ParseUint(groupID(t, hardGroup), 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	gid := uint32(gs)

	// Root's link to a root file: root placed it, it is followed.
	rootLink := filepath.Join(d, "rootlink")
	hardLink(t, victim, rootLink, 0, 0)
	resp, b := rawUpload(t, e, rootLink, "root", "by root")
	if w := decodeWritten(t, resp, b); len(w) != 1 || w[0].Path != rootLink {
		t.Fatalf("%+v", w)
	}
	if data, _ := os.ReadFile(victim); string(data) != "by root" {
		t.Fatalf("root's link not followed: %q", data)
	}

	// The user's own link to the user's own file, as the user and as root.
	own := filepath.Join(d, "own.txt")
	os.WriteFile(own, []byte("old"), 0o640)
	os.Chown(own, int(u.UID), int(u.GID))
	ownLink := filepath.Join(d, "ownlink")
	hardLink(t, "own.txt", ownLink, u.UID, u.GID)
	for _, as := range []string{fsUserName, "root"} {
		resp, b := rawUpload(t, e, ownLink, as, "via "+as)
		decodeWritten(t, resp, b)
		if data, _ := os.ReadFile(own); string(data) != "via "+as {
			t.Fatalf("%q", data)
		}
	}

	// user2's link to the user's file: user2 could not write it.
	foreign := filepath.Join(d, "foreign")
	hardLink(t, own, foreign, u2.UID, u2.GID)
	resp, b = rawUpload(t, e, foreign, fsUserName, "redirected")
	fileErr(t, resp, b, 403, "refusing to follow symlink "+foreign+" owned by "+hardUser2)
	if data, _ := os.ReadFile(own); string(data) != "via root" {
		t.Fatalf("%q", data)
	}

	// Once the file is group-writable for a group user2 is in, user2 could
	// write it: the link is followed.
	os.Chown(own, int(u.UID), int(gid))
	os.Chmod(own, 0o664)
	resp, b = rawUpload(t, e, foreign, fsUserName, "shared")
	decodeWritten(t, resp, b)
	if data, _ := os.ReadFile(own); string(data) != "shared" {
		t.Fatalf("%q", data)
	}

	// A dangling link of the user's into the user's own directory: the
	// file is created there, owned by the user.
	dangling := filepath.Join(d, "dangling")
	hardLink(t, "made-through-link", dangling, u.UID, u.GID)
	resp, b = rawUpload(t, e, dangling, fsUserName, "new")
	decodeWritten(t, resp, b)
	made := filepath.Join(d, "made-through-link")
	if uid, _ := fsOwner(t, made); uid != u.UID {
		t.Fatalf("%s owned by %d", made, uid)
	}
}

// Item 12, symlinked directories in the middle of a path: ~/etc -> a
// root-owned directory, planted by the user. Uploads (existing and new
// files), MakeDir, Move and compose through it are refused for the user and
// for root; a root-owned symlinked directory is followed.
func TestHardening_SymlinkedDirectoryInPath(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem()
	rootDir, _ := hardRootDir(t)
	d := fsUserDir(t, u)
	via := filepath.Join(d, "etc")
	hardLink(t, rootDir, via, u.UID, u.GID)
	refused := "refusing to follow symlink " + via + " owned by " + fsUserName

	for _, as := range []string{fsUserName, "root"} {
		for _, p := range []string{via + "/somefile", via + "/new.txt", via + "/deep/er/new.txt", d + "/./etc/../etc/somefile"} {
			resp, b := rawUpload(t, e, p, as, "x")
			fileErr(t, resp, b, 403, refused)
			resp, b = multipartUpload(t, e, as, filePart{field: "file", filename: p, data: []byte("x")})
			fileErr(t, resp, b, 403, refused)
		}
		_, err := fs.MakeDir(fsCtx(t), fsAs(&filesystem.MakeDirRequest{Path: via + "/sub/dir"}, as))
		fsWantCode(t, err, connect.CodePermissionDenied, refused)
		src := filepath.Join(d, "src-"+as)
		os.WriteFile(src, []byte("moved"), 0o644)
		_, err = fs.Move(fsCtx(t), fsAs(&filesystem.MoveRequest{Source: src, Destination: via + "/moved"}, as))
		fsWantCode(t, err, connect.CodePermissionDenied, refused)
		// Removing through the link: the user could not remove root's file.
		_, err = fs.Remove(fsCtx(t), fsAs(&filesystem.RemoveRequest{Path: via + "/somefile"}, as))
		fsWantCode(t, err, connect.CodePermissionDenied, refused)
		// Moving a root file out through the link is just as refused.
		_, err = fs.Move(fsCtx(t), fsAs(&filesystem.MoveRequest{Source: via + "/somefile", Destination: d + "/stolen"}, as))
		fsWantCode(t, err, connect.CodePermissionDenied, refused)
		resp, b := postJSON(t, e.URL+"/files/compose", map[string]any{"source_paths": []string{src}, "destination": via + "/composed", "username": as}, nil)
		fileErr(t, resp, b, 403, refused)
		// A compose source read and deleted through the link.
		resp, b = postJSON(t, e.URL+"/files/compose", map[string]any{"source_paths": []string{via + "/somefile"}, "destination": d + "/leak-" + as, "username": as}, nil)
		fileErr(t, resp, b, 403, refused)
		if _, err := os.Stat(src); err != nil {
			t.Fatalf("source of a refused operation lost: %v", err)
		}
	}
	hardUnchanged(t, rootDir, "", os.ModeDir|0o755, "somefile")
	hardUnchanged(t, filepath.Join(rootDir, "somefile"), "root's content\n", 0o644)
	for _, p := range []string{"stolen", "leak-root", "leak-" + fsUserName} {
		if _, err := os.Lstat(filepath.Join(d, p)); err == nil {
			t.Fatalf("%s was created", p)
		}
	}

	// Root's symlinked directory is followed; new directories under it
	// belong to the requesting user.
	trusted := filepath.Join(d, "trusted")
	hardLink(t, rootDir, trusted, 0, 0)
	resp, b := rawUpload(t, e, trusted+"/sub/file.txt", fsUserName, "ok")
	decodeWritten(t, resp, b)
	if uid, _ := fsOwner(t, filepath.Join(rootDir, "sub")); uid != u.UID {
		t.Fatal("directory created through root's link not the user's")
	}
	if _, err := fs.MakeDir(fsCtx(t), fsAs(&filesystem.MakeDirRequest{Path: trusted + "/made"}, fsUserName)); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.Remove(fsCtx(t), fsAs(&filesystem.RemoveRequest{Path: trusted + "/sub"}, fsUserName)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(rootDir, "sub")); !os.IsNotExist(err) {
		t.Fatal("remove through root's link did not remove")
	}
	// The link itself is removed, not what it points to.
	if _, err := fs.Remove(fsCtx(t), fsAs(&filesystem.RemoveRequest{Path: via}, fsUserName)); err != nil {
		t.Fatal(err)
	}
	hardUnchanged(t, filepath.Join(rootDir, "somefile"), "root's content\n", 0o644)
}

// Item 13: a relative link is resolved against the directory that really
// holds it, after the symlinked directory on the way — not by joining
// strings — and ".." in a request path is physical too, as in the kernel.
func TestHardening_RelativeLinkResolvedPhysically(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	base := t.TempDir()
	for _, dir := range []string{"real/a", "real/other", "other"} {
		os.MkdirAll(filepath.Join(base, dir), 0o755)
	}
	realFile := filepath.Join(base, "real/other/file")
	decoy := filepath.Join(base, "other/file")
	os.WriteFile(realFile, []byte("real old"), 0o644)
	os.WriteFile(decoy, []byte("decoy"), 0o644)
	os.Symlink("../other/file", filepath.Join(base, "real/a/link"))
	os.Symlink("real/a", filepath.Join(base, "dirlink"))

	target := filepath.Join(base, "dirlink") + "/link"
	resp, b := rawUpload(t, e, target, "root", "new 1")
	if w := decodeWritten(t, resp, b); len(w) != 1 || w[0].Path != target {
		t.Fatalf("%+v", w)
	}
	if data, _ := os.ReadFile(realFile); string(data) != "new 1" {
		t.Fatalf("real target %q", data)
	}
	// The request path itself: dirlink/.. is base/real, not base.
	target = filepath.Join(base, "dirlink") + "/../other/file"
	resp, b = rawUpload(t, e, target, "root", "new 2")
	decodeWritten(t, resp, b)
	if data, _ := os.ReadFile(realFile); string(data) != "new 2" {
		t.Fatalf("real target %q", data)
	}
	// A new file through a dangling relative link lands next to the link's
	// real directory.
	os.Symlink("../other/created", filepath.Join(base, "real/a/dangling"))
	resp, b = rawUpload(t, e, filepath.Join(base, "dirlink")+"/dangling", "root", "created")
	decodeWritten(t, resp, b)
	if data, err := os.ReadFile(filepath.Join(base, "real/other/created")); err != nil || string(data) != "created" {
		t.Fatalf("%q %v", data, err)
	}
	if data, _ := os.ReadFile(decoy); string(data) != "decoy" {
		t.Fatalf("unrelated file written: %q", data)
	}
	if _, err := os.Lstat(filepath.Join(base, "other/created")); err == nil {
		t.Fatal("file created at the lexical path")
	}
	fsNoTemps(t, filepath.Join(base, "real/other"))
}

// Item 14: compose compares files, not strings. Every spelling of the
// destination among the sources is refused, a file listed twice (by any
// spelling or a hard link) is refused, and neither destination nor sources
// are touched by a refused compose.
func TestHardening_ComposeSameFile(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	d := t.TempDir()
	dest := filepath.Join(d, "f")
	os.WriteFile(dest, []byte("DEST"), 0o644)
	a, b := filepath.Join(d, "a"), filepath.Join(d, "b")
	os.WriteFile(a, []byte("A"), 0o644)
	os.WriteFile(b, []byte("B"), 0o644)
	os.Symlink(dest, filepath.Join(d, "tofile"))
	os.Link(dest, filepath.Join(d, "hard"))
	os.Link(a, filepath.Join(d, "hard-a"))
	os.Symlink("a", filepath.Join(d, "to-a"))

	compose := func(dst string, srcs ...string) (*http.Response, []byte) {
		return postJSON(t, e.URL+"/files/compose", map[string]any{"source_paths": srcs, "destination": dst}, nil)
	}
	for _, src := range []string{d + "//f", d + "/./f", d + "/tofile", d + "/hard", d + "/../" + filepath.Base(d) + "/f"} {
		resp, body := compose(dest, a, src)
		fileErr(t, resp, body, 400, fmt.Sprintf("source path %q cannot be the same as destination", src))
	}
	for _, dup := range []string{a, d + "//a", d + "/hard-a", d + "/to-a"} {
		resp, body := compose(dest, a, b, dup)
		fileErr(t, resp, body, 400, fmt.Sprintf("source path %q is listed twice", dup))
	}
	// A destination that does not exist: the same cleaned path is refused.
	resp, body := compose(filepath.Join(d, "new"), a, d+"//new")
	fileErr(t, resp, body, 400, fmt.Sprintf("source path %q cannot be the same as destination", d+"//new"))
	for p, want := range map[string]string{dest: "DEST", a: "A", b: "B"} {
		if data, err := os.ReadFile(p); err != nil || string(data) != want {
			t.Fatalf("%s: %q %v", p, data, err)
		}
	}
	fsNoTemps(t, d)

	// A real compose still works and removes only its sources.
	resp, body = compose(dest, a, b)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var out map[string]string
	json.Unmarshal(body, &out)
	if data, _ := os.ReadFile(dest); string(data) != "AB" || out["path"] != dest {
		t.Fatalf("%q %s", data, body)
	}
	for _, p := range []string{a, b} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Fatalf("source %s kept", p)
		}
	}
	// The hard link of a source keeps its content (only the path given was
	// a source).
	if data, _ := os.ReadFile(filepath.Join(d, "hard-a")); string(data) != "A" {
		t.Fatalf("%q", data)
	}
}

// Item 16: Remove{} and Move with an empty operand are invalid_argument;
// they used to act on the default workdir (Remove{} wiped it).
func TestHardening_EmptyPathRPCs(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem()
	wd := fsUserDir(t, u)
	keep := filepath.Join(wd, "keep.txt")
	os.WriteFile(keep, []byte("keep"), 0o644)
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"defaultWorkdir": wd}, nil); resp.StatusCode != 204 {
		t.Fatal("init")
	}
	for _, as := range []string{"", fsUserName} {
		_, err := fs.Remove(fsCtx(t), fsAs(&filesystem.RemoveRequest{}, as))
		fsWantCode(t, err, connect.CodeInvalidArgument, "path is required")
		_, err = fs.Move(fsCtx(t), fsAs(&filesystem.MoveRequest{Destination: filepath.Join(wd, "moved")}, as))
		fsWantCode(t, err, connect.CodeInvalidArgument, "source is required")
		_, err = fs.Move(fsCtx(t), fsAs(&filesystem.MoveRequest{Source: keep}, as))
		fsWantCode(t, err, connect.CodeInvalidArgument, "destination is required")
		_, err = fs.Move(fsCtx(t), fsAs(&filesystem.MoveRequest{}, as))
		fsWantCode(t, err, connect.CodeInvalidArgument, "source is required")
	}
	if data, err := os.ReadFile(keep); err != nil || string(data) != "keep" {
		t.Fatalf("workdir damaged: %q %v", data, err)
	}
	// A real path still works.
	if _, err := fs.Remove(fsCtx(t), connect.NewRequest(&filesystem.RemoveRequest{Path: keep})); err != nil {
		t.Fatal(err)
	}
}

// Item 16: multipart duplicates are found whatever the spelling.
func TestHardening_MultipartDuplicateCleanedPaths(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	d := t.TempDir()
	first := filepath.Join(d, "a")
	for _, again := range []string{d + "//a", d + "/./a", d + "/a/"} {
		resp, b := multipartUpload(t, e, "",
			filePart{field: "file", filename: first, data: []byte("first")},
			filePart{field: "file", filename: again, data: []byte("second")})
		fileErr(t, resp, b, 400, "you cannot upload multiple files to the same path '"+again+"' in one upload request, only the first specified file was uploaded")
		if data, _ := os.ReadFile(first); string(data) != "first" {
			t.Fatalf("%q", data)
		}
	}
}

// hardExt4 makes and mounts a fresh ext4 filesystem (4 KiB blocks, no
// reserved blocks) of the given size on a loop device; unmounted at the end.
func hardExt4(t *testing.T, size int64) string {
	t.Helper()
	work := t.TempDir()
	img, mnt := filepath.Join(work, "fs.img"), filepath.Join(work, "mnt")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-I", "256", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 (needs e2fsprogs): %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-t", "ext4", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount -o loop (needs root and a loop device): %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", mnt).Run() })
	return mnt
}

// Item 16: ext4 refuses an attribute set that does not fit its xattr block
// with ENOSPC even on an empty disk; that is a 400 (the request is too
// large for this filesystem), while the same ENOSPC on a full disk stays 507.
func TestHardening_MetadataTooLargeForFilesystem(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	mnt := hardExt4(t, 32<<20)
	target := filepath.Join(mnt, "f")
	os.WriteFile(target, []byte("old"), 0o644)
	upload := func(hdr http.Header) (*http.Response, []byte) {
		hdr.Set("Content-Type", "application/octet-stream")
		return xfer(t, "POST", filesURL(e, "path", target), strings.NewReader("new"), hdr)
	}
	// One value that passes envd's 4096-byte rule but not ext4's block.
	resp, b := upload(http.Header{"X-Metadata-K": {strings.Repeat("v", 4080)}})
	fileErr(t, resp, b, 400, "invalid metadata: too large for this filesystem: *")
	// Many keys: the per-entry overhead of ext4 makes them not fit.
	many := http.Header{}
	for i := range 20 {
		many.Set(fmt.Sprintf("X-Metadata-Key%02d", i), strings.Repeat("v", 190))
	}
	resp, b = upload(many)
	fileErr(t, resp, b, 400, "invalid metadata: too large for this filesystem: *")
	if data, _ := os.ReadFile(target); string(data) != "old" {
		t.Fatalf("%q", data)
	}
	fsNoTemps(t, mnt)
	// What fits is stored.
	resp, b = upload(http.Header{"X-Metadata-K": {strings.Repeat("v", 1000)}})
	if w := decodeWritten(t, resp, b); len(w) != 1 || len(w[0].Metadata["k"]) != 1000 {
		t.Fatalf("%+v", w)
	}

	// A full disk: an attribute needing a new block is a real ENOSPC.
	fill, err := os.Create(filepath.Join(mnt, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	for _, chunk := range []int{1 << 20, 4096} {
		buf := make([]byte, chunk)
		for {
			if _, err := fill.Write(buf); err != nil {
				break
			}
		}
	}
	fill.Close()
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil || st.Bavail != 0 {
		t.Fatalf("filesystem not full: %d blocks available (%v)", st.Bavail, err)
	}
	target = filepath.Join(mnt, "g")
	resp, b = xfer(t, "POST", filesURL(e, "path", target), strings.NewReader(""),
		http.Header{"Content-Type": {"application/octet-stream"}, "X-Metadata-Big": {strings.Repeat("w", 600)}})
	fileErr(t, resp, b, 507, "not enough space for file metadata: *")
	fsNoTemps(t, mnt)
}

// Item 16: a download checks the type of the descriptor it opened, not of
// what a stat saw a moment before: a FIFO swapped in between is a 400, not
// an open(2) that blocks the request until some writer appears.
func TestHardening_DownloadFIFOSwapNeverHangs(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	d := t.TempDir()
	regular, fifo, p := filepath.Join(d, "regular"), filepath.Join(d, "fifo"), filepath.Join(d, "p")
	os.WriteFile(regular, []byte("content"), 0o644)
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Link(regular, p)
	// Whatever happens, release an open(2) blocked on the FIFO at the end.
	t.Cleanup(func() {
		if fd, err := unix.Open(fifo, unix.O_RDWR|unix.O_NONBLOCK, 0); err == nil {
			time.Sleep(100 * time.Millisecond)
			unix.Close(fd)
		}
	})
	ctx, stop := context.WithCancel(context.Background())
	swapped := make(chan int)
	go func() {
		n := 0
		for ctx.Err() == nil {
			for _, src := range []string{fifo, regular} {
				tmp := p + ".next"
				if os.Link(src, tmp) == nil && os.Rename(tmp, p) == nil {
					n++
				}
			}
		}
		swapped <- n
	}()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableCompression: true}}
	var ok, refused int
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 400 && time.Now().Before(deadline); i++ {
		resp, err := client.Get(filesURL(e, "path", p))
		if err != nil {
			stop()
			<-swapped
			t.Fatalf("download %d hung or failed: %v", i, err)
		}
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == 200 && buf.String() == "content":
			ok++
		case resp.StatusCode == 400 && strings.Contains(buf.String(), "is not a regular file"):
			refused++
		default:
			stop()
			<-swapped
			t.Fatalf("download %d: %d %q", i, resp.StatusCode, buf.String())
		}
	}
	stop()
	if n := <-swapped; n < 100 || ok == 0 || refused == 0 {
		t.Fatalf("no real race: %d swaps, %d downloads served, %d refused", n, ok, refused)
	}
}

// hardRacerSource is the guest process of the EnsureDirs race: for round k
// it waits for <base>/r<k>/x (a directory envd is creating for the user),
// renames it away and puts a symlink to the root-owned target in its place,
// hoping that envd then chowns (or creates in) the link's target. It prints
// how many swaps it made.
const hardRacerSource = `package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

func main() {
	base, target := os.Args[1], os.Args[2]
	secs, _ := strconv.Atoi(os.Args[3])
	deadline := time.Now().Add(time.Duration(secs) * time.Second)
	swaps := 0
	for k := 0; time.Now().Before(deadline); {
		r := filepath.Join(base, "r"+strconv.Itoa(k))
		x := filepath.Join(r, "x")
		if os.Rename(x, filepath.Join(r, "gone")) == nil {
			os.Symlink(target, x)
			swaps++
			k++
			continue
		}
		if _, err := os.Lstat(filepath.Join(base, "r"+strconv.Itoa(k+1))); err == nil {
			k++
		}
	}
	fmt.Println(swaps)
}
`

// hardBuildRacer compiles hardRacerSource into dir (which the racing user
// can read).
func hardBuildRacer(t *testing.T, dir string) string {
	t.Helper()
	src := filepath.Join(dir, "racer.go")
	if err := os.WriteFile(src, []byte(hardRacerSource), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "racer")
	cmd := exec.Command("go", "build", "-o", bin, src)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build racer: %v: %s", err, out)
	}
	os.Chmod(bin, 0o755)
	return bin
}

// Item 11: while envd creates new nested directories for the user (upload,
// MakeDir, Move and compose in turn), a process of that user swaps each
// just-created directory for a symlink to a root-owned directory. However
// the race falls, the root-owned directory keeps its owner and gets no
// entry.
func TestHardening_EnsureDirsRaceNeverChownsLinkTarget(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{})
	fs := e.Filesystem()
	rootDir, _ := hardRootDir(t)
	before, _ := os.Stat(rootDir)
	d := fsUserDir(t, u)
	race := filepath.Join(d, "race")
	srcs := filepath.Join(d, "srcs")
	for _, p := range []string{race, srcs} {
		os.Mkdir(p, 0o755)
		os.Chown(p, int(u.UID), int(u.GID))
	}
	bin := hardBuildRacer(t, d)

	const seconds = 20
	racer := exec.Command(bin, race, rootDir, strconv.Itoa(seconds))
	racer.SysProcAttr = &syscall.SysProcAttr{Credential: u.Credential()}
	var out bytes.Buffer
	racer.Stdout = &out
	if err := racer.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- racer.Wait() }()
	t.Cleanup(func() {
		racer.Process.Kill()
		<-done
	})

	const rounds = 800
	deadline := time.Now().Add((seconds - 2) * time.Second)
	statuses := map[string]int{}
	code := func(err error) string {
		if err == nil {
			return "ok"
		}
		return connect.CodeOf(err).String()
	}
	k := 0
	for ; k < rounds && time.Now().Before(deadline); k++ {
		dest := filepath.Join(race, "r"+strconv.Itoa(k), "x", "y")
		switch k % 4 {
		case 0:
			resp, _ := rawUpload(t, e, dest+"/f", fsUserName, "data")
			statuses[fmt.Sprint("upload ", resp.StatusCode)]++
		case 1:
			_, err := fs.MakeDir(fsCtx(t), fsAs(&filesystem.MakeDirRequest{Path: dest}, fsUserName))
			statuses[fmt.Sprint("makedir ", code(err))]++
		case 2:
			src := filepath.Join(srcs, "m"+strconv.Itoa(k))
			os.WriteFile(src, []byte("m"), 0o644)
			_, err := fs.Move(fsCtx(t), fsAs(&filesystem.MoveRequest{Source: src, Destination: dest + "/f"}, fsUserName))
			statuses[fmt.Sprint("move ", code(err))]++
		case 3:
			src := filepath.Join(srcs, "c"+strconv.Itoa(k))
			os.WriteFile(src, []byte("c"), 0o644)
			resp, _ := postJSON(t, e.URL+"/files/compose", map[string]any{"source_paths": []string{src}, "destination": dest + "/f", "username": fsUserName}, nil)
			statuses[fmt.Sprint("compose ", resp.StatusCode)]++
		}
		st, err := os.Stat(rootDir)
		if err != nil {
			t.Fatal(err)
		}
		if s := st.Sys().(*syscall.Stat_t); s.Uid != 0 || s.Gid != 0 || st.Mode() != before.Mode() {
			t.Fatalf("round %d: root-owned target now %d:%d %v (%v)", k, s.Uid, s.Gid, st.Mode(), statuses)
		}
	}
	racer.Process.Signal(syscall.SIGTERM)
	hardUnchanged(t, rootDir, "", before.Mode(), "somefile")
	t.Logf("%d rounds: %v", k, statuses)
	if k < 100 {
		t.Fatalf("only %d rounds ran", k)
	}
}
