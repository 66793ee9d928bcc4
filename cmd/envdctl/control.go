package main

import (
	"flag"
	"fmt"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/envd/envd/client"
)

var cmdHealth = &command{
	name:    "health",
	summary: "check that envd answers and print its protocol version",
	run: func(a *app, o *cmdOpts, args []string) error {
		c, ctx, cancel, err := a.connect(args, 0, 0)
		if err != nil {
			return err
		}
		defer cancel()
		v, err := c.Health(ctx)
		if err != nil {
			return err
		}
		if a.json {
			return a.printJSON(map[string]string{"version": v})
		}
		fmt.Fprintln(a.stdout, v)
		return nil
	},
}

var cmdMetrics = &command{
	name:    "metrics",
	summary: "print the guest's CPU, memory and disk usage",
	run: func(a *app, o *cmdOpts, args []string) error {
		c, ctx, cancel, err := a.connect(args, 0, 0)
		if err != nil {
			return err
		}
		defer cancel()
		m, err := c.Metrics(ctx)
		if err != nil {
			return err
		}
		if a.json {
			return a.printJSON(m)
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "time\t%s\n", m.Time().Format(time.RFC3339))
		fmt.Fprintf(tw, "cpus\t%d\n", m.CPUCount)
		fmt.Fprintf(tw, "cpu used\t%.2f%%\n", m.CPUUsedPct)
		fmt.Fprintf(tw, "memory\t%s used of %s (%s cache)\n", humanBytes(m.MemUsed), humanBytes(m.MemTotal), humanBytes(m.MemCache))
		fmt.Fprintf(tw, "disk /\t%s used of %s\n", humanBytes(m.DiskUsed), humanBytes(m.DiskTotal))
		return tw.Flush()
	},
}

var cmdEnv = &command{
	name:    "env",
	summary: "print envd's default environment (what every new process gets)",
	run: func(a *app, o *cmdOpts, args []string) error {
		c, ctx, cancel, err := a.connect(args, 0, 0)
		if err != nil {
			return err
		}
		defer cancel()
		env, err := c.Envs(ctx)
		if err != nil {
			return err
		}
		if a.json {
			return a.printJSON(env)
		}
		keys := make([]string, 0, len(env))
		for k := range env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(a.stdout, "%s=%s\n", k, env[k])
		}
		return nil
	},
}

var cmdInit = &command{
	name:    "init",
	summary: "configure envd: default environment, user, workdir, access token",
	flags: func(fs *flag.FlagSet, o *cmdOpts) {
		fs.Var(&o.env, "e", "set a default environment variable `KEY=VALUE` (repeatable); replaces the previous set")
		fs.Var(&o.env, "env", "same as -e")
		fs.BoolVar(&o.clearEnv, "clear-env", false, "clear the default environment variables set by earlier inits")
		fs.StringVar(&o.defaultUser, "default-user", "", "make `USER` the default user")
		fs.StringVar(&o.defaultWorkdir, "default-workdir", "", "make `DIR` the default working directory")
		fs.StringVar(&o.newToken, "new-token", "", "set the access token to `TOKEN` (without it, the --token in use is kept)")
		fs.BoolVar(&o.timestamp, "timestamp", false, "send this machine's time (stale inits are ignored; sets the guest clock in a VM)")
	},
	args: "",
	run: func(a *app, o *cmdOpts, args []string) error {
		if err := needArgs(args, 0, 0); err != nil {
			return err
		}
		if o.clearEnv && len(o.env) > 0 {
			return usagef("init: --clear-env and -e exclude each other")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		req := &client.InitRequest{DefaultUser: o.defaultUser, DefaultWorkdir: o.defaultWorkdir}
		if len(o.env) > 0 {
			req.EnvVars = o.env
		}
		if o.clearEnv {
			req.EnvVars = map[string]string{}
		}
		// An init without a token asks envd to clear its token; an
		// operator who authenticates with one means to keep it.
		req.AccessToken = a.token
		if o.newToken != "" {
			req.AccessToken = o.newToken
		}
		if o.timestamp {
			req.Timestamp = time.Now()
		}
		ctx, cancel := signalContext()
		defer cancel()
		v, err := c.Init(ctx, req)
		if err != nil {
			return err
		}
		if a.json {
			return a.printJSON(map[string]string{"version": v})
		}
		return nil
	},
}

// humanBytes renders a size with a binary unit.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
