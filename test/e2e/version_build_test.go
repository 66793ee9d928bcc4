package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/envd/envd/internal/envdtest"
)

// A plain `go build ./cmd/envd`, without the Makefile's ldflags, reports the
// protocol level of VERSION (the SDKs switch features off for 0.0.0) and the
// commit Go embedded from the checkout (where VCS stamping is on, Go's
// default).
func TestVersion_PlainBuildTellsTheTruth(t *testing.T) {
	root, err := envdtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "envd")
	build := exec.Command("go", "build", "-o", bin, "./cmd/envd")
	build.Dir = root
	// This machine kind's Go configuration sets GOFLAGS=-buildvcs=false;
	// the environment variable overrides it, as on a default installation.
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=auto")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(out)), envdtest.Version(t); got != want {
		t.Fatalf("--version of a plain build: %q, VERSION says %q", got, want)
	}
	out, err = exec.Command(bin, "--commit").Output()
	if err != nil {
		t.Fatal(err)
	}
	commit := strings.TrimSpace(string(out))
	rev := exec.Command("git", "rev-parse", "--short=12", "HEAD")
	rev.Dir = root
	head, err := rev.Output()
	if err != nil {
		t.Skipf("no git checkout to compare with (%v); commit reported: %s", err, commit)
	}
	if fi, err := os.Stat(filepath.Join(root, ".git")); commit == "unknown" && err == nil && !fi.IsDir() {
		// Go embeds no VCS information in builds from a git worktree
		// (.git is a file there); CI builds from a clone.
		t.Skipf("checkout is a git worktree: Go embedded no commit")
	}
	if want := strings.TrimSpace(string(head)); !strings.HasPrefix(commit, want) {
		t.Fatalf("--commit of a plain build: %q, HEAD is %q", commit, want)
	}
}
