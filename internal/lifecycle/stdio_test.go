package lifecycle

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func runStdioHelper(t *testing.T, candidates ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", helperEnv+"=stdio", "ENVD_STDIO_CANDIDATES="+strings.Join(candidates, ","))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v: %s", err, out)
	}
	return string(out)
}

func TestEnsureStdio_OpensFirstUsableCandidate(t *testing.T) {
	dir := t.TempDir()
	console := filepath.Join(dir, "console")
	if err := os.WriteFile(console, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out := runStdioHelper(t, console, "/dev/null")
	if !strings.Contains(out, "opened=[0 2] fd0="+console) {
		t.Fatalf("helper reported %q", out)
	}
	if b, _ := os.ReadFile(console); string(b) != "marker-on-fd2\n" {
		t.Fatalf("fd 2 did not land on the first candidate: %q", b)
	}
}

func TestEnsureStdio_FallsBackWhenConsoleMissing(t *testing.T) {
	dir := t.TempDir()
	null := filepath.Join(dir, "null")
	if err := os.WriteFile(null, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out := runStdioHelper(t, filepath.Join(dir, "no-console"), null)
	if !strings.Contains(out, "opened=[0 2] fd0="+null) {
		t.Fatalf("helper reported %q", out)
	}
	if b, _ := os.ReadFile(null); string(b) != "marker-on-fd2\n" {
		t.Fatalf("fd 2 did not land on the fallback: %q", b)
	}
}

func TestEnsureStdio_LeavesOpenDescriptorsAlone(t *testing.T) {
	if opened := EnsureStdio(); len(opened) != 0 {
		t.Fatalf("the test process has its standard descriptors, yet %v were reopened", opened)
	}
}
