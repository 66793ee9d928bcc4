// Package config parses envd's command line (spec lifecycle.md §1.3) and the
// few test-only settings that come from environment variables.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// DefaultPort is the TCP port envd listens on unless --port says otherwise.
const DefaultPort = 49983

// DefaultCgroupRoot is the cgroup v2 hierarchy envd manages by default.
const DefaultCgroupRoot = "/sys/fs/cgroup"

// Config is the parsed command line.
type Config struct {
	Port         int
	IsNotFC      bool
	PrintVersion bool
	PrintCommit  bool
	Cmd          string
	CgroupRoot   string
	NoCgroups    bool
	Verbose      bool
	// Positional holds arguments left after flag parsing stopped; they are
	// ignored (a kernel may pass stray command-line words to init).
	Positional []string
}

// Action tells the caller what to do after parsing.
type Action int

const (
	// Run means start the daemon.
	Run Action = iota
	// Exit means stop now with the exit code Parse returned (help, version,
	// commit or a parse error), unless envd is PID 1.
	Exit
)

// Result is what Parse decided.
type Result struct {
	Config Config
	Action Action
	// ExitCode applies when Action is Exit.
	ExitCode int
	// Err is the parse error, if any (already reported in usage form on
	// stderr). As PID 1 the caller logs it and continues with Config.
	Err error
}

// Parse parses args (without the program name) with the semantics of Go's
// flag package: one or two dashes, "--flag=value" or "--flag value",
// booleans only as "--flag" or "--flag=bool". Version and commit are printed
// to stdout here; usage goes to stderr.
//
// When pid1 is true nothing makes the caller exit: the kernel would panic if
// init exited. Flags parsed before an error keep their values.
func Parse(args []string, stdout, stderr io.Writer, version, commit string, pid1 bool) Result {
	cfg := Config{Port: DefaultPort, CgroupRoot: DefaultCgroupRoot}
	fs := flag.NewFlagSet("envd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&cfg.Port, "port", DefaultPort, "TCP port to listen on (all addresses)")
	fs.BoolVar(&cfg.IsNotFC, "isnotfc", false, "not running inside Firecracker: no MMDS, text logs, clock never set, no port forwarding")
	fs.BoolVar(&cfg.PrintVersion, "version", false, "print the version and exit")
	fs.BoolVar(&cfg.PrintCommit, "commit", false, "print the source commit and exit")
	fs.StringVar(&cfg.Cmd, "cmd", "", "command to start once at startup (as /bin/bash -l -c <cmd>, tag init-cmd)")
	fs.StringVar(&cfg.CgroupRoot, "cgroup-root", DefaultCgroupRoot, "root of the cgroup v2 hierarchy envd manages")
	fs.BoolVar(&cfg.NoCgroups, "no-cgroups", false, "do not create cgroups or place processes in them")
	fs.BoolVar(&cfg.Verbose, "verbose", false, "log at debug level")

	res := Result{Action: Run}
	err := fs.Parse(args)
	if err == nil && (cfg.Port < 1 || cfg.Port > 65535) {
		err = fmt.Errorf("invalid value %d for flag -port: must be 1-65535", cfg.Port)
		fmt.Fprintln(stderr, err)
		fs.Usage()
		cfg.Port = DefaultPort
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = DefaultCgroupRoot
	}
	cfg.Positional = fs.Args()
	res.Config = cfg
	if err != nil {
		res.Err = err
		if !pid1 {
			res.Action = Exit
			res.ExitCode = 2
			if errors.Is(err, flag.ErrHelp) {
				res.ExitCode = 0
			}
		}
		return res
	}
	// --version is checked before --commit. As PID 1 both are printed and
	// startup continues.
	if cfg.PrintVersion {
		fmt.Fprintln(stdout, version)
		if !pid1 {
			res.Action = Exit
			return res
		}
	}
	if cfg.PrintCommit {
		if commit == "" {
			commit = "unknown"
		}
		fmt.Fprintln(stdout, commit)
		if !pid1 {
			res.Action = Exit
			return res
		}
	}
	return res
}

// VersionText is what --version prints (lifecycle.md §1.3): the version
// and, when the environment has ENVD_HANDOVER_PROBE=1 (the live upgrade's
// compatibility probe, control-plane.md §8.5), a second line
// `handover-schema <N>` with the highest record schema this binary reads.
func VersionText(version string, getenv func(string) string, schema int) string {
	if getenv(EnvHandoverProbe) == "1" {
		return fmt.Sprintf("%s\nhandover-schema %d", version, schema)
	}
	return version
}

// String renders the configuration for the startup log.
func (c Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "port=%d isnotfc=%t cgroup-root=%s no-cgroups=%t verbose=%t", c.Port, c.IsNotFC, c.CgroupRoot, c.NoCgroups, c.Verbose)
	if c.Cmd != "" {
		fmt.Fprintf(&b, " cmd=%q", c.Cmd)
	}
	return b.String()
}
