package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/gen/process"
)

// benchScale is "How each cost grows" (docs/performance.md): exec latency
// with live background processes, the memory each process costs, ListDir,
// concurrent streams and a recursive WatchDir at growing sizes. pid is the
// daemon's process when the bench started it (RSS figures), else 0.
// Figures are "<label>/scale_…"; each group ends with a "#" line reading
// it (growth against linear).
func benchScale(ctx context.Context, t *target, pid int, cfg config, sz sizes, rep *reporter) error {
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	dir := fmt.Sprintf("%s/%s-scale-%s", cfg.dir, t.label, hex.EncodeToString(suffix[:]))
	if err := t.shell(ctx, "mkdir -p "+dir); err != nil {
		return fmt.Errorf("scratch directory: %w", err)
	}
	defer func() {
		_, _ = t.fs.Remove(context.Background(), connect.NewRequest(&filesystem.RemoveRequest{Path: dir}))
	}()
	s := scaler{t: t, pid: pid, sz: sz, rep: rep, dir: dir}
	for _, step := range []func(context.Context) error{s.execWithBackground, s.watchDir, s.listDir, s.streams} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	return nil
}

type scaler struct {
	t   *target
	pid int
	sz  sizes
	rep *reporter
	dir string
}

func (s *scaler) name(n string) string { return s.t.label + "/scale_" + n }

func (s *scaler) rss() (int64, bool) {
	if s.pid == 0 {
		return 0, false
	}
	v, err := rssKiB(s.pid)
	return v, err == nil
}

// execWithBackground: the exec p50 while 0, 100, 1000 processes live
// (sleep, started like the Wrenn host starts background processes: the
// stream is dropped after the start event), and envd's RSS per 1000 of
// them.
func (s *scaler) execWithBackground(ctx context.Context) error {
	var bg []uint32
	defer func() { s.t.killAll(bg) }()
	var p50s []float64
	var rss0, rssN int64
	haveRSS := false
	for _, n := range s.sz.scaleBackground {
		if len(bg) == 0 && n > 0 {
			// Before the first background process, after the exec path
			// warmed up at the level before.
			rss0, haveRSS = s.rss()
		}
		more, err := s.t.startBackground(ctx, n-len(bg), s.sz.parallelWorker)
		bg = append(bg, more...)
		if err != nil {
			return fmt.Errorf("background processes: %w", err)
		}
		if haveRSS && n == s.sz.scaleBackground[len(s.sz.scaleBackground)-1] {
			time.Sleep(200 * time.Millisecond)
			rssN, _ = s.rss()
		}
		p50, err := s.t.execP50(ctx, 10, s.sz.scaleExecs)
		if err != nil {
			return err
		}
		s.rep.add(s.name(fmt.Sprintf("exec_p50_bg%d", n)), p50, "ms")
		p50s = append(p50s, p50)
	}
	last := s.sz.scaleBackground[len(s.sz.scaleBackground)-1]
	if haveRSS && last > 0 && rssN > 0 {
		s.rep.add(s.name("rss_per_1000_processes"), float64(rssN-rss0)*1000/float64(last), "KiB")
	}
	s.rep.comment("reading: exec p50 with %d background processes is %.2fx the p50 with %d (flat is the goal)",
		last, p50s[len(p50s)-1]/p50s[0], s.sz.scaleBackground[0])
	return nil
}

