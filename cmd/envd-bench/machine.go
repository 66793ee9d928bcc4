package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
	rep.add(fmt.Sprintf("machine/fork_exec_parallel_%dworkers", sz.parallelWorker), float64(sz.parallelExecs)/elapsed.Seconds(), "execs/s")

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
	rep.add(fmt.Sprintf("machine/pipe_stream_%dMiB", sz.streamBytes>>20), median(rates), "MB/s")

	rates = rates[:0]
	for i := 0; i < sz.repeats; i++ {
		r, err := loopbackTCP(sz.streamBytes)
		if err != nil {
			return err
		}
		rates = append(rates, r)
	}
	rep.add(fmt.Sprintf("machine/loopback_tcp_%dMiB", sz.streamBytes>>20), median(rates), "MB/s")

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
	rep.add(fmt.Sprintf("machine/file_write_%dMiB", sz.transferBytes>>20), median(writes), "MB/s")
	rep.add(fmt.Sprintf("machine/file_read_%dMiB", sz.transferBytes>>20), median(reads), "MB/s")
	return nil
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
