package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/client"
)

var cmdPs = &command{
	name:    "ps",
	summary: "list the processes envd runs",
	run: func(a *app, o *cmdOpts, args []string) error {
		c, ctx, cancel, err := a.connect(args, 0, 0)
		if err != nil {
			return err
		}
		defer cancel()
		list, err := c.List(ctx)
		if err != nil {
			return err
		}
		if a.json {
			return a.printJSON(list)
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PID\tTAG\tCOMMAND")
		for _, p := range list {
			tag := "-"
			if p.Tagged {
				tag = p.Tag
				if tag == "" {
					tag = `""`
				}
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\n", p.PID, tag, shellJoin(append([]string{p.Cmd}, p.Args...)))
		}
		return tw.Flush()
	},
}

var cmdKill = &command{
	name:    "kill",
	args:    "TAG|PID...",
	summary: "signal processes (and their process groups)",
	flags: func(fs *flag.FlagSet, o *cmdOpts) {
		fs.StringVar(&o.signal, "s", "TERM", "`signal` to send: TERM or KILL")
		fs.BoolVar(&o.byTag, "tag", false, "treat every operand as a tag, even if numeric")
	},
	run: func(a *app, o *cmdOpts, args []string) error {
		if err := needArgs(args, 1, -1); err != nil {
			return err
		}
		sig, err := parseSignal(o.signal)
		if err != nil {
			return err
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		ctx, cancel := signalContext()
		defer cancel()
		type killed struct {
			Target string `json:"target"`
			Signal string `json:"signal"`
		}
		var done []killed
		for _, arg := range args {
			sel := parseSelector(arg, o.byTag)
			if err := c.Signal(ctx, sel, sig); err != nil {
				return fmt.Errorf("%s: %s", sel, errorText(err))
			}
			done = append(done, killed{Target: sel.String(), Signal: sig.String()})
		}
		if a.json {
			return a.printJSON(done)
		}
		return nil
	},
}

var cmdExec = &command{
	name:    "exec",
	args:    "[--] CMD [ARG...]",
	summary: "run a command in the guest and relay its output and exit code",
	flags: func(fs *flag.FlagSet, o *cmdOpts) {
		fs.BoolVar(&o.tty, "t", false, "run on a pseudo-terminal, interactively (default command: an interactive login bash)")
		fs.BoolVar(&o.interactive, "i", false, "forward this program's stdin to the command's stdin")
		fs.BoolVar(&o.detach, "d", false, "start in the background, print the pid and return")
		fs.StringVar(&o.cwd, "cwd", "", "working `directory` (default: envd's default workdir, else the user's home)")
		fs.Var(&o.env, "e", "environment variable `KEY=VALUE` (repeatable)")
		fs.Var(&o.env, "env", "same as -e")
		fs.StringVar(&o.tag, "tag", "", "tag the process, to find it again with attach or kill")
		fs.DurationVar(&o.timeout, "timeout", 0, "kill the process (and its group) after this `duration`")
	},
	run: runExec,
}

var cmdAttach = &command{
	name:    "attach",
	args:    "TAG|PID",
	summary: "attach to a running process: relay its output (and input) until it ends",
	flags: func(fs *flag.FlagSet, o *cmdOpts) {
		fs.BoolVar(&o.tty, "t", false, "interactive: raw terminal, input and window size go to the process's pseudo-terminal")
		fs.BoolVar(&o.interactive, "i", false, "forward this program's stdin to the process's stdin")
		fs.BoolVar(&o.byTag, "tag", false, "treat the operand as a tag, even if numeric")
	},
	run: func(a *app, o *cmdOpts, args []string) error {
		if err := needArgs(args, 1, 1); err != nil {
			return err
		}
		if o.tty && a.json {
			return usagef("attach: -t and --json exclude each other")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		p, err := c.Connect(context.Background(), parseSelector(args[0], o.byTag))
		if err != nil {
			return err
		}
		defer p.Close()
		if o.tty {
			if cols, rows, ok := terminalSize(a.stdinFile); ok {
				_ = p.Resize(context.Background(), cols, rows)
			}
		}
		if a.json {
			return a.collect(p, o.interactive)
		}
		return a.interact(p, o.tty, o.interactive, 0)
	},
}

func runExec(a *app, o *cmdOpts, args []string) error {
	if len(args) == 0 && o.tty {
		args = []string{"/bin/bash", "-i", "-l"}
	}
	if err := needArgs(args, 1, -1); err != nil {
		return err
	}
	if o.tty && a.json {
		return usagef("exec: -t and --json exclude each other")
	}
	if o.detach && (o.tty || o.interactive) {
		return usagef("exec: -d excludes -t and -i")
	}
	c, err := a.client()
	if err != nil {
		return err
	}
	var opts []client.StartOption
	if o.cwd != "" {
		opts = append(opts, client.WithCwd(o.cwd))
	}
	env := map[string]string(o.env)
	if o.tty {
		cols, rows, ok := terminalSize(a.stdinFile)
		if !ok {
			cols, rows = 80, 24
		}
		opts = append(opts, client.WithPTY(cols, rows))
		// Like the E2B SDK's terminals: a usable TERM and UTF-8 unless the
		// caller says otherwise.
		term := envOr("TERM", "xterm-256color")
		if env == nil {
			env = map[string]string{}
		}
		for k, v := range map[string]string{"TERM": term, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"} {
			if _, set := env[k]; !set {
				env[k] = v
			}
		}
	}
	if len(env) > 0 {
		opts = append(opts, client.WithEnv(env))
	}
	if o.tag != "" {
		opts = append(opts, client.WithTag(o.tag))
	}
	if o.timeout > 0 {
		opts = append(opts, client.WithTimeout(o.timeout))
	}
	if o.interactive {
		opts = append(opts, client.WithStdin())
	}
	p, err := c.Start(context.Background(), args[0], args[1:], opts...)
	if err != nil {
		return err
	}
	defer p.Close()
	if o.detach {
		if a.json {
			return a.printJSON(map[string]any{"pid": p.PID()})
		}
		fmt.Fprintln(a.stdout, p.PID())
		return nil
	}
	if a.json {
		return a.collect(p, o.interactive)
	}
	return a.interact(p, o.tty, o.interactive, o.timeout)
}

// interact relays a process's output to stdout/stderr and, with tty or
// stdinPipe, this program's input to it, until the process ends; it
// returns the process's exit code as an exitCode.
func (a *app) interact(p *client.Process, tty, stdinPipe bool, timeout time.Duration) error {
	var raw *terminal
	if tty && isTerminal(a.stdinFile) {
		var err error
		if raw, err = makeRaw(a.stdinFile); err != nil {
			return fmt.Errorf("cannot put the terminal in raw mode: %w", err)
		}
		defer raw.restore()
	}
	stop := make(chan struct{})
	defer close(stop)

	if tty {
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-winch:
					if cols, rows, ok := terminalSize(a.stdinFile); ok {
						rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						_ = p.Resize(rctx, cols, rows)
						cancel()
					}
				}
			}
		}()
	}
	a.forwardSignals(p, stop)
	if tty || stdinPipe {
		go a.forwardInput(p, tty)
	}

	var wg sync.WaitGroup
	relay := func(w io.Writer, r io.Reader) {
		defer wg.Done()
		_, _ = io.Copy(w, r)
	}
	wg.Add(3)
	go relay(a.stdout, p.Stdout())
	go relay(a.stderr, p.Stderr())
	go relay(a.stdout, p.PTY())
	wg.Wait()
	st, err := p.Wait()
	raw.restore()
	if err != nil {
		if client.CodeOf(err) == connect.CodeDeadlineExceeded && timeout > 0 {
			fmt.Fprintf(a.stderr, "envdctl: process %d killed: --timeout %v passed\n", p.PID(), timeout)
			return exitCode(124)
		}
		return err
	}
	return statusCode(st)
}

// forwardSignals relays SIGINT, SIGTERM and SIGHUP to the process: the
// first as SIGTERM, any further one as SIGKILL. In raw terminal mode ^C is
// not a signal here but a byte for the remote terminal.
func (a *app) forwardSignals(p *client.Process, stop <-chan struct{}) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		defer signal.Stop(sigs)
		sig := client.SIGTERM
		for {
			select {
			case <-stop:
				return
			case <-sigs:
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_ = p.Signal(ctx, sig)
				cancel()
				sig = client.SIGKILL
			}
		}
	}()
}

