package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

// config is the parsed command line.
type config struct {
	bin       string
	addrs     []remoteTarget
	noStart   bool
	quick     bool
	noMachine bool
	dir       string
}

type remoteTarget struct{ label, url string }

// sizes are the workload parameters; quick mode shrinks them for smoke runs.
type sizes struct {
	startups       int   // envd starts for the startup median
	execs          int   // sequential /bin/true round trips (after warm-up)
	execWarmup     int   //
	parallelExecs  int   // total execs spread over parallelWorkers
	parallelWorker int   //
	streamBytes    int64 // stdout streaming
	transferBytes  int64 // upload and download
	listEntries    int   // ListDir size
	listRuns       int   //
	streams        int   // concurrent streams
	streamEach     int64 // bytes per concurrent stream
	repeats        int   // repetitions of the throughput workloads (median)
}

func fullSizes() sizes {
	return sizes{
		startups: 5, execs: 300, execWarmup: 30, parallelExecs: 800, parallelWorker: 8,
		streamBytes: 512 << 20, transferBytes: 256 << 20, listEntries: 10000, listRuns: 10,
		streams: 100, streamEach: 1 << 20, repeats: 3,
	}
}

func quickSizes() sizes {
	return sizes{
		startups: 2, execs: 20, execWarmup: 3, parallelExecs: 40, parallelWorker: 8,
		streamBytes: 2 << 20, transferBytes: 8 << 20, listEntries: 500, listRuns: 2,
		streams: 10, streamEach: 256 << 10, repeats: 1,
	}
}

// reporter prints figures as "name value unit", one per line, as they are
// measured.
type reporter struct {
	w       io.Writer
	figures []figure
}

type figure struct {
	name  string
	value float64
	unit  string
}

func (r *reporter) add(name string, value float64, unit string) {
	r.figures = append(r.figures, figure{name, value, unit})
	fmt.Fprintf(r.w, "%s %s %s\n", name, formatValue(value), unit)
}

func (r *reporter) comment(format string, args ...any) {
	fmt.Fprintf(r.w, "# "+format+"\n", args...)
}

func formatValue(v float64) string {
	switch {
	case v == float64(int64(v)) && (v >= 1000 || v <= -1000 || v == 0):
		return fmt.Sprintf("%d", int64(v))
	case v >= 100:
		return fmt.Sprintf("%.1f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func run(ctx context.Context, cfg config, out io.Writer) error {
	sz := fullSizes()
	if cfg.quick {
		sz = quickSizes()
	}
	rep := &reporter{w: out}
	describeMachine(rep)
	rep.comment("command: envd-bench %s", strings.Join(os.Args[1:], " "))
	if cfg.quick {
		rep.comment("quick mode: reduced sizes, not for publication")
	}

	if !cfg.noStart {
		if err := benchStarted(ctx, cfg, sz, rep); err != nil {
			return err
		}
	}
	for _, a := range cfg.addrs {
		t := newTarget(a.label, a.url)
		if err := t.waitHealthy(ctx, 10*time.Second); err != nil {
			return fmt.Errorf("%s (%s): %w", a.label, a.url, err)
		}
		if err := benchWorkloads(ctx, t, cfg, sz, rep); err != nil {
			return fmt.Errorf("%s: %w", a.label, err)
		}
	}
	if !cfg.noMachine {
		if err := benchMachine(ctx, cfg, sz, rep); err != nil {
			return fmt.Errorf("machine baseline: %w", err)
		}
	}
	return nil
}

// benchStarted measures the envd this program starts: startup, idle RSS,
// the common workloads, RSS after them, binary size.
func benchStarted(ctx context.Context, cfg config, sz sizes, rep *reporter) error {
	st, err := os.Stat(cfg.bin)
	if err != nil {
		return fmt.Errorf("envd binary: %w (run make build, or pass --bin)", err)
	}
	var startups []float64
	for i := 0; i < sz.startups; i++ {
		d, err := startDaemon(ctx, cfg.bin)
		if err != nil {
			return err
		}
		startups = append(startups, ms(d.startup))
		if err := d.stop(); err != nil {
			return err
		}
	}
	rep.add("envd/startup_to_healthy", median(startups), "ms")

	d, err := startDaemon(ctx, cfg.bin)
	if err != nil {
		return err
	}
	defer d.stop()
	t := newTarget("envd", d.url)
	// A few requests so that "idle" means "serving, nothing to do", not
	// "just exec'd".
	for i := 0; i < 5; i++ {
		if err := t.health(ctx); err != nil {
			return err
		}
	}
	time.Sleep(200 * time.Millisecond)
	rss, err := rssKiB(d.pid())
	if err != nil {
		return err
	}
	rep.add("envd/rss_idle", float64(rss), "KiB")

	if err := benchWorkloads(ctx, t, cfg, sz, rep); err != nil {
		return err
	}
	rss, err = rssKiB(d.pid())
	if err != nil {
		return err
	}
	rep.add("envd/rss_after_run", float64(rss), "KiB")
	rep.add("envd/binary_size", float64(st.Size()), "bytes")
	return nil
}

func describeMachine(rep *reporter) {
	model := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	rep.comment("machine: nproc %d, cpu %q, kernel %s, %s/%s, %s", runtime.NumCPU(), model, kernel, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
