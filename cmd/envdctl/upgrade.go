package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/envd/envd/client"
)

// upgradeWait bounds how long upgrade waits for the new envd to answer
// /health after the swap (it answers at once in practice: connections wait
// in the listen backlog while envd replaces itself).
const upgradeWait = 30 * time.Second

var cmdUpgrade = &command{
	name:    "upgrade",
	args:    "BINARY | --reexec",
	summary: "replace envd's binary live (same PID, workload kept), then /init it and report the handover",
	flags: func(fs *flag.FlagSet, o *cmdOpts) {
		fs.BoolVar(&o.reexec, "reexec", false, "execute the running envd binary again instead of uploading one")
		fs.BoolVar(&o.noInit, "no-init", false, "do not send the /init that lifts the post-upgrade gate and thaws the workload (an orchestrator sends its own)")
		fs.BoolVar(&o.quiet, "q", false, "no progress bar")
	},
	run: func(a *app, o *cmdOpts, args []string) error {
		if o.reexec && len(args) > 0 || !o.reexec && len(args) != 1 {
			return errArgCount
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		ctx, cancel := signalContext()
		defer cancel()
		from, err := c.Health(ctx)
		if err != nil {
			return err
		}
		var size int64
		if o.reexec {
			err = c.Upgrade(ctx, nil, 0, nil)
		} else {
			size, err = a.upload(ctx, c, args[0], o.quiet)
		}
		if err != nil {
			return fmt.Errorf("upgrade refused, the running envd keeps serving: %s", errorText(err))
		}
		to, err := waitHealthy(ctx, c)
		if err != nil {
			return fmt.Errorf("envd replaced itself but does not answer: %w", err)
		}
		res := map[string]any{"from": from, "to": to, "bytes": size}
		if o.noInit {
			return a.report(res, "upgraded %s → %s; envd waits for an /init (the workload stays frozen until one)", from, to)
		}
		// The same token as before: an /init without one would ask envd to
		// clear it.
		r, err := c.InitResult(ctx, &client.InitRequest{AccessToken: a.token})
		if err != nil {
			return fmt.Errorf("envd was replaced (%s → %s) but its /init failed: %s", from, to, errorText(err))
		}
		if r.Handover == nil {
			return fmt.Errorf("envd %s reports no handover: it was not replaced by a live upgrade", r.Version)
		}
		h := r.Handover
		res["handover"] = h
		if h.Failed {
			if a.json {
				_ = a.printJSON(res)
			}
			return fmt.Errorf("envd %s serves but could not take the state over (X-Envd-Handover failed): the processes it had are orphaned", r.Version)
		}
		return a.report(res, "upgraded %s → %s: %d processes (%d failed), %d retained exits (%d failed), %d polling watchers (%d failed) carried",
			from, r.Version, h.Procs, h.ProcsFailed, h.Retained, h.RetainedFailed, h.Watchers, h.WatchersFailed)
	},
}

// upload sends the binary at path with a progress bar.
func (a *app) upload(ctx context.Context, c *client.Client, path string, quiet bool) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("%s is not a regular file", path)
	}
	p := a.newProgress(quiet)
	p.setTotal(st.Size())
	err = c.Upgrade(ctx, f, st.Size(), p.file(filepath.Base(path)))
	p.finish()
	return st.Size(), err
}

// waitHealthy polls /health until the new envd answers, returning its
// version.
func waitHealthy(ctx context.Context, c *client.Client) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, upgradeWait)
	defer cancel()
	for {
		v, err := c.Health(ctx)
		if err == nil {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return "", errors.New(errorText(err))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (a *app) report(res map[string]any, format string, args ...any) error {
	if a.json {
		return a.printJSON(res)
	}
	fmt.Fprintf(a.stdout, format+"\n", args...)
	return nil
}
