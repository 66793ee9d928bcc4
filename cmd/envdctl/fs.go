package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/envd/envd/client"
)

var cmdLs = &command{
	name:    "ls",
	args:    "[PATH]",
	summary: "list a directory (default: the user's home or envd's default workdir)",
	flags: func(fs *flag.FlagSet, o *cmdOpts) {
		fs.IntVar(&o.depth, "d", 1, "list this many `levels` deep")
	},
	run: func(a *app, o *cmdOpts, args []string) error {
		if err := needArgs(args, 0, 1); err != nil {
			return err
		}
		if o.depth < 1 {
			return usagef("ls: -d must be at least 1")
		}
		path := ""
		if len(args) == 1 {
			path = args[0]
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		ctx, cancel := signalContext()
		defer cancel()
		entries, err := c.ListDir(ctx, path, o.depth)
		if err != nil {
			return err
		}
		if a.json {
			if entries == nil {
				entries = []client.EntryInfo{}
			}
			return a.printJSON(entries)
		}
		// Deeper entries are shown relative to the listed directory.
		base := ""
		if o.depth > 1 {
			st, err := c.Stat(ctx, path)
			if err != nil {
				return err
			}
			base = st.Path
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 1, ' ', 0)
		for _, e := range entries {
			name := e.Name
			if base != "" {
				if rel, err := filepath.Rel(base, e.Path); err == nil {
					name = rel
				}
			}
			if e.Symlink {
				name += " -> " + e.SymlinkTarget
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", e.Permissions, e.Owner, e.Group, e.Size, e.ModTime.Local().Format("2006-01-02 15:04"), name)
		}
		return tw.Flush()
	},
}

var cmdStat = &command{
	name:    "stat",
	args:    "PATH",
	summary: "describe a file, directory or link",
	run: func(a *app, o *cmdOpts, args []string) error {
		c, ctx, cancel, err := a.connect(args, 1, 1)
		if err != nil {
			return err
		}
		defer cancel()
		e, err := c.Stat(ctx, args[0])
		if err != nil {
			return err
		}
		if a.json {
			return a.printJSON(e)
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "path\t%s\n", e.Path)
		fmt.Fprintf(tw, "type\t%s\n", e.Type)
		if e.Symlink {
			fmt.Fprintf(tw, "symlink to\t%s\n", e.SymlinkTarget)
		}
		fmt.Fprintf(tw, "size\t%d\n", e.Size)
		fmt.Fprintf(tw, "mode\t%s (%04o)\n", e.Permissions, uint32(e.Mode))
		fmt.Fprintf(tw, "owner\t%s:%s\n", e.Owner, e.Group)
		fmt.Fprintf(tw, "modified\t%s\n", e.ModTime.Local().Format(time.RFC3339Nano))
		for k, v := range e.Metadata {
			fmt.Fprintf(tw, "metadata %s\t%s\n", k, v)
		}
		return tw.Flush()
	},
}

var cmdMkdir = &command{
	name:    "mkdir",
	args:    "PATH...",
	summary: "create directories (and missing parents) owned by the user",
	flags: func(fs *flag.FlagSet, o *cmdOpts) {
		fs.BoolVar(&o.parents, "p", false, "no error if a directory already exists")
	},
	run: func(a *app, o *cmdOpts, args []string) error {
		c, ctx, cancel, err := a.connect(args, 1, -1)
		if err != nil {
			return err
		}
		defer cancel()
		made := []*client.EntryInfo{}
		for _, p := range args {
			e, err := c.MakeDir(ctx, p)
			if o.parents && client.IsAlreadyExists(err) {
				if e, err = c.Stat(ctx, p); err == nil {
					made = append(made, e)
				}
				continue
			}
			if err != nil {
				return err
			}
			made = append(made, e)
		}
		if a.json {
			return a.printJSON(made)
		}
		return nil
	},
}

var cmdMv = &command{
	name:    "mv",
	args:    "SOURCE DESTINATION",
	summary: "rename or move a path within one filesystem of the guest",
	run: func(a *app, o *cmdOpts, args []string) error {
		c, ctx, cancel, err := a.connect(args, 2, 2)
		if err != nil {
			return err
		}
		defer cancel()
		e, err := c.Move(ctx, args[0], args[1])
		if err != nil {
			return err
		}
		if a.json {
			return a.printJSON(e)
		}
		return nil
	},
}

var cmdRm = &command{
	name:    "rm",
	args:    "PATH...",
	summary: "remove files or whole directory trees (like rm -rf; missing paths are fine)",
	run: func(a *app, o *cmdOpts, args []string) error {
		c, ctx, cancel, err := a.connect(args, 1, -1)
		if err != nil {
			return err
		}
		defer cancel()
		for _, p := range args {
			if err := c.Remove(ctx, p); err != nil {
				return err
			}
		}
		if a.json {
			return a.printJSON(map[string][]string{"removed": args})
		}
		return nil
	},
}

var cmdWatch = &command{
	name:    "watch",
	args:    "PATH",
	summary: "print changes in a directory until interrupted",
	flags: func(fs *flag.FlagSet, o *cmdOpts) {
		fs.BoolVar(&o.recursive, "r", false, "watch the whole tree")
		fs.BoolVar(&o.entry, "entry", false, "describe the changed entry (with --json)")
		fs.BoolVar(&o.networkMount, "network-mounts", false, "allow watching network filesystems")
		fs.IntVar(&o.count, "n", 0, "exit after this many `events` (0: never)")
	},
	run: func(a *app, o *cmdOpts, args []string) error {
		c, ctx, cancel, err := a.connect(args, 1, 1)
		if err != nil {
			return err
		}
		defer cancel()
		opts := &client.WatchOptions{Recursive: o.recursive, IncludeEntry: o.entry, AllowNetworkMounts: o.networkMount}
		enc := json.NewEncoder(a.stdout)
		n := 0
		for ev, err := range c.Watch(ctx, args[0], opts) {
			if err != nil {
				if ctx.Err() != nil {
					return nil // interrupted: a normal end
				}
				return err
			}
			if a.json {
				if err := enc.Encode(ev); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(a.stdout, "%s\t%s\n", ev.Type, ev.Name)
			}
			n++
			if o.count > 0 && n >= o.count {
				return nil
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		return nil
	},
}

// remotePath reports whether arg names a guest path (":PATH") and returns
// the path.
func remotePath(arg string) (string, bool) {
	return strings.CutPrefix(arg, ":")
}

var _ = context.Background
