package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/envd/envd/internal/envdtest"
)

func TestCompose_ConcatenatesAsUserAndRemovesSources(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{})
	d := fsUserDir(t, u)
	for i, s := range []string{"alpha ", "beta ", "gamma"} {
		os.WriteFile(filepath.Join(d, "part"+string(rune('0'+i))), []byte(s), 0o600)
	}
	rel := filepath.Base(d)
	resp, b := postJSON(t, e.URL+"/files/compose", map[string]any{
		"source_paths": []string{rel + "/part0", "~/" + rel + "/part1", filepath.Join(d, "part2")},
		"destination":  rel + "/out/joined.txt",
		"username":     fsUserName,
	}, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	dest := filepath.Join(d, "out", "joined.txt")
	var out map[string]string
	json.Unmarshal(b, &out)
	if len(out) != 3 || out["path"] != dest || out["name"] != "joined.txt" || out["type"] != "file" {
		t.Fatalf("%s", b)
	}
	data, _ := os.ReadFile(dest)
	st, _ := os.Stat(dest)
	if string(data) != "alpha beta gamma" || st.Mode().Perm() != 0o644 {
		t.Fatalf("%q %v", data, st.Mode())
	}
	for _, p := range []string{dest, filepath.Dir(dest)} {
		if uid, gid := fsOwner(t, p); uid != u.UID || gid != u.GID {
			t.Fatalf("%s owned by %d:%d", p, uid, gid)
		}
	}
	for i := range 3 {
		if _, err := os.Stat(filepath.Join(d, "part"+string(rune('0'+i)))); !os.IsNotExist(err) {
			t.Fatal("source kept after compose")
		}
	}
	fsNoTemps(t, filepath.Dir(dest))
}

func TestCompose_Errors(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.WriteFile(src, []byte("s"), 0o644)
	dest := filepath.Join(dir, "dest")
	os.WriteFile(dest, []byte("untouched"), 0o644)
	cases := []struct {
		body   string
		status int
		msg    string
	}{
		{`{`, 400, "invalid request body: *"},
		{`[]`, 400, "invalid request body: *"},
		{`{"source_paths":"x","destination":"d"}`, 400, "invalid request body: *"},
		{`{"destination":"d"}`, 400, "source_paths must not be empty"},
		{`{"source_paths":[],"destination":"d"}`, 400, "source_paths must not be empty"},
		{`{"source_paths":["a"]}`, 400, "destination is required"},
		{`{"Source_Paths":["a"],"destination":"d"}`, 400, "source_paths must not be empty"},
		{`{"source_paths":["a"],"destination":"d","username":"no-such-user-xyz"}`, 401, "error looking up user 'no-such-user-xyz': unknown user no-such-user-xyz"},
		{`{"source_paths":["a"],"destination":"~bob/d"}`, 400, "error resolving destination path: failed to expand path '~bob/d' for user 'root': cannot expand user-specific home dir"},
		{`{"source_paths":["` + src + `","~bob/x"],"destination":"` + dest + `"}`, 400, `error resolving source path "~bob/x": failed to expand path '~bob/x' for user 'root': cannot expand user-specific home dir`},
		{`{"source_paths":["` + dest + `"],"destination":"` + dest + `"}`, 400, `source path "` + dest + `" cannot be the same as destination`},
		{`{"source_paths":["` + src + `","` + dir + `/missing"],"destination":"` + dest + `"}`, 404, "source file not found: " + dir + "/missing"},
		{`{"source_paths":["` + dir + `"],"destination":"` + dest + `"}`, 400, "source path is not a regular file: " + dir},
		{`{"source_paths":["` + src + `"],"destination":"` + src + `/sub/d"}`, 500, "error ensuring directories: *"},
	}
	for _, c := range cases {
		resp, b := xfer(t, "POST", e.URL+"/files/compose", strings.NewReader(c.body), http.Header{"Content-Type": {"application/json"}})
		fileErr(t, resp, b, c.status, c.msg)
	}
	if data, _ := os.ReadFile(dest); string(data) != "untouched" {
		t.Fatal("destination changed")
	}
	if _, err := os.Stat(src); err != nil {
		t.Fatal("source removed by a failed compose")
	}
	fsNoTemps(t, dir)
}

func TestCompose_ENOSPC(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	dir := fsMountTmpfs(t, "size=1m")
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	chunk := strings.Repeat("x", 400<<10)
	os.WriteFile(a, []byte(chunk), 0o644)
	os.WriteFile(b, []byte(chunk), 0o644)
	resp, body := postJSON(t, e.URL+"/files/compose", map[string]any{"source_paths": []string{a, b}, "destination": filepath.Join(dir, "ab")}, nil)
	fileErr(t, resp, body, 507, "not enough disk space available")
	fsNoTemps(t, dir)
	for _, p := range []string{a, b} {
		if data, _ := os.ReadFile(p); len(data) != len(chunk) {
			t.Fatal("source damaged")
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ab")); !os.IsNotExist(err) {
		t.Fatal("partial destination left")
	}
}
