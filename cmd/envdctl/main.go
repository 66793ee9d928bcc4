// Command envdctl is the operator's tool for envd: it checks health, reads
// metrics and the default environment, configures envd (/init), replaces
// its binary live (/upgrade), runs and attaches to processes (with an
// interactive terminal), copies files and directories both ways, and
// lists, inspects, moves, removes and watches paths in the guest. It is
// built on the public client package only.
//
// Usage:
//
//	envdctl [global flags] COMMAND [flags] [args]
//
// Global flags (also accepted after the command name):
//
//	--addr ADDR    envd address, host[:port] or URL (env ENVD_ADDR, default localhost:49983)
//	--token TOKEN  access token (env ENVD_TOKEN)
//	--user USER    act as this Unix user in the guest (env ENVD_USER; default: envd's default user)
//	--json         machine-readable output
//
// Run "envdctl help" for the commands. Errors are printed as one line on
// stderr; the exit status is 1 for errors, 2 for usage errors, and for
// exec and attach the remote process's exit code (128+N if killed by
// signal N).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/envd/envd/client"
)

// command is one envdctl subcommand.
type command struct {
	name    string
	args    string // synopsis of the operands
	summary string
	// flags registers the command's own flags.
	flags func(fs *flag.FlagSet, o *cmdOpts)
	run   func(a *app, o *cmdOpts, args []string) error
}

// cmdOpts holds every subcommand flag; each command registers the ones it
// uses.
type cmdOpts struct {
	// exec, attach
	tty, interactive, detach bool
	cwd, tag                 string
	env                      envFlag
	timeout                  time.Duration
	// attach, kill
	byTag  bool
	signal string
	// ls, mkdir, watch
	depth                          int
	parents                        bool
	recursive, entry, networkMount bool
	count                          int
	// cp
	gzip, quiet bool
	// init
	clearEnv                    bool
	defaultUser, defaultWorkdir string
	newToken                    string
	timestamp                   bool
	// upgrade
	reexec, noInit bool
}

var commands = []*command{
	cmdHealth, cmdMetrics, cmdEnv, cmdInit, cmdUpgrade,
	cmdPs, cmdExec, cmdAttach, cmdKill,
	cmdCp, cmdLs, cmdStat, cmdMkdir, cmdMv, cmdRm, cmdWatch,
}

// app is one invocation: global settings and standard streams.
type app struct {
	addr, token, user string
	json              bool

	stdin          io.Reader
	stdout, stderr io.Writer
	stdinFile      *os.File // for terminal handling; nil in tests of run
	stdoutFile     *os.File
}

// usageError is a command-line mistake: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// exitCode ends envdctl with a status and no message (exec, attach).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func main() {
	a := &app{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, stdinFile: os.Stdin, stdoutFile: os.Stdout}
	os.Exit(a.main(os.Args[1:]))
}

func (a *app) main(argv []string) int {
	err := a.dispatch(argv)
	var code exitCode
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &code):
		return int(code)
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(a.stderr, "envdctl: %s\n", oneLine(ue.msg))
		fmt.Fprintln(a.stderr, "run 'envdctl help' for usage")
		return 2
	default:
		fmt.Fprintf(a.stderr, "envdctl: %s\n", oneLine(errorText(err)))
		return 1
	}
}