// forwardInput copies this program's stdin to the process, one RPC per
// read so that typed input goes out at once, and closes the process's
// stdin at end of file (a terminal gets no end of file: the user types
// Ctrl-D). It returns when stdin ends or the process is gone; envdctl
// exits without waiting for it.
func (a *app) forwardInput(p *client.Process, tty bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := a.stdin.Read(buf)
		if n > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			var serr error
			if tty {
				serr = p.SendPTY(ctx, buf[:n])
			} else {
				serr = p.SendStdin(ctx, buf[:n])
			}
			cancel()
			if serr != nil {
				return
			}
		}
		if err != nil {
			if !tty {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				_ = p.CloseStdin(ctx)
				cancel()
			}
			return
		}
	}
}

// execResult is the --json output of exec and attach.
type execResult struct {
	PID uint32 `json:"pid"`
	client.ExitStatus
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
}

// collect gathers the output of p for --json, forwarding stdin if asked.
func (a *app) collect(p *client.Process, stdinPipe bool) error {
	stop := make(chan struct{})
	defer close(stop)
	a.forwardSignals(p, stop)
	if stdinPipe {
		go a.forwardInput(p, false)
	}
	var stdout, stderr, tty bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); _, _ = io.Copy(&stdout, p.Stdout()) }()
	go func() { defer wg.Done(); _, _ = io.Copy(&stderr, p.Stderr()) }()
	go func() { defer wg.Done(); _, _ = io.Copy(&tty, p.PTY()) }()
	wg.Wait()
	st, err := p.Wait()
	if err != nil {
		return err
	}
	stdout.Write(tty.Bytes())
	if err := a.printJSON(execResult{PID: p.PID(), ExitStatus: st, Stdout: stdout.String(), Stderr: stderr.String()}); err != nil {
		return err
	}
	return statusCode(st)
}

