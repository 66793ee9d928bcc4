package main

import (
	"context"
	"fmt"
	"io"
	"math"
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
	parallelExecs  int   // total execs spread over parallelWorker workers
	parallelWorker int   //
	streamBytes    int64 // stdout streaming, either codec
	transferBytes  int64 // upload and download
	listEntries    int   // ListDir size
	listRuns       int   //
	streams        int   // concurrent streams
	streamEach     int64 // bytes per concurrent stream
	repeats        int   // repetitions of the throughput workloads (median)
	settle         time.Duration

	// "How each cost grows"
	scaleBackground  []int // live background processes during the exec figure, ascending
	scaleExecs       int   // execs per background level (after 10 warm-up calls)
	scaleList        []int // ListDir sizes
	scaleStreams     []int // concurrent stream counts
	scaleStreamTotal int64 // bytes of all streams of one count together
	watchFan         int   // WatchDir: watchFan directories of watchFan-1 subdirectories each
}

func fullSizes() sizes {
	return sizes{
		startups: 5, execs: 300, execWarmup: 30, parallelExecs: 800, parallelWorker: 8,
		streamBytes: 512 << 20, transferBytes: 256 << 20, listEntries: 10000, listRuns: 10,
		streams: 100, streamEach: 1 << 20, repeats: 3, settle: 5 * time.Second,
		scaleBackground: []int{0, 100, 1000}, scaleExecs: 100,
		scaleList: []int{1000, 10000, 100000}, scaleStreams: []int{10, 100, 1000}, scaleStreamTotal: 256 << 20,
		watchFan: 100,
	}
}

func quickSizes() sizes {
	return sizes{
		startups: 2, execs: 20, execWarmup: 3, parallelExecs: 40, parallelWorker: 8,
		streamBytes: 2 << 20, transferBytes: 8 << 20, listEntries: 500, listRuns: 2,
		streams: 10, streamEach: 256 << 10, repeats: 1, settle: 500 * time.Millisecond,
		scaleBackground: []int{0, 10, 30}, scaleExecs: 10,
		scaleList: []int{100, 1000}, scaleStreams: []int{2, 10}, scaleStreamTotal: 4 << 20,
		watchFan: 10,
	}
}

// Figure names that depend on the sizes; workloads and ratios share them.
func (sz sizes) execP50() string { return "exec_true_rtt_p50" }
func (sz sizes) execParallel() string {
	return fmt.Sprintf("exec_parallel_%dworkers", sz.parallelWorker)
}
func (sz sizes) stream() string { return fmt.Sprintf("stdout_stream_%dMiB", sz.streamBytes>>20) }
func (sz sizes) streamJSON() string {
	return fmt.Sprintf("stdout_stream_json_%dMiB", sz.streamBytes>>20)
}
func (sz sizes) upload() string   { return fmt.Sprintf("upload_%dMiB", sz.transferBytes>>20) }
func (sz sizes) download() string { return fmt.Sprintf("download_%dMiB", sz.transferBytes>>20) }
func (sz sizes) listDir() string  { return fmt.Sprintf("listdir_%d_entries", sz.listEntries) }
func (sz sizes) concurrent() string {
	return fmt.Sprintf("concurrent_streams_%dx%dKiB", sz.streams, sz.streamEach>>10)
}
func (sz sizes) concurrentJSON() string {
	return fmt.Sprintf("concurrent_streams_json_%dx%dKiB", sz.streams, sz.streamEach>>10)
}

