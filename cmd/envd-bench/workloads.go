package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem"
)

// benchWorkloads runs the workloads every daemon gets, in a fixed order,
// and reports them under t.label.
func benchWorkloads(ctx context.Context, t *target, cfg config, sz sizes, rep *reporter) error {
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	dir := fmt.Sprintf("%s/%s-%s", cfg.dir, t.label, hex.EncodeToString(suffix[:]))
	if err := t.shell(ctx, "mkdir -p "+dir); err != nil {
		return fmt.Errorf("scratch directory: %w", err)
	}
	defer func() {
		_, _ = t.fs.Remove(context.Background(), connect.NewRequest(&filesystem.RemoveRequest{Path: dir}))
	}()
	name := func(n string) string { return t.label + "/" + n }

	// Exec round trip of /bin/true: Start → start, end → stream finished.
	var rtts []float64
	for i := 0; i < sz.execWarmup+sz.execs; i++ {
		begin := time.Now()
		res, err := t.exec(ctx, t.proc, nil, "/bin/true")
		if err != nil {
			return fmt.Errorf("exec /bin/true: %w", err)
		}
		if res.exitCode != 0 {
			return fmt.Errorf("/bin/true exited %d", res.exitCode)
		}
		if i >= sz.execWarmup {
			rtts = append(rtts, ms(time.Since(begin)))
		}
	}
	rep.add(name(sz.execP50()), percentile(rtts, 50), "ms")
	rep.add(name("exec_true_rtt_p99"), percentile(rtts, 99), "ms")

	// Parallel execs.
	elapsed, err := parallel(ctx, sz.parallelWorker, sz.parallelExecs, func() error {
		res, err := t.exec(ctx, t.proc, nil, "/bin/true")
		if err == nil && res.exitCode != 0 {
			err = fmt.Errorf("/bin/true exited %d", res.exitCode)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("parallel execs: %w", err)
	}
	rep.add(name(sz.execParallel()), float64(sz.parallelExecs)/elapsed.Seconds(), "execs/s")

	// Stdout streaming, binary codec and the E2B SDKs' JSON codec.
	if err := t.streamFigure(ctx, t.execBinary, sz, name(sz.stream()), rep); err != nil {
		return err
	}
	if err := t.streamFigure(ctx, t.execJSON, sz, name(sz.streamJSON()), rep); err != nil {
		return err
	}

	// Upload and download, identity encoding, content verified.
	block := make([]byte, 1<<20)
	_, _ = rand.Read(block)
	path := dir + "/transfer.bin"
	var up, down []float64
	for i := 0; i < sz.repeats; i++ {
		begin := time.Now()
		if err := t.upload(ctx, path, block, sz.transferBytes); err != nil {
			return err
		}
		up = append(up, mbps(sz.transferBytes, time.Since(begin).Seconds()))
		begin = time.Now()
		if err := t.download(ctx, path, block, sz.transferBytes); err != nil {
			return err
		}
		down = append(down, mbps(sz.transferBytes, time.Since(begin).Seconds()))
	}
	rep.add(name(sz.upload()), median(up), "MB/s")
	rep.add(name(sz.download()), median(down), "MB/s")

	// ListDir of a large directory.
	listDir := dir + "/list"
	if err := t.shell(ctx, fmt.Sprintf("mkdir -p %s && cd %s && seq -f 'entry-%%06.0f' 1 %d | xargs touch", listDir, listDir, sz.listEntries)); err != nil {
		return fmt.Errorf("populate ListDir directory: %w", err)
	}
	var lists []float64
	for i := 0; i < 2+sz.listRuns; i++ {
		begin := time.Now()
		resp, err := t.fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: listDir, Depth: 1}))
		if err != nil {
			return fmt.Errorf("ListDir: %w", err)
		}
		if n := len(resp.Msg.GetEntries()); n != sz.listEntries {
			return fmt.Errorf("ListDir returned %d of %d entries", n, sz.listEntries)
		}
		if i >= 2 {
			lists = append(lists, ms(time.Since(begin)))
		}
	}
	rep.add(name(sz.listDir()), median(lists), "ms")

	// Concurrent streams, every byte verified: binary codec, then JSON.
	for _, c := range []struct {
		run  streamer
		name string
	}{{t.execBinary, sz.concurrent()}, {t.execJSON, sz.concurrentJSON()}} {
		var walls []float64
		for i := 0; i < sz.repeats; i++ {
			begin := time.Now()
			if err := t.concurrentStreams(ctx, c.run, sz.streams, sz.streamEach); err != nil {
				return err
			}
			walls = append(walls, time.Since(begin).Seconds())
		}
		rep.add(name(c.name), median(walls), "s")
	}
	return nil
}