// statusCode maps an exit status to envdctl's own: the exit code, or
// 128+N for a process killed by signal N, like a shell.
func statusCode(st client.ExitStatus) error {
	if st.Exited {
		return exitCode(st.Code & 0xff)
	}
	if n := st.Signal(); n > 0 {
		return exitCode(128 + n)
	}
	return exitCode(128)
}

// parseSelector reads a numeric operand as a pid and anything else as a
// tag.
func parseSelector(arg string, byTag bool) client.Selector {
	if !byTag {
		if n, err := strconv.ParseUint(arg, 10, 32); err == nil {
			return client.PID(uint32(n))
		}
	}
	return client.Tag(arg)
}

func parseSignal(s string) (client.Signal, error) {
	switch strings.TrimPrefix(strings.ToUpper(s), "SIG") {
	case "TERM", "15":
		return client.SIGTERM, nil
	case "KILL", "9":
		return client.SIGKILL, nil
	}
	return 0, usagef("kill: unsupported signal %q (envd delivers TERM and KILL)", s)
}

// shellJoin renders argv for display, quoting words a shell would split.
func shellJoin(argv []string) string {
	var b strings.Builder
	for i, w := range argv {
		if i > 0 {
			b.WriteByte(' ')
		}
		if w != "" && !strings.ContainsAny(w, " \t\n'\"\\$`*?[]{}()<>|&;#~!") {
			b.WriteString(w)
			continue
		}
		b.WriteString("'" + strings.ReplaceAll(w, "'", `'\''`) + "'")
	}
	return b.String()
}
