// Package version holds the protocol level and source commit of the binary.
//
// Both can be stamped at build time (the Makefile's LDFLAGS: -X
// .../version.Version=… -X .../version.Commit=…). A plain `go build` or `go
// install` that stamps nothing still tells the truth: the level is Level,
// which a test keeps equal to the VERSION file, and the commit comes from the
// VCS information Go embeds in every binary built inside a git checkout.
package version

import "runtime/debug"

// Level is the E2B envd protocol feature level that this source tree fully
// implements (spec decision D3): a plain MAJOR.MINOR.PATCH. It must equal the
// VERSION file at the top of the repository (TestLevelMatchesVersionFile).
const Level = "0.6.6"

// Version is the level reported by --version, /health and X-Envd-Version.
// A build may stamp it; otherwise it is Level.
var Version = Level

// Commit is the source commit, stamped at build time. Callers use Source,
// which falls back to Go's embedded VCS information.
var Commit = ""

// Source is the source commit of this binary: the stamped Commit if any,
// else the first 12 hex digits of the embedded vcs.revision (with "-dirty"
// when the tree had uncommitted changes), else "unknown".
func Source() string {
	if Commit != "" {
		return Commit
	}
	return fromBuildInfo(debug.ReadBuildInfo())
}

func fromBuildInfo(info *debug.BuildInfo, ok bool) string {
	if !ok || info == nil {
		return "unknown"
	}
	var rev string
	var modified bool
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev == "" {
		return "unknown"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified {
		rev += "-dirty"
	}
	return rev
}
