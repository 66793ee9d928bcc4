// Command envd-bench measures envd and prints one line per figure as
// "name value unit".
//
// By default it starts the built envd itself (--bin) and measures it,
// including the figures only a started daemon has (startup, RSS, binary
// size). Each --addr URL adds an already running daemon that gets exactly
// the same workload, so two daemons can be compared side by side in one
// run. The machine's own baselines (fork+exec of /bin/true, pipe, loopback
// TCP and file throughput) are measured in the same run so that figures can
// be put in proportion when no other daemon is available.
//
// Figure names are prefixed with the target's label: "envd/…" for the
// daemon started here, "addr1/…" (or the label given as LABEL=URL) for
// --addr targets, "machine/…" for the baselines.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// addrList collects repeated --addr flags.
type addrList []string

func (a *addrList) String() string     { return strings.Join(*a, ",") }
func (a *addrList) Set(v string) error { *a = append(*a, v); return nil }

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "envd-bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("envd-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	var addrs addrList
	fs.StringVar(&cfg.bin, "bin", "bin/envd", "envd binary to start and measure")
	fs.Var(&addrs, "addr", "measure an already running daemon at this base URL (LABEL=URL to name it); repeatable")
	fs.BoolVar(&cfg.noStart, "no-start", false, "do not start envd; measure only the --addr targets")
	fs.BoolVar(&cfg.quick, "quick", false, "small sizes and counts (a smoke run, not figures to publish)")
	fs.BoolVar(&cfg.noMachine, "no-machine", false, "skip the machine baselines")
	fs.StringVar(&cfg.dir, "dir", "/tmp/envd-bench", "scratch directory on the measured daemons' machine")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	for i, a := range addrs {
		label, url := fmt.Sprintf("addr%d", i+1), a
		if l, u, ok := strings.Cut(a, "="); ok && !strings.Contains(l, "/") {
			label, url = l, u
		}
		cfg.addrs = append(cfg.addrs, remoteTarget{label: label, url: strings.TrimRight(url, "/")})
	}
	if cfg.noStart && len(cfg.addrs) == 0 {
		fmt.Fprintln(stderr, "envd-bench: --no-start needs at least one --addr")
		return cfg, errors.New("nothing to measure")
	}
	return cfg, nil
}
