// Package version holds the protocol level and source commit stamped into the
// binary at build time (see the Makefile's LDFLAGS).
package version

// Version is the E2B envd protocol feature level that this build fully
// implements (spec decision D3): a plain MAJOR.MINOR.PATCH. The Makefile
// stamps it from the VERSION file; the default only applies to builds that
// bypass the Makefile.
var Version = "0.0.0"

// Commit is the source commit, stamped at build time; "unknown" when absent.
var Commit = "unknown"