// Machine baselines.
func (sz sizes) mForkExecP50() string { return "machine/fork_exec_true_p50" }
func (sz sizes) mForkExecParallel() string {
	return fmt.Sprintf("machine/fork_exec_parallel_%dworkers", sz.parallelWorker)
}
func (sz sizes) mPipe() string   { return fmt.Sprintf("machine/pipe_stream_%dMiB", sz.streamBytes>>20) }
func (sz sizes) mBase64() string { return "machine/base64_encode" }
func (sz sizes) mLoopback() string {
	return fmt.Sprintf("machine/loopback_tcp_%dMiB", sz.streamBytes>>20)
}
func (sz sizes) mFileWrite() string {
	return fmt.Sprintf("machine/file_write_%dMiB", sz.transferBytes>>20)
}
func (sz sizes) mFileRead() string {
	return fmt.Sprintf("machine/file_read_%dMiB", sz.transferBytes>>20)
}
func (sz sizes) mReaddir() string { return fmt.Sprintf("machine/readdir_lstat_%d", sz.listEntries) }
func (sz sizes) mConcurrent() string {
	return fmt.Sprintf("machine/concurrent_pipes_%dx%dKiB", sz.streams, sz.streamEach>>10)
}

// reporter prints figures as "name value unit", one per line, as they are
// measured, and keeps them for the ratios.
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

// values is every figure so far by name.
func (r *reporter) values() map[string]float64 {
	out := make(map[string]float64, len(r.figures))
	for _, f := range r.figures {
		out[f.name] = f.value
	}
	return out
}

// load notes the load average: figures taken on a busy machine are read
// with it.
func (r *reporter) load(when string) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return
	}
	f := strings.Fields(string(b))
	if len(f) >= 3 {
		r.comment("loadavg %s %s %s (%s)", f[0], f[1], f[2], when)
	}
}

func formatValue(v float64) string {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return "NaN"
	case v == float64(int64(v)) && (v >= 1000 || v <= -1000 || v == 0):
		return fmt.Sprintf("%d", int64(v))
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.1f", v)
	case math.Abs(v) >= 1:
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
	rep.load("start")

	var labels []string
	if !cfg.noStart {
		if err := benchStarted(ctx, cfg, sz, rep); err != nil {
			return err
		}
		labels = append(labels, "envd")
	}
	for _, a := range cfg.addrs {
		t := newTarget(a.label, a.url)
		if err := t.waitHealthy(ctx, 10*time.Second); err != nil {
			return fmt.Errorf("%s (%s): %w", a.label, a.url, err)
		}
		rep.load(a.label + " workloads")
		if err := benchWorkloads(ctx, t, cfg, sz, rep); err != nil {
			return fmt.Errorf("%s: %w", a.label, err)
		}
		rep.load(a.label + " scaling")
		if err := benchScale(ctx, t, 0, cfg, sz, rep); err != nil {
			return fmt.Errorf("%s: %w", a.label, err)
		}
		labels = append(labels, a.label)
	}
	if !cfg.noMachine {
		rep.load("machine baselines")
		if err := benchMachine(ctx, cfg, sz, rep); err != nil {
			return fmt.Errorf("machine baseline: %w", err)
		}
		printRatios(rep, labels, sz)
	}
	rep.load("end")
	return nil
}

// benchStarted measures the envd this program starts: startup, idle RSS,
// the common workloads, RSS after them, binary size, and how its costs
// grow.
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

	rep.load("envd workloads")
	if err := benchWorkloads(ctx, t, cfg, sz, rep); err != nil {
		return err
	}
	// Right at the end of the load, and once memory had the settle time
	// (5 s) to be handed back.
	if rss, err = rssKiB(d.pid()); err != nil {
		return err
	}
	rep.add("envd/rss_at_load_end", float64(rss), "KiB")
	time.Sleep(sz.settle)
	if rss, err = rssKiB(d.pid()); err != nil {
		return err
	}
	rep.add("envd/rss_after_run", float64(rss), "KiB")
	rep.add("envd/binary_size", float64(st.Size()), "bytes")
	if err := d.stop(); err != nil {
		return err
	}

	// The scaling figures get a fresh daemon: what the workloads above
	// left in its heap would otherwise absorb the memory the RSS figures
	// there measure.
	fresh, err := startDaemon(ctx, cfg.bin)
	if err != nil {
		return err
	}
	defer fresh.stop()
	rep.load("envd scaling")
	return benchScale(ctx, newTarget("envd", fresh.url), fresh.pid(), cfg, sz, rep)
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
