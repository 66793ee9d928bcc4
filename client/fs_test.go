package client_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/client"
	"github.com/envd/envd/internal/envdtest"
)

func TestFilesystem_StatListMakeMoveRemove(t *testing.T) {
	for _, codec := range []string{"binary", "json"} {
		t.Run(codec, func(t *testing.T) {
			var opts []client.Option
			if codec == "json" {
				opts = append(opts, client.WithJSONCodec())
			}
			_, c := start(t, opts...)
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "f.txt"), []byte("12345"), 0o640); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("f.txt", filepath.Join(dir, "link")); err != nil {
				t.Fatal(err)
			}

			e, err := c.Stat(ctx(t), filepath.Join(dir, "f.txt"))
			if err != nil {
				t.Fatal(err)
			}
			if e.Name != "f.txt" || e.Type != client.FileTypeFile || e.Size != 5 || e.Mode != 0o640 ||
				e.Permissions != "-rw-r-----" || e.Owner != "root" || e.Group != "root" || e.Symlink ||
				time.Since(e.ModTime) > time.Hour || e.IsDir() {
				t.Fatalf("stat %+v", e)
			}
			l, err := c.Stat(ctx(t), filepath.Join(dir, "link"))
			if err != nil {
				t.Fatal(err)
			}
			if !l.Symlink || l.SymlinkTarget != filepath.Join(dir, "f.txt") || l.Type != client.FileTypeFile || l.Permissions != "Lrwxrwxrwx" {
				t.Fatalf("stat of link %+v", l)
			}
			_, err = c.Stat(ctx(t), filepath.Join(dir, "missing"))
			wantError(t, err, connect.CodeNotFound, 404, "")
			if !client.IsNotFound(err) {
				t.Fatal("IsNotFound false")
			}

			d, err := c.MakeDir(ctx(t), filepath.Join(dir, "a", "b"))
			if err != nil {
				t.Fatal(err)
			}
			if d.Type != client.FileTypeDir || d.Path != filepath.Join(dir, "a", "b") || !d.IsDir() {
				t.Fatalf("made %+v", d)
			}
			_, err = c.MakeDir(ctx(t), filepath.Join(dir, "a"))
			wantError(t, err, connect.CodeAlreadyExists, 409, "directory already exists: "+filepath.Join(dir, "a"))
			if !client.IsAlreadyExists(err) {
				t.Fatal("IsAlreadyExists false")
			}
			_, err = c.MakeDir(ctx(t), filepath.Join(dir, "f.txt"))
			wantError(t, err, connect.CodeInvalidArgument, 400, "")

			m, err := c.Move(ctx(t), filepath.Join(dir, "f.txt"), filepath.Join(dir, "a", "b", "g.txt"))
			if err != nil {
				t.Fatal(err)
			}
			if m.Path != filepath.Join(dir, "a", "b", "g.txt") || m.Size != 5 {
				t.Fatalf("moved %+v", m)
			}
			_, err = c.Move(ctx(t), filepath.Join(dir, "f.txt"), filepath.Join(dir, "x"))
			wantError(t, err, connect.CodeNotFound, 404, "")

			one, err := c.ListDir(ctx(t), dir, 1)
			if err != nil {
				t.Fatal(err)
			}
			if names(one) != "a link" {
				t.Fatalf("depth 1: %s", names(one))
			}
			all, err := c.ListDir(ctx(t), dir, 10)
			if err != nil {
				t.Fatal(err)
			}
			if names(all) != "a b g.txt link" || all[2].Path != filepath.Join(dir, "a", "b", "g.txt") {
				t.Fatalf("depth 10: %s (%+v)", names(all), all)
			}
			_, err = c.ListDir(ctx(t), filepath.Join(dir, "nope"), 1)
			wantError(t, err, connect.CodeNotFound, 404, "")
			_, err = c.ListDir(ctx(t), filepath.Join(dir, "a", "b", "g.txt"), 1)
			wantError(t, err, connect.CodeInvalidArgument, 400, "")

			if err := c.Remove(ctx(t), filepath.Join(dir, "a")); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(dir, "a")); !os.IsNotExist(err) {
				t.Fatal("tree not removed")
			}
			err = c.Remove(ctx(t), "~nobody-else/x")
			wantError(t, err, connect.CodeInvalidArgument, 400, "")
			// Removing what does not exist succeeds.
			if err := c.Remove(ctx(t), filepath.Join(dir, "a")); err != nil {
				t.Fatal(err)
			}
			// Entries encode to readable JSON for scripts.
			b, _ := json.Marshal(l)
			var back map[string]any
			if json.Unmarshal(b, &back); back["type"] != "file" || back["symlink"] != true || back["permissions"] != "Lrwxrwxrwx" {
				t.Fatalf("entry JSON %s", b)
			}
		})
	}
}

func TestFilesystem_AsUser(t *testing.T) {
	_, c := start(t)
	u := envdtest.EnsureUser(t, "envdclient")
	uc := c.As(u.Name)
	_ = uc.Remove(ctx(t), "~/fs-as-user")
	d, err := uc.MakeDir(ctx(t), "~/fs-as-user/x")
	if err != nil {
		t.Fatal(err)
	}
	if d.Path != filepath.Join(u.Home, "fs-as-user", "x") || d.Owner != u.Name {
		t.Fatalf("made %+v", d)
	}
	_ = uc.Remove(ctx(t), "~/fs-as-user")
}

func names(es []client.EntryInfo) string {
	s := ""
	for i, e := range es {
		if i > 0 {
			s += " "
		}
		s += e.Name
	}
	return s
}
