// Package proto holds the .proto files of the two services; this test guards
// the wire format they define.
package proto

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buf breaking (run by make lint) compares the protos with the descriptor
// set released at protocol level 0.6.4. The check must pass on the tree as
// it is and fail for a change that breaks the SDKs' wire format: a field
// renumbered, or a JSON name changed.
func TestBreaking_DetectsWireChanges(t *testing.T) {
	if testing.Short() {
		t.Skip("builds buf")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	against := filepath.Join(root, "proto", "compat", "envd-0.6.4.binpb")
	cases := []struct {
		name, file, old, new string
		breaks               bool
	}{
		{name: "unchanged", breaks: false},
		{"renumbered field", "process/process.proto", "uint32 pid = 2;", "uint32 pid = 9;", true},
		{"renamed field (JSON name)", "filesystem/filesystem.proto", "string watcher_id = 1;", "string watcher_ident = 1;", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range []string{"process/process.proto", "filesystem/filesystem.proto"} {
				b, err := os.ReadFile(filepath.Join(root, "proto", f))
				if err != nil {
					t.Fatal(err)
				}
				s := string(b)
				if f == c.file {
					if !strings.Contains(s, c.old) {
						t.Fatalf("%s no longer contains %q: update this test", f, c.old)
					}
					s = strings.Replace(s, c.old, c.new, 1)
				}
				if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, f), []byte(s), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			conf, err := os.ReadFile(filepath.Join(root, "buf.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			conf = []byte(strings.Replace(string(conf), "  - path: proto\n", "  - path: .\n", 1))
			if err := os.WriteFile(filepath.Join(dir, "buf.yaml"), conf, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("go", "tool", "buf", "breaking", dir, "--against", against)
			cmd.Dir = root
			out, err := cmd.CombinedOutput()
			if c.breaks {
				if err == nil {
					t.Fatalf("buf breaking accepted a wire change:\n%s", out)
				}
				if _, ok := err.(*exec.ExitError); !ok {
					t.Fatalf("buf did not run: %v\n%s", err, out)
				}
				t.Logf("refused as expected:\n%s", out)
			} else if err != nil {
				t.Fatalf("buf breaking refused the unchanged protos: %v\n%s", err, out)
			}
		})
	}
}
