package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/internal/envdtest"
)

// hrNamesEnvd runs envd in a mount namespace whose /etc/passwd and
// /etc/group add a user and a group with non-UTF-8 names (uid and gid
// 4242), so that owners can be tested without touching the machine's.
func hrNamesEnvd(t *testing.T) *envdtest.Envd {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []struct{ name, line string }{
		{"passwd", "us\xe9r:x:4242:4242::/nonexistent:/bin/false\n"},
		{"group", "gr\xfcp:x:4242:\n"},
	} {
		orig, err := os.ReadFile("/etc/" + f.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.name), append(orig, f.line...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script := `mount --bind "$D/passwd" /etc/passwd && mount --bind "$D/group" /etc/group && unset D && exec "$0" "$@"`
	return envdtest.Start(t, envdtest.Options{
		Wrap: []string{"env", "D=" + dir, "unshare", "--mount", "--propagation", "private", "sh", "-c", script},
	})
}

// One file whose name is not UTF-8 (and an owner whose name is not) must
// not break the listing of its directory or its parents, the Stat and Move
// answers, or any watcher: invalid bytes are shown as U+FFFD and everything
// else is delivered as it is, in both codecs.
func TestHardening_NonUTF8NamesAreReplacedNotFatal(t *testing.T) {
	e := hrNamesEnvd(t)
	for _, c := range []struct {
		name string
		opts []connect.ClientOption
	}{{"proto", nil}, {"json", []connect.ClientOption{connect.WithProtoJSON()}}} {
		t.Run(c.name, func(t *testing.T) {
			fs := e.Filesystem(c.opts...)
			ctx := hrCtx(t)
			parent := t.TempDir()
			dir := filepath.Join(parent, "w")
			os.Mkdir(dir, 0o755)
			os.Mkdir(filepath.Join(dir, "sub"), 0o755)
			stream := startWatch(t, fs, connect.NewRequest(&filesystem.WatchDirRequest{Path: dir, Recursive: true, IncludeEntry: true}))
			cr, err := fs.CreateWatcher(ctx, connect.NewRequest(&filesystem.CreateWatcherRequest{Path: dir, Recursive: true, IncludeEntry: true}))
			if err != nil {
				t.Fatal(err)
			}

			for _, n := range []string{"good-a", "\xff", "sub/\xfe\xff.txt", "target-\xff", "good-b"} {
				if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			os.Symlink("target-\xff", filepath.Join(dir, "lnk"))
			os.Chown(filepath.Join(dir, "good-a"), 4242, 4242)

			// The stream carries every event, the replaced names among
			// them, and stays open: a later event still arrives.
			stream.waitEvents(t, "CREATE good-a", "CREATE \uFFFD", "CREATE sub/\uFFFD\uFFFD.txt", "CREATE good-b")
			os.WriteFile(filepath.Join(dir, "last"), nil, 0o644)
			stream.waitEvents(t, "CREATE good-b", "CREATE last")

			// The polling watcher loses nothing.
			var polled []string
			deadline := time.Now().Add(15 * time.Second)
			for !inOrder(polled, []string{"CREATE good-a", "CREATE \uFFFD", "CREATE good-b", "CREATE last"}) {
				evs, err := hrPoll(ctx, fs, cr.Msg.GetWatcherId())
				if err != nil {
					t.Fatalf("GetWatcherEvents: %v (after %v)", err, polled)
				}
				polled = append(polled, evStrings(evs)...)
				if time.Now().After(deadline) {
					t.Fatalf("polled %v", polled)
				}
				time.Sleep(20 * time.Millisecond)
			}

			// Listings of the directory and of its parent.
			l, err := fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: dir}))
			if err != nil {
				t.Fatalf("ListDir: %v", err)
			}
			var names []string
			var goodA *filesystem.EntryInfo
			for _, en := range l.Msg.GetEntries() {
				names = append(names, en.GetName())
				if en.GetName() == "good-a" {
					goodA = en
				}
				if en.GetName() == "lnk" && en.GetSymlinkTarget() != filepath.Join(dir, "target-\uFFFD") {
					t.Fatalf("symlink target %q", en.GetSymlinkTarget())
				}
			}
			for _, want := range []string{"good-a", "good-b", "last", "lnk", "sub", "target-\uFFFD", "\uFFFD"} {
				if !slices.Contains(names, want) {
					t.Fatalf("listing %q lacks %q", names, want)
				}
			}
			if goodA.GetOwner() != "us\uFFFDr" || goodA.GetGroup() != "gr\uFFFDp" {
				t.Fatalf("owner %q group %q", goodA.GetOwner(), goodA.GetGroup())
			}
			deep, err := fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: parent, Depth: 3}))
			if err != nil {
				t.Fatalf("recursive ListDir of the parent: %v", err)
			}
			var paths []string
			for _, en := range deep.Msg.GetEntries() {
				paths = append(paths, en.GetPath())
			}
			if !slices.Contains(paths, filepath.Join(dir, "sub", "\uFFFD\uFFFD.txt")) || !slices.Contains(paths, filepath.Join(dir, "good-b")) {
				t.Fatalf("recursive listing %q", paths)
			}

			// Stat and Move answers.
			st, err := fs.Stat(ctx, connect.NewRequest(&filesystem.StatRequest{Path: filepath.Join(dir, "lnk")}))
			if err != nil || st.Msg.GetEntry().GetSymlinkTarget() != filepath.Join(dir, "target-\uFFFD") {
				t.Fatalf("Stat: %v %v", st, err)
			}
			mv, err := fs.Move(ctx, connect.NewRequest(&filesystem.MoveRequest{Source: filepath.Join(dir, "good-a"), Destination: filepath.Join(dir, "moved")}))
			if err != nil || mv.Msg.GetEntry().GetOwner() != "us\uFFFDr" {
				t.Fatalf("Move: %v %v", mv, err)
			}
			if _, err := fs.MakeDir(ctx, connect.NewRequest(&filesystem.MakeDirRequest{Path: filepath.Join(dir, "made")})); err != nil {
				t.Fatalf("MakeDir: %v", err)
			}
			if strings.Contains(e.Log(), "panic") {
				t.Fatal("envd logged a panic")
			}
		})
	}
}