// listDir: ListDir at growing sizes; the reading is the cost per entry.
func (s *scaler) listDir(ctx context.Context) error {
	var perEntry []string
	for _, n := range s.sz.scaleList {
		d := fmt.Sprintf("%s/list-%d", s.dir, n)
		if err := s.t.shell(ctx, fmt.Sprintf("mkdir -p %s && cd %s && seq -f 'entry-%%06.0f' 1 %d | xargs touch", d, d, n)); err != nil {
			return fmt.Errorf("populate ListDir directory: %w", err)
		}
		var runs []float64
		for i := 0; i < 1+s.sz.repeats; i++ {
			begin := time.Now()
			resp, err := s.t.fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: d, Depth: 1}))
			if err != nil {
				return fmt.Errorf("ListDir of %d entries: %w", n, err)
			}
			if got := len(resp.Msg.GetEntries()); got != n {
				return fmt.Errorf("ListDir returned %d of %d entries", got, n)
			}
			if i > 0 {
				runs = append(runs, ms(time.Since(begin)))
			}
		}
		m := median(runs)
		s.rep.add(s.name(fmt.Sprintf("listdir_%d_entries", n)), m, "ms")
		perEntry = append(perEntry, fmt.Sprintf("%.2f", m*1000/float64(n)))
		if _, err := s.t.fs.Remove(ctx, connect.NewRequest(&filesystem.RemoveRequest{Path: d})); err != nil {
			return err
		}
	}
	s.rep.comment("reading: ListDir per entry %s µs at %v entries (constant is linear)", strings.Join(perEntry, " / "), s.sz.scaleList)
	return nil
}

// streams: n concurrent stdout streams (binary codec) of together
// scaleStreamTotal bytes: aggregate throughput and, for the started
// daemon, the peak RSS while they run.
func (s *scaler) streams(ctx context.Context) error {
	var rates []string
	for _, n := range s.sz.scaleStreams {
		each := s.sz.scaleStreamTotal / int64(n)
		peak := s.samplePeak()
		begin := time.Now()
		err := s.t.countingStreams(ctx, n, each)
		wall := time.Since(begin)
		top := peak()
		if err != nil {
			return fmt.Errorf("%d concurrent streams: %w", n, err)
		}
		rate := mbps(each*int64(n), wall.Seconds())
		s.rep.add(s.name(fmt.Sprintf("streams_%d_throughput", n)), rate, "MB/s")
		if top > 0 {
			s.rep.add(s.name(fmt.Sprintf("streams_%d_rss_peak", n)), float64(top), "KiB")
		}
		rates = append(rates, fmt.Sprintf("%.0f", rate))
	}
	s.rep.comment("reading: aggregate stream throughput %s MB/s at %v concurrent streams (the same total; constant is linear)", strings.Join(rates, " / "), s.sz.scaleStreams)
	return nil
}

// samplePeak samples the daemon's RSS every 20 ms until the returned
// function is called, which returns the peak (0 without a pid).
func (s *scaler) samplePeak() func() int64 {
	if s.pid == 0 {
		return func() int64 { return 0 }
	}
	var peak atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if v, ok := s.rss(); ok && v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() int64 {
		close(stop)
		<-done
		return peak.Load()
	}
}