// errorText renders client errors without the package prefix.
func errorText(err error) string {
	var e *client.Error
	if errors.As(err, &e) {
		msg := e.Message
		if msg == "" && e.Err != nil {
			msg = e.Err.Error()
		}
		return fmt.Sprintf("%s: %s", e.Op, msg)
	}
	return err.Error()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// globalFlags registers the global flags on fs, bound to a.
func (a *app) globalFlags(fs *flag.FlagSet) {
	fs.StringVar(&a.addr, "addr", a.addr, "envd address `host[:port]` or URL (env ENVD_ADDR)")
	fs.StringVar(&a.token, "token", a.token, "access `token` (env ENVD_TOKEN)")
	fs.StringVar(&a.user, "user", a.user, "act as this Unix `user` in the guest (env ENVD_USER)")
	fs.BoolVar(&a.json, "json", a.json, "machine-readable JSON output")
}

func (a *app) dispatch(argv []string) error {
	a.addr = envOr("ENVD_ADDR", "localhost:49983")
	a.token = os.Getenv("ENVD_TOKEN")
	a.user = os.Getenv("ENVD_USER")
	gfs := flag.NewFlagSet("envdctl", flag.ContinueOnError)
	gfs.SetOutput(io.Discard)
	a.globalFlags(gfs)
	if err := gfs.Parse(argv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.usage(a.stdout)
			return err
		}
		return usageError{err.Error()}
	}
	rest := gfs.Args()
	if len(rest) == 0 {
		return usagef("no command given")
	}
	name, args := rest[0], rest[1:]
	if name == "help" {
		if len(args) > 0 {
			if c := lookup(args[0]); c != nil {
				a.commandUsage(a.stdout, c)
				return nil
			}
		}
		a.usage(a.stdout)
		return nil
	}
	c := lookup(name)
	if c == nil {
		return usagef("unknown command %q", name)
	}
	fs := flag.NewFlagSet("envdctl "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	a.globalFlags(fs)
	var o cmdOpts
	if c.flags != nil {
		c.flags(fs, &o)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.commandUsage(a.stdout, c)
			return err
		}
		return usagef("%s: %v", c.name, err)
	}
	err := c.run(a, &o, fs.Args())
	if errors.Is(err, errArgCount) {
		return usagef("usage: envdctl %s %s", c.name, c.args)
	}
	return err
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (a *app) usage(w io.Writer) {
	fmt.Fprint(w, `envdctl — operate an envd guest agent

Usage: envdctl [global flags] COMMAND [flags] [args]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Global flags (also accepted after the command):
  --addr ADDR    envd address, host[:port] or URL (env ENVD_ADDR, default localhost:49983)
  --token TOKEN  access token (env ENVD_TOKEN)
  --user USER    act as this Unix user in the guest (env ENVD_USER)
  --json         machine-readable JSON output

Remote paths in cp are written :PATH (":/tmp/x", ":~/x"). Run
'envdctl help COMMAND' for a command's flags.
`)
}

func (a *app) commandUsage(w io.Writer, c *command) {
	fmt.Fprintf(w, "Usage: envdctl %s [flags] %s\n\n%s\n", c.name, c.args, c.summary)
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	var o cmdOpts
	if c.flags != nil {
		c.flags(fs, &o)
	}
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintln(w, "\nFlags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}

// client builds the client from the global settings.
func (a *app) client() (*client.Client, error) {
	var opts []client.Option
	if a.token != "" {
		opts = append(opts, client.WithAccessToken(a.token))
	}
	if a.user != "" {
		opts = append(opts, client.WithUser(a.user))
	}
	c, err := client.New(a.addr, opts...)
	if err != nil {
		return nil, usageError{err.Error()}
	}
	return c, nil
}

// signalContext is cancelled by SIGINT or SIGTERM.
// connect is the prologue of every command that talks to envd: it checks
// the operand count, builds the client, and returns a context that ends on
// Ctrl-C or SIGTERM.
func (a *app) connect(args []string, min, max int) (*client.Client, context.Context, context.CancelFunc, error) {
	if err := needArgs(args, min, max); err != nil {
		return nil, nil, nil, err
	}
	c, err := a.client()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := signalContext()
	return c, ctx, cancel, nil
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// printJSON writes v as indented JSON.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// errArgCount reports a wrong number of operands; dispatch turns it into
// the command's synopsis.
var errArgCount = errors.New("wrong number of operands")

// needArgs checks the operand count (max < 0: no limit).
func needArgs(args []string, min, max int) error {
	if len(args) < min || (max >= 0 && len(args) > max) {
		return errArgCount
	}
	return nil
}

// envFlag collects repeated KEY=VALUE flags.
type envFlag map[string]string

func (e *envFlag) String() string {
	keys := make([]string, 0, len(*e))
	for k := range *e {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

func (e *envFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not KEY=VALUE", s)
	}
	if *e == nil {
		*e = envFlag{}
	}
	(*e)[k] = v
	return nil
}
