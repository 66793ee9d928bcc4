package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// benchMachine measures what the machine itself can do, with the same
// counts and sizes as the daemon workloads: the floor under exec round
// trips, and the ceilings over stdout streaming and file transfer.
func benchMachine(ctx context.Context, cfg config, sz sizes, rep *reporter) error {
	trueBin, err := exec.LookPath("true")
	if err != nil {
		return err
	}
	var rtts []float64
	for i := 0; i < sz.execWarmup+sz.execs; i++ {
		begin := time.Now()
		if err := exec.CommandContext(ctx, trueBin).Run(); err != nil {
			return fmt.Errorf("fork+exec %s: %w", trueBin, err)
		}
		if i >= sz.execWarmup {
			rtts = append(rtts, ms(time.Since(begin)))
		}
	}
	rep.add("machine/fork_exec_true_p50", percentile(rtts, 50), "ms")
	rep.add("machine/fork_exec_true_p99", percentile(rtts, 99), "ms")

	// The floor under an envd exec: the wrapper every started process goes
	// through (rpc.md §4.2 step 5: sh, ionice, nice, then the command),
	// spawned directly.
	wrapper := wrapperArgv(trueBin)
	rtts = rtts[:0]
	for i := 0; i < sz.execWarmup+sz.execs; i++ {
		begin := time.Now()
		if err := exec.CommandContext(ctx, wrapper[0], wrapper[1:]...).Run(); err != nil {
			return fmt.Errorf("wrapper %v: %w", wrapper, err)
		}
		if i >= sz.execWarmup {
			rtts = append(rtts, ms(time.Since(begin)))
		}
	}
	rep.add("machine/fork_exec_wrapped_true_p50", percentile(rtts, 50), "ms")
	rep.add("machine/fork_exec_wrapped_true_p99", percentile(rtts, 99), "ms")

	elapsed, err := parallel(ctx, sz.parallelWorker, sz.parallelExecs, func() error {
		return exec.CommandContext(ctx, trueBin).Run()
	})
	if err != nil {
		return err
	}
	rep.add(sz.mForkExecParallel(), float64(sz.parallelExecs)/elapsed.Seconds(), "execs/s")

	// The same producer as the stdout workload, read straight from a pipe
	// in 32 KiB reads (envd's read size).
	var rates []float64
	for i := 0; i < sz.repeats; i++ {
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", "exec head -c "+strconv.FormatInt(sz.streamBytes, 10)+" /dev/zero")
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		begin := time.Now()
		if err := cmd.Start(); err != nil {
			return err
		}
		n, err := io.CopyBuffer(io.Discard, out, make([]byte, 32<<10))
		if werr := cmd.Wait(); err == nil {
			err = werr
		}
		if err != nil || n != sz.streamBytes {
			return fmt.Errorf("pipe baseline: %d bytes, %v", n, err)
		}
		rates = append(rates, mbps(n, time.Since(begin).Seconds()))
	}
	rep.add(sz.mPipe(), median(rates), "MB/s")

	// base64 on one core: what the JSON codec must do to every byte of
	// output at least once.
	rates = rates[:0]
	for i := 0; i < sz.repeats; i++ {
		rates = append(rates, base64Rate(sz.streamBytes))
	}
	rep.add(sz.mBase64(), median(rates), "MB/s")

	// The concurrent-streams workload without a daemon: the same producers,
	// read straight from their pipes and verified.
	var walls []float64
	for i := 0; i < sz.repeats; i++ {
		wall, err := concurrentPipes(ctx, sz.streams, sz.streamEach)
		if err != nil {
			return err
		}
		walls = append(walls, wall.Seconds())
	}
	rep.add(sz.mConcurrent(), median(walls), "s")

	rates = rates[:0]
	for i := 0; i < sz.repeats; i++ {
		r, err := loopbackTCP(sz.streamBytes)
		if err != nil {
			return err
		}
		rates = append(rates, r)
	}
	rep.add(sz.mLoopback(), median(rates), "MB/s")

	// File write (no fsync, like an upload) and read of the transfer size.
	if err := os.MkdirAll(cfg.dir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(cfg.dir, fmt.Sprintf("machine-%d.bin", os.Getpid()))
	defer os.Remove(path)
	block := make([]byte, 1<<20)
	_, _ = rand.Read(block)
	var writes, reads []float64
	for i := 0; i < sz.repeats; i++ {
		begin := time.Now()
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if _, err := io.CopyBuffer(f, &repeating{block: block, n: sz.transferBytes}, make([]byte, 256<<10)); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		writes = append(writes, mbps(sz.transferBytes, time.Since(begin).Seconds()))
		begin = time.Now()
		f, err = os.Open(path)
		if err != nil {
			return err
		}
		n, err := io.CopyBuffer(io.Discard, f, make([]byte, 256<<10))
		f.Close()
		if err != nil || n != sz.transferBytes {
			return fmt.Errorf("file read baseline: %d bytes, %v", n, err)
		}
		reads = append(reads, mbps(n, time.Since(begin).Seconds()))
	}
	rep.add(sz.mFileWrite(), median(writes), "MB/s")
	rep.add(sz.mFileRead(), median(reads), "MB/s")

	// What ListDir does at the least: read the directory, lstat every entry.
	list := filepath.Join(cfg.dir, fmt.Sprintf("machine-list-%d", os.Getpid()))
	defer os.RemoveAll(list)
	if err := populate(list, sz.listEntries); err != nil {
		return err
	}
	var lists []float64
	for i := 0; i < 2+sz.listRuns; i++ {
		begin := time.Now()
		n, err := readdirLstat(list)
		if err != nil {
			return err
		}
		if n != sz.listEntries {
			return fmt.Errorf("readdir baseline: %d of %d entries", n, sz.listEntries)
		}
		if i >= 2 {
			lists = append(lists, ms(time.Since(begin)))
		}
	}
	rep.add(sz.mReaddir(), median(lists), "ms")
	return nil
}

// base64Rate encodes n bytes in 32 KiB pieces (envd's read size) into a
// reused buffer on the calling goroutine and returns MB/s of input.
func base64Rate(n int64) float64 {
	src := make([]byte, 32<<10)
	_, _ = rand.Read(src)
	dst := make([]byte, base64.StdEncoding.EncodedLen(len(src)))
	begin := time.Now()
	var done int64
	for ; done < n; done += int64(len(src)) {
		base64.StdEncoding.Encode(dst, src)
	}
	return mbps(done, time.Since(begin).Seconds())
}

// concurrentPipes runs n producers at once, each writing each bytes of
// streamLine repeated, reads every pipe in 32 KiB reads and verifies it.
func concurrentPipes(ctx context.Context, n int, each int64) (time.Duration, error) {
	errs := make(chan error, n)
	begin := time.Now()
	for i := 0; i < n; i++ {
		go func() {
			cmd := exec.CommandContext(ctx, "/bin/sh", "-c", fmt.Sprintf("yes %s | head -c %d", streamLine[:len(streamLine)-1], each))
			out, err := cmd.StdoutPipe()
			if err == nil {
				err = cmd.Start()
			}
			if err != nil {
				errs <- err
				return
			}
			v := &verifier{want: &repeating{block: []byte(streamLine), n: each}}
			_, err = io.CopyBuffer(v, out, make([]byte, 32<<10))
			if werr := cmd.Wait(); err == nil {
				err = werr
			}
			if err == nil && v.n != each {
				err = fmt.Errorf("pipe delivered %d of %d bytes", v.n, each)
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
	return time.Since(begin), first
}

// populate creates dir with n empty files named as the ListDir workload
// names them.
func populate(dir string, n int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for i := 1; i <= n; i++ {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("entry-%06d", i)))
		if err != nil {
			return err
		}
		f.Close()
	}
	return nil
}

// readdirLstat reads dir and lstats every entry, returning the count.
func readdirLstat(dir string) (int, error) {
	f, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return 0, err
	}
	var st syscall.Stat_t
	for _, name := range names {
		if err := syscall.Lstat(dir+"/"+name, &st); err != nil {
			return 0, err
		}
	}
	return len(names), nil
}

// loopbackTCP sends n bytes over a 127.0.0.1 connection inside this
// process, in 256 KiB writes and reads (the bench's download buffer), and
// returns MB/s.
func loopbackTCP(n int64) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	received := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			received <- err
			return
		}
		defer c.Close()
		got, err := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
		if err == nil && got != n {
			err = fmt.Errorf("loopback: received %d of %d bytes", got, n)
		}
		received <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	begin := time.Now()
	for sent := int64(0); sent < n; {
		chunk := buf
		if rest := n - sent; rest < int64(len(chunk)) {
			chunk = chunk[:rest]
		}
		w, err := c.Write(chunk)
		if err != nil {
			c.Close()
			return 0, err
		}
		sent += int64(w)
	}
	c.Close()
	if err := <-received; err != nil {
		return 0, err
	}
	return mbps(n, time.Since(begin).Seconds()), nil
}

// wrapperArgv is the command line the specification prescribes for every
// started process, with ionice and nice included when they are installed
// (as envd decides at spawn time).
func wrapperArgv(cmd string) []string {
	script := `echo 100 > /proc/$$/oom_score_adj && exec `
	if p, err := exec.LookPath("ionice"); err == nil {
		script += p + " -c 2 -n 4 "
	}
	if p, err := exec.LookPath("nice"); err == nil {
		script += p + " -n 0 "
	}
	script += `"${@}"`
	return []string{"/bin/sh", "-c", script, "--", cmd}
}