// watchDir: a recursive WatchDir over watchFan² directories: time until
// the start event (the watches are in place then) and the RSS it added;
// an event from the deepest level proves the watch works.
func (s *scaler) watchDir(ctx context.Context) error {
	fan := s.sz.watchFan
	d := s.dir + "/watch"
	// fan directories with fan-1 subdirectories each: fan² in all.
	script := fmt.Sprintf("mkdir -p %s && cd %s && for i in $(seq %d); do mkdir $i && (cd $i && seq %d | xargs -r mkdir); done", d, d, fan, fan-1)
	if err := s.t.shell(ctx, script); err != nil {
		return fmt.Errorf("populate WatchDir tree: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	rss0, haveRSS := s.rss()
	begin := time.Now()
	stream, err := s.t.fs.WatchDir(ctx, connect.NewRequest(&filesystem.WatchDirRequest{Path: d, Recursive: true}))
	if err != nil {
		return fmt.Errorf("WatchDir: %w", err)
	}
	defer stream.Close()
	if !stream.Receive() || stream.Msg().GetStart() == nil {
		return fmt.Errorf("WatchDir: no start event: %v", stream.Err())
	}
	setup := time.Since(begin)
	n := fan * fan
	s.rep.add(s.name(fmt.Sprintf("watchdir_recursive_%d_dirs_setup", n)), ms(setup), "ms")
	if haveRSS {
		time.Sleep(200 * time.Millisecond)
		if rss, ok := s.rss(); ok {
			s.rep.add(s.name(fmt.Sprintf("watchdir_recursive_%d_dirs_rss", n)), float64(rss-rss0), "KiB")
		}
	}
	probe := fmt.Sprintf("%d/%d/probe", fan, fan-1)
	if fan == 1 {
		probe = "1/probe"
	}
	if err := s.t.shell(ctx, "touch "+d+"/"+probe); err != nil {
		return err
	}
	for stream.Receive() {
		if stream.Msg().GetFilesystem().GetName() == probe {
			s.rep.comment("reading: WatchDir set up %d watches in %.0f ms (%.1f µs per directory)", n, ms(setup), ms(setup)*1000/float64(n))
			return nil
		}
	}
	return fmt.Errorf("WatchDir: no event for %s: %v", probe, stream.Err())
}

// startBackground starts n sleeping processes from workers goroutines and
// returns their pids; each Start stream is dropped after its start event.
func (t *target) startBackground(ctx context.Context, n, workers int) ([]uint32, error) {
	if n <= 0 {
		return nil, nil
	}
	var (
		mu   sync.Mutex
		pids []uint32
	)
	_, err := parallel(ctx, workers, n, func() error {
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		no := false
		stream, err := t.procRaw.Start(sctx, connect.NewRequest(&process.StartRequest{
			Process: &process.ProcessConfig{Cmd: "sleep", Args: []string{"3600"}},
			Stdin:   &no,
		}))
		if err != nil {
			return err
		}
		defer stream.Close()
		if !stream.Receive() {
			return fmt.Errorf("no start event: %v", stream.Err())
		}
		pid := stream.Msg().GetEvent().GetStart().GetPid()
		if pid == 0 {
			return errors.New("first event is not a start event")
		}
		mu.Lock()
		pids = append(pids, pid)
		mu.Unlock()
		return nil
	})
	return pids, err
}

// killAll ends the background processes and waits (up to 10 s) until the
// daemon lists none of them.
func (t *target) killAll(pids []uint32) {
	if len(pids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, pid := range pids {
		_, _ = t.proc.SendSignal(ctx, connect.NewRequest(&process.SendSignalRequest{
			Process: &process.ProcessSelector{Selector: &process.ProcessSelector_Pid{Pid: pid}},
			Signal:  process.Signal_SIGNAL_SIGKILL,
		}))
	}
	mine := make(map[uint32]bool, len(pids))
	for _, p := range pids {
		mine[p] = true
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		l, err := t.proc.List(ctx, connect.NewRequest(&process.ListRequest{}))
		if err != nil {
			return
		}
		left := 0
		for _, p := range l.Msg.GetProcesses() {
			if mine[p.GetPid()] {
				left++
			}
		}
		if left == 0 {
			return
		}
	}
}

// execP50 is the p50 of n sequential /bin/true round trips after warmup.
func (t *target) execP50(ctx context.Context, warmup, n int) (float64, error) {
	var rtts []float64
	for i := 0; i < warmup+n; i++ {
		begin := time.Now()
		res, err := t.exec(ctx, t.proc, nil, "/bin/true")
		if err != nil {
			return 0, fmt.Errorf("exec /bin/true: %w", err)
		}
		if res.exitCode != 0 {
			return 0, fmt.Errorf("/bin/true exited %d", res.exitCode)
		}
		if i >= warmup {
			rtts = append(rtts, ms(time.Since(begin)))
		}
	}
	return percentile(rtts, 50), nil
}

// countingStreams runs n concurrent `head -c each /dev/zero` (one process
// per stream) and checks every stream's byte count.
func (t *target) countingStreams(ctx context.Context, n int, each int64) error {
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			res, err := t.exec(ctx, t.procRaw, nil, "head", "-c", fmt.Sprint(each), "/dev/zero")
			if err == nil && (res.stdout != each || res.exitCode != 0) {
				err = fmt.Errorf("stream delivered %d of %d bytes, exit %d", res.stdout, each, res.exitCode)
			}
			errs <- err
		}()
	}
	var first error
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}