// streamFigure streams sz.streamBytes of stdout through client. Another
// daemon under comparison may end a stream whose client falls behind, so
// a failed run is reported, not fatal: the figure is the median of the
// runs that completed, and NaN if none did. (envd paces the producer to a
// reading client and never cuts it.)
func (t *target) streamFigure(ctx context.Context, run streamer, sz sizes, fig string, rep *reporter) error {
	var rates []float64
	var failures []string
	for i := 0; i < sz.repeats; i++ {
		begin := time.Now()
		res, err := run(ctx, nil, "/bin/sh", "-c", "exec head -c "+strconv.FormatInt(sz.streamBytes, 10)+" /dev/zero")
		if err == nil && res.stdout != sz.streamBytes {
			err = fmt.Errorf("delivered %d of %d bytes", res.stdout, sz.streamBytes)
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failures = append(failures, fmt.Sprintf("after %d bytes: %v", res.stdout, err))
			continue
		}
		rates = append(rates, mbps(res.stdout, time.Since(begin).Seconds()))
	}
	if len(failures) > 0 {
		rep.comment("%s: %d of %d runs did not complete; first: %s", fig, len(failures), sz.repeats, failures[0])
	}
	rep.add(fig, median(rates), "MB/s")
	return nil
}

// parallel runs total calls of fn on workers goroutines and returns the
// wall time.
func parallel(ctx context.Context, workers, total int, fn func() error) (time.Duration, error) {
	jobs := make(chan struct{}, total)
	for i := 0; i < total; i++ {
		jobs <- struct{}{}
	}
	close(jobs)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	begin := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				if ctx.Err() != nil {
					return
				}
				if err := fn(); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return time.Since(begin), first
}

// repeating yields n bytes made of block repeated.
type repeating struct {
	block []byte
	n     int64
	off   int64
}

func (r *repeating) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	rest := r.n - r.off
	start := r.off % int64(len(r.block))
	c := copy(p, r.block[start:])
	if int64(c) > rest {
		c = int(rest)
	}
	r.off += int64(c)
	return c, nil
}

func (t *target) filesURL(path string) string {
	return t.url + "/files?" + url.Values{"path": {path}}.Encode()
}

// upload writes n bytes of block repeated to path as a raw
// application/octet-stream body with a known length.
func (t *target) upload(ctx context.Context, path string, block []byte, n int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.filesURL(path), &repeating{block: block, n: n})
	if err != nil {
		return err
	}
	req.ContentLength = n
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := t.http.Do(req)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("upload: status %d: %s", resp.StatusCode, body)
	}
	var entries []map[string]any
	if err := json.Unmarshal(body, &entries); err != nil || len(entries) != 1 {
		return fmt.Errorf("upload: response %q", body)
	}
	return nil
}

// download reads path with identity encoding and checks that it is n bytes
// of block repeated.
func (t *target) download(ctx context.Context, path string, block []byte, n int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.filesURL(path), nil)
	if err != nil {
		return err
	}
	// Setting the header stops Go's transport from asking for gzip.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := t.http.Do(req)
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("download: status %d: %s", resp.StatusCode, body)
	}
	v := &verifier{want: &repeating{block: block, n: n}}
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(v, resp.Body, buf); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	if v.n != n {
		return fmt.Errorf("download: %d of %d bytes", v.n, n)
	}
	return nil
}

// verifier compares what is written to it with the bytes of want.
type verifier struct {
	want    io.Reader
	n       int64
	scratch []byte
}

func (v *verifier) Write(p []byte) (int, error) {
	if cap(v.scratch) < len(p) {
		v.scratch = make([]byte, len(p))
	}
	exp := v.scratch[:len(p)]
	if _, err := io.ReadFull(v.want, exp); err != nil {
		return 0, fmt.Errorf("more data than expected after %d bytes", v.n)
	}
	if !bytes.Equal(p, exp) {
		return 0, fmt.Errorf("content differs near byte %d", v.n)
	}
	v.n += int64(len(p))
	return len(p), nil
}

// streamLine is what each concurrent stream repeats (32 bytes).
const streamLine = "abcdefghijklmnopqrstuvwxyz01234\n"

// concurrentStreams runs n processes at once, each writing each bytes of
// streamLine repeated, and verifies every byte of every stream.
func (t *target) concurrentStreams(ctx context.Context, run streamer, n int, each int64) error {
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := &verifier{want: &repeating{block: []byte(streamLine), n: each}}
			res, err := run(ctx, func(b []byte) error {
				_, err := v.Write(b)
				return err
			}, "/bin/sh", "-c", fmt.Sprintf("yes %s | head -c %d", streamLine[:len(streamLine)-1], each))
			if err == nil && (res.stdout != each || res.exitCode != 0) {
				err = fmt.Errorf("stream delivered %d of %d bytes, exit %d", res.stdout, each, res.exitCode)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return fmt.Errorf("concurrent streams: %w", err)
		}
	}
	return nil
}
