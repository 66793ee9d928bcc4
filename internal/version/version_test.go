package version

import (
	"os"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"
)

// The two sources of the protocol level — the VERSION file the Makefile
// stamps from and the constant a plain `go build` reports — never drift.
func TestLevelMatchesVersionFile(t *testing.T) {
	b, err := os.ReadFile("../../VERSION")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != Level {
		t.Fatalf("VERSION says %q, version.Level says %q: change both together", got, Level)
	}
	if !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(Level) {
		t.Fatalf("level %q is not a plain MAJOR.MINOR.PATCH (spec D3)", Level)
	}
}

func TestFromBuildInfo(t *testing.T) {
	settings := func(kv ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{}
		for i := 0; i < len(kv); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return bi
	}
	cases := []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want string
	}{
		{"no build info", nil, false, "unknown"},
		{"no vcs", settings("GOOS", "linux"), true, "unknown"},
		{"clean", settings("vcs.revision", "0123456789abcdef0123", "vcs.modified", "false"), true, "0123456789ab"},
		{"dirty", settings("vcs.revision", "0123456789abcdef0123", "vcs.modified", "true"), true, "0123456789ab-dirty"},
		{"short", settings("vcs.revision", "abc"), true, "abc"},
	}
	for _, c := range cases {
		if got := fromBuildInfo(c.bi, c.ok); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}
