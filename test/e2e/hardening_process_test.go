package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/gen/process/processconnect"
	"github.com/envd/envd/internal/envdtest"
)

// Output fan-out, stalled streams and abandoned input (issue 11 items 4, 8,
// 9; spec rpc.md §4.5, §4.11, §4.12). Every client here uses the JSON codec,
// as the E2B SDKs do.

const slowSubscriberMsg = "subscriber too slow: output queue overflow; reconnect with Connect"

// e2bOpts are the E2B SDK's Connect options: the JSON codec and no
// compression (its streams advertise none, spec rpc.md §2.3). With gzip, a
// client that does not read would take in megabytes of zeros per kilobyte
// of socket buffer.
var e2bOpts = []connect.ClientOption{connect.WithProtoJSON(), connect.WithAcceptCompression("gzip", nil, nil)}

// jsonProc is a process client speaking Connect with the JSON codec over
// HTTP/1.1 (the E2B SDK's protocol).
func jsonProc(e *envdtest.Envd) processconnect.ProcessClient {
	return e.Process(e2bOpts...)
}

// h2cProc is a JSON process client whose streams share one h2c connection.
// streamWindow > 0 sets the client's per-stream flow-control window, so that
// a stream whose client stops reading stalls envd's writes after that many
// bytes instead of several MiB.
func h2cProc(e *envdtest.Envd, streamWindow int) (processconnect.ProcessClient, *http.Client) {
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: protocols}
	if streamWindow > 0 {
		tr.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: streamWindow}
	}
	hc := &http.Client{Transport: tr}
	return processconnect.NewProcessClient(hc, e.URL, e2bOpts...), hc
}

// offsetsOf parses "stdout=<n>,stderr=<m>" (the replay header syntax).
func offsetsOf(t *testing.T, v string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, item := range strings.Split(v, ",") {
		name, num, ok := strings.Cut(strings.TrimSpace(item), "=")
		n, err := strconv.ParseUint(num, 10, 64)
		if !ok || err != nil {
			t.Fatalf("offsets %q", v)
		}
		out[name] = n
	}
	return out
}

// wantDisconnected checks the end of a stream that envd cut off for being
// too slow: aborted, after whole messages, with the offsets it received in
// the message and in the trailer. It returns the stdout offset.
func wantDisconnected(t *testing.T, err error, trailer http.Header) uint64 {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeAborted {
		t.Fatalf("stream ended with %v, want aborted", err)
	}
	tr := trailer.Get("Envd-Output-Offset")
	if want := slowSubscriberMsg + " (received " + tr + ")"; tr == "" || ce.Message() != want {
		t.Fatalf("message %q, trailer %q", ce.Message(), tr)
	}
	return offsetsOf(t, tr)["stdout"]
}

// streamReader reads a Start or Connect stream, timing every event.
type streamReader struct {
	next    func() (*pb.ProcessEvent, bool)
	err     func() error
	header  func() http.Header
	trailer func() http.Header

	// stdout holds the output, unless discard is set; n counts it.
	stdout  bytes.Buffer
	discard bool
	n       int
	end     *pb.ProcessEvent_EndEvent
	events  int
	last    time.Time
	maxGap  time.Duration
	stalled time.Duration // sum of the gaps between events longer than 300 ms
	gaps    []string      // those gaps and when they began
}

func startReader(s *connect.ServerStreamForClient[pb.StartResponse]) *streamReader {
	return &streamReader{
		next: func() (*pb.ProcessEvent, bool) {
			if !s.Receive() {
				return nil, false
			}
			return s.Msg().GetEvent(), true
		},
		err: s.Err, header: s.ResponseHeader, trailer: s.ResponseTrailer,
	}
}

func connectReader(s *connect.ServerStreamForClient[pb.ConnectResponse]) *streamReader {
	return &streamReader{
		next: func() (*pb.ProcessEvent, bool) {
			if !s.Receive() {
				return nil, false
			}
			return s.Msg().GetEvent(), true
		},
		err: s.Err, header: s.ResponseHeader, trailer: s.ResponseTrailer,
	}
}

// step reads one event; false at the end of the stream.
func (r *streamReader) step() bool {
	ev, ok := r.next()
	now := time.Now()
	if !r.last.IsZero() {
		gap := now.Sub(r.last)
		r.maxGap = max(r.maxGap, gap)
		if gap > 300*time.Millisecond {
			r.stalled += gap
			r.gaps = append(r.gaps, fmt.Sprintf("%v at %s", gap.Round(time.Millisecond), r.last.Format("15:04:05.000")))
		}
	}
	r.last = now
	if !ok {
		return false
	}
	r.events++
	switch {
	case ev.GetData() != nil:
		r.n += len(ev.GetData().GetStdout())
		if !r.discard {
			r.stdout.Write(ev.GetData().GetStdout())
		}
	case ev.GetEnd() != nil:
		r.end = ev.GetEnd()
	}
	return true
}

// first reads the start event.
func (r *streamReader) first(t *testing.T) uint32 {
	t.Helper()
	ev, ok := r.next()
	if !ok || ev.GetStart() == nil {
		t.Fatalf("first event %v (err %v)", ev, r.err())
	}
	return ev.GetStart().GetPid()
}

func (r *streamReader) drain() error {
	for r.step() {
	}
	return r.err()
}

// (a) A fast reader next to a new Connect every 0.9 s that never reads: the
// fast reader is never held up, the non-readers are cut with aborted and
// the exact offsets they received.
func TestFanoutE2E_FastReaderWithNonReadingConnects(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := jsonProc(e)
	ctx := procCtx(t)
	// About 7 s of output as fast as the reader takes it.
	script := `end=$(($(date +%s) + 7)); while [ $(date +%s) -lt $end ]; do head -c 4194304 /dev/zero; done`
	s, err := c.Start(ctx, procReq(&pb.StartRequest{Process: procSh(script), Stdin: ptr(false)}))
	if err != nil {
		t.Fatal(err)
	}
	fast := startReader(s)
	fast.discard = true // hundreds of MiB: count them only
	pid := fast.first(t)
	var got atomic.Int64
	done := make(chan error, 1)
	go func() {
		for fast.step() {
			got.Store(int64(fast.n))
		}
		done <- fast.err()
	}()

	type idle struct {
		r      *streamReader
		replay bool
	}
	var idles []idle
	tick := time.NewTicker(900 * time.Millisecond)
	defer tick.Stop()
	began := time.Now()
wait:
	for i := 0; ; i++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("fast reader: %v", err)
			}
			break wait
		case <-tick.C:
		}
		if time.Since(began) > 5*time.Second {
			continue // too close to the end of the output to be cut
		}
		// Half of them replay from where the fast reader is, so that their
		// offsets can be checked to the byte; the others are plain.
		req := procReq(&pb.ConnectRequest{Process: procPID(pid)})
		replay := i%2 == 0
		if replay {
			req.Header().Set("Envd-Replay-From", "stdout="+strconv.FormatInt(got.Load(), 10))
		}
		cs, err := c.Connect(ctx, req)
		if err != nil {
			t.Fatalf("connect %d: %v", i, err)
		}
		r := connectReader(cs)
		r.first(t) // and then nothing until the process has ended
		idles = append(idles, idle{r, replay})
	}
	if fast.end == nil || fast.end.GetExitCode() != 0 {
		t.Fatalf("fast reader end %v", fast.end)
	}
	t.Logf("fast reader: %d MiB, %d events, longest gap %v, stalled %v %v, %d idle Connects",
		fast.n>>20, fast.events, fast.maxGap, fast.stalled, fast.gaps, len(idles))
	if fast.maxGap > 2*time.Second || fast.stalled > 2*time.Second {
		t.Fatalf("fast reader held up: longest gap %v, %v in gaps over 300 ms: %v", fast.maxGap, fast.stalled, fast.gaps)
	}
	if len(idles) < 5 {
		t.Fatalf("only %d idle Connects", len(idles))
	}
	for i, in := range idles {
		err := in.r.drain()
		off := wantDisconnected(t, err, in.r.trailer())
		if in.r.end != nil {
			t.Fatalf("idle %d saw the end", i)
		}
		n := uint64(in.r.stdout.Len())
		if in.replay {
			start := offsetsOf(t, in.r.header().Get("Envd-Output-Offset"))["stdout"]
			if off != start+n {
				t.Fatalf("idle %d: trailer stdout=%d, but it started at %d and received %d", i, off, start, n)
			}
		} else if off < n || off > uint64(fast.n) {
			t.Fatalf("idle %d: trailer stdout=%d after %d bytes", i, off, n)
		}
	}
}

// slowRead reads a stream at about rate bytes per second until it ends.
func slowRead(r *streamReader, rate int) error {
	began := time.Now()
	for r.step() {
		if want := time.Duration(float64(r.n) / float64(rate) * float64(time.Second)); time.Since(began) < want {
			time.Sleep(want - time.Since(began))
		}
	}
	return r.err()
}

// (b) A slow reader (4 MB/s) next to a fast one: the slow one is cut with
// its offsets, the fast one is not throttled and gets every byte. Either may
// have come first; a fast newcomer leads once it has taken 32 MiB.
func TestFanoutE2E_SlowReaderNextToFastIsCut(t *testing.T) {
	const total = 160 << 20
	const slowRate = 4 << 20
	for _, slowFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("slow_first=%v", slowFirst), func(t *testing.T) {
			e := procEnvd(t, envdtest.Options{})
			c := jsonProc(e)
			ctx := procCtx(t)
			s, err := c.Start(ctx, procReq(&pb.StartRequest{Process: procSh("read go; exec head -c " + strconv.Itoa(total) + " /dev/zero")}))
			if err != nil {
				t.Fatal(err)
			}
			first := startReader(s)
			pid := first.first(t)
			cs, err := c.Connect(ctx, procReq(&pb.ConnectRequest{Process: procPID(pid)}))
			if err != nil {
				t.Fatal(err)
			}
			second := connectReader(cs)
			second.first(t)
			fast, slow := first, second
			if slowFirst {
				fast, slow = second, first
			}
			fast.discard, slow.discard = true, true
			procStdin(t, ctx, c, procPID(pid), "go\n")
			slowErr := make(chan error, 1)
			go func() { slowErr <- slowRead(slow, slowRate) }()
			began := time.Now()
			if err := fast.drain(); err != nil || fast.end == nil || fast.n != total {
				t.Fatalf("fast reader: %d bytes, end %v, err %v", fast.n, fast.end, err)
			}
			took := time.Since(began)
			err = <-slowErr
			off := wantDisconnected(t, err, slow.trailer())
			if off != uint64(slow.n) {
				t.Fatalf("slow reader: trailer stdout=%d after %d bytes", off, slow.n)
			}
			t.Logf("fast reader: %d MiB in %v (%.0f MB/s), longest gap %v; slow reader cut after %d MiB",
				total>>20, took.Round(time.Millisecond), float64(total)/took.Seconds()/1e6, fast.maxGap, off>>20)
			// Paced by the slow reader, the fast one would never have left
			// it a whole queue behind: the cut is the proof. Joining first,
			// the fast one was not held up either; joining second, it was
			// paced by the slow one (in bursts of half a queue) until it had
			// taken 32 MiB.
			if !slowFirst && (fast.maxGap > 2*time.Second || off > 32<<20) {
				t.Fatalf("fast reader held up for %v; the slow one cut after %d MiB", fast.maxGap, off>>20)
			}
		})
	}
}

// (c) A single slow reader, even one that pauses for 4 s, is never cut and
// gets every byte.
func TestFanoutE2E_SingleSlowReaderGetsEveryByte(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := jsonProc(e)
	const total = 24 << 20
	script := `f=$(mktemp); head -c ` + strconv.Itoa(total) + ` /dev/urandom > $f; sha256sum < $f | cut -d' ' -f1 >&2; cat $f; rm -f $f`
	s, err := c.Start(procCtx(t), procReq(&pb.StartRequest{Process: procSh(script), Stdin: ptr(false)}))
	if err != nil {
		t.Fatal(err)
	}
	r := startReader(s)
	r.first(t)
	var stderr bytes.Buffer
	began, paused := time.Now(), false
	for {
		ev, ok := r.next()
		if !ok {
			break
		}
		switch {
		case ev.GetData() != nil:
			r.stdout.Write(ev.GetData().GetStdout())
			stderr.Write(ev.GetData().GetStderr())
		case ev.GetEnd() != nil:
			r.end = ev.GetEnd()
		}
		if !paused && r.stdout.Len() > total/3 {
			paused = true
			time.Sleep(4 * time.Second)
		}
		// About 6 MB/s.
		if want := time.Duration(float64(r.stdout.Len()) / 6e6 * float64(time.Second)); time.Since(began) < want {
			time.Sleep(want - time.Since(began))
		}
	}
	if err := r.err(); err != nil || r.end.GetExitCode() != 0 {
		t.Fatalf("slow reader: %v, end %v", err, r.end)
	}
	sum := sha256.Sum256(r.stdout.Bytes())
	if r.stdout.Len() != total || fmt.Sprintf("%x", sum) != strings.TrimSpace(stderr.String()) {
		t.Fatalf("got %d bytes, checksum %x, process says %s", r.stdout.Len(), sum, stderr.String())
	}
}

// processGone reports whether pid is no longer in envd's process table.
func processGone(t *testing.T, c processconnect.ProcessClient, pid uint32) bool {
	t.Helper()
	l, err := c.List(context.Background(), connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range l.Msg.GetProcesses() {
		if p.GetPid() == pid {
			return false
		}
	}
	return true
}

// (d) A single reader that stops is cut only after the stall grace of 10 s
// without progress: until then the process waits on its pipe; afterwards
// its output goes on into the unclaimed buffer and it ends. The stopped
// reader, reading again, finds whole messages and then aborted with its
// offsets.
func TestFanoutE2E_StoppedReaderCutOnlyAfterGrace(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := jsonProc(e)
	s, err := c.Start(procCtx(t), procReq(&pb.StartRequest{Process: procSh("exec head -c 134217728 /dev/zero"), Stdin: ptr(false)}))
	if err != nil {
		t.Fatal(err)
	}
	r := startReader(s)
	r.discard = true
	pid := r.first(t)
	for r.n < 1<<20 {
		if !r.step() {
			t.Fatalf("stream ended: %v", r.err())
		}
	}
	stopped := time.Now() // the client reads nothing from here on
	var ended time.Duration
	for ended == 0 {
		time.Sleep(100 * time.Millisecond)
		if processGone(t, c, pid) {
			ended = time.Since(stopped)
		}
		if time.Since(stopped) > 25*time.Second {
			t.Fatal("the process did not end within 25 s of its reader stopping")
		}
	}
	if ended < 10*time.Second {
		t.Fatalf("the stopped reader was cut %v after it stopped, before the 10 s grace", ended)
	}
	err = r.drain()
	off := wantDisconnected(t, err, r.trailer())
	if off != uint64(r.n) {
		t.Fatalf("trailer stdout=%d after %d bytes", off, r.n)
	}
	t.Logf("process ended %v after its only reader stopped; the reader had %d MiB", ended.Round(time.Millisecond), off>>20)
}

// (e) A subscriber cut off for overflow resumes with Connect and
// Envd-Replay-From set to the offsets of its trailer: together the two
// streams hold every byte of the output exactly once. The idle subscriber
// uses a 1 KiB HTTP/2 stream window, so that its queue fills with events
// (1024 of them) while the output is still small enough to be retained.
func TestFanoutE2E_ResumeFromCutOffsetsExactlyOnce(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := jsonProc(e)
	ctx := procCtx(t)
	// 3000 numbered 64-byte records, one write each (192000 bytes).
	script := `read go; i=0; while [ $i -lt 3000 ]; do printf '%063d\n' $i; sleep 0.001; i=$((i+1)); done`
	s, err := c.Start(ctx, procReq(&pb.StartRequest{Process: procSh(script)}))
	if err != nil {
		t.Fatal(err)
	}
	all := startReader(s)
	pid := all.first(t)
	h2, _ := h2cProc(e, 1024)
	cs, err := h2.Connect(ctx, procReq(&pb.ConnectRequest{Process: procPID(pid)}))
	if err != nil {
		t.Fatal(err)
	}
	idle := connectReader(cs)
	idle.first(t)
	procStdin(t, ctx, c, procPID(pid), "go\n")
	if err := all.drain(); err != nil || all.end.GetExitCode() != 0 || all.stdout.Len() != 3000*64 {
		t.Fatalf("reader: %d bytes, end %v, err %v", all.stdout.Len(), all.end, err)
	}
	err = idle.drain()
	off := wantDisconnected(t, err, idle.trailer())
	if off != uint64(idle.stdout.Len()) || !bytes.Equal(idle.stdout.Bytes(), all.stdout.Bytes()[:off]) {
		t.Fatalf("cut subscriber: trailer stdout=%d, received %d bytes", off, idle.stdout.Len())
	}
	// Resume from the trailer (the process has ended: its retained exit
	// keeps the replay ring).
	req := procReq(&pb.ConnectRequest{Process: procPID(pid)}, "Envd-Replay-From", idle.trailer().Get("Envd-Output-Offset"))
	rs, err := c.Connect(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	resumed := connectReader(rs)
	resumed.first(t)
	if err := resumed.drain(); err != nil || resumed.end.GetExitCode() != 0 {
		t.Fatalf("resumed: %v, end %v", err, resumed.end)
	}
	if h := resumed.header(); h.Get("Envd-Replay-Gap") != "" || offsetsOf(t, h.Get("Envd-Output-Offset"))["stdout"] != off {
		t.Fatalf("resumed headers %v", h)
	}
	joined := append(idle.stdout.Bytes(), resumed.stdout.Bytes()...)
	if !bytes.Equal(joined, all.stdout.Bytes()) {
		t.Fatalf("cut + resumed = %d bytes, want the %d of the output exactly once", len(joined), all.stdout.Len())
	}
	t.Logf("cut after %d of %d bytes; resumed the rest", off, all.stdout.Len())
}

// busyLoops starts n CPU-bound shell loops for at most limit; they are
// killed when the test ends.
func busyLoops(t *testing.T, n int, limit time.Duration) {
	t.Helper()
	for i := 0; i < n; i++ {
		cmd := exec.Command("timeout", strconv.Itoa(int(limit.Seconds())), "sh", "-c", "while :; do :; done")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
		})
	}
}

// (f) A reader taking output as fast as it can while three busy loops
// compete for the CPU is never cut and never sees a torn message.
func TestFanoutE2E_FullSpeedReaderUnderCPULoad(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	busyLoops(t, 3, 120*time.Second)
	c := jsonProc(e)
	const total = 256 << 20
	for i := 0; i < 2; i++ {
		s, err := c.Start(procCtx(t), procReq(&pb.StartRequest{Process: procSh("exec head -c " + strconv.Itoa(total) + " /dev/zero"), Stdin: ptr(false)}))
		if err != nil {
			t.Fatal(err)
		}
		r := startReader(s)
		r.discard = true
		r.first(t)
		began := time.Now()
		if err := r.drain(); err != nil || r.end.GetExitCode() != 0 || r.n != total {
			t.Fatalf("run %d: %d of %d bytes, end %v, err %v", i, r.n, total, r.end, err)
		}
		t.Logf("run %d: %d MiB in %v, longest gap %v", i, total>>20, time.Since(began).Round(time.Millisecond), r.maxGap)
	}
}

// Item 9: over h2c a stream whose client stops reading ends only itself
// (its write is given up after 30 s by a stream reset); another Start on the
// same connection keeps working to its end.
func TestFanoutE2E_H2StalledStreamEndsOnlyItself(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c, _ := h2cProc(e, 0)
	ctx := procCtx(t)
	var conns sync.Map
	trace := func(name string) context.Context {
		return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			conns.Store(name, fmt.Sprintf("%p", i.Conn))
		}})
	}
	s, err := c.Start(trace("stalled"), procReq(&pb.StartRequest{Process: procSh("exec head -c 268435456 /dev/zero"), Stdin: ptr(false)}))
	if err != nil {
		t.Fatal(err)
	}
	stalled := startReader(s)
	stalled.discard = true
	stalled.first(t) // and nothing more: flow control stalls envd's writes
	const ticks = 38
	s2, err := c.Start(trace("steady"), procReq(&pb.StartRequest{Process: procSh("for i in $(seq " + strconv.Itoa(ticks) + "); do echo tick $i; sleep 1; done"), Stdin: ptr(false)}))
	if err != nil {
		t.Fatal(err)
	}
	steady := startReader(s2)
	steady.first(t)
	a, _ := conns.Load("stalled")
	b, _ := conns.Load("steady")
	if a == nil || a != b {
		t.Fatalf("the two streams are not on one connection: %v %v", a, b)
	}
	began := time.Now()
	if err := steady.drain(); err != nil || steady.end.GetExitCode() != 0 || strings.Count(steady.stdout.String(), "tick") != ticks {
		t.Fatalf("steady stream after %v: %q, end %v, err %v", time.Since(began), steady.stdout.String(), steady.end, err)
	}
	// By now (38 s) the stalled stream's write was given up: what it can
	// still read ends with a stream error, not with the end of the output.
	err = stalled.drain()
	if err == nil || stalled.end != nil || stalled.n >= 256<<20 {
		t.Fatalf("stalled stream: %d bytes, end %v, err %v", stalled.n, stalled.end, err)
	}
	t.Logf("stalled stream ended with %v after %d MiB; steady stream complete", err, stalled.n>>20)
	// The connection still serves new streams.
	r := startReader(mustStart(t, c, ctx, "echo again"))
	r.first(t)
	if err := r.drain(); err != nil || r.stdout.String() != "again\n" {
		t.Fatalf("after the reset: %q %v", r.stdout.String(), err)
	}
}

func mustStart(t *testing.T, c processconnect.ProcessClient, ctx context.Context, script string) *connect.ServerStreamForClient[pb.StartResponse] {
	t.Helper()
	s, err := c.Start(ctx, procReq(&pb.StartRequest{Process: procSh(script), Stdin: ptr(false)}))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// recovery runs a snapshot prepare/restore cycle and returns the
// goroutine count and RSS that envd logs at recovery (after its GC).
func recovery(t *testing.T, e *envdtest.Envd) (goroutines, rssKiB int) {
	t.Helper()
	n := len(recoveryLine.FindAllString(e.Log(), -1))
	prepare(t, e)
	do(t, "GET", e.URL+"/health", nil, nil)
	lcWait(t, "recovery logged", func() bool { return len(recoveryLine.FindAllString(e.Log(), -1)) > n })
	m := recoveryLine.FindAllStringSubmatch(e.Log(), -1)[n]
	rssKiB, _ = strconv.Atoi(m[1])
	goroutines, _ = strconv.Atoi(m[2])
	return goroutines, rssKiB
}

// Item 4: 50 SendInputs of 1 MiB (and 10 StreamInputs) to a process that
// does not read its stdin, each client giving up after 0.5 s, end with
// their clients: envd's goroutines and memory stay flat, nothing of them
// reaches the process later, another process's input goes through at
// once, and CloseStdin works.
func TestInputE2E_AbandonedWritesEndWithTheirClients(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := jsonProc(e)
	ctx := procCtx(t)
	dir := lcScratch(t)
	goFile, out := filepath.Join(dir, "go"), filepath.Join(dir, "out")
	// Reads nothing until the go file exists, then copies stdin to out.
	// The Start streams are closed at once: the snapshot cycles that
	// measure envd close every open stream, the processes live on.
	pid := startDetached(t, c, "while [ ! -e "+goFile+" ]; do sleep 0.1; done; exec cat > "+out)
	echoPID := startDetached(t, c, "exec cat")
	// Warm up, then take the baseline.
	procStdin(t, ctx, c, procPID(echoPID), "warm\n")
	g0, rss0 := recovery(t, e)

	big := bytes.Repeat([]byte("x"), 1<<20)
	var wg sync.WaitGroup
	var gaveUp atomic.Int32
	for i := 0; i < 60; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Half give up by their deadline (Connect-Timeout-Ms), half by
			// going away (the context is cancelled, the connection closed).
			cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			if i%2 == 1 {
				cctx, cancel = context.WithCancel(ctx)
				time.AfterFunc(500*time.Millisecond, cancel)
			}
			defer cancel()
			var err error
			if i < 50 {
				_, err = c.SendInput(cctx, connect.NewRequest(&pb.SendInputRequest{Process: procPID(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: big}}}))
			} else {
				st := c.StreamInput(cctx)
				_ = st.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: procPID(pid)}}})
				_ = st.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: big}}}}})
				_, err = st.CloseAndReceive()
			}
			if err != nil {
				gaveUp.Add(1)
			}
		}()
	}
	wg.Wait()
	if gaveUp.Load() != 60 {
		t.Fatalf("%d of 60 writes to a process that does not read gave up", gaveUp.Load())
	}
	// Another process's input goes through at once.
	began := time.Now()
	procStdin(t, ctx, c, procPID(echoPID), "still here\n")
	if d := time.Since(began); d > 2*time.Second {
		t.Fatalf("input to another process took %v", d)
	}
	echo := connectReader(mustConnect(t, c, ctx, echoPID))
	echo.first(t)
	for !strings.Contains(echo.stdout.String(), "warm\nstill here\n") {
		if !echo.step() {
			t.Fatalf("echo ended: %q %v", echo.stdout.String(), echo.err())
		}
	}
	g1, rss1 := recovery(t, e)
	t.Logf("goroutines %d → %d, rss %d → %d KiB", g0, g1, rss0, rss1)
	if g1 > g0+10 {
		t.Fatalf("goroutines grew from %d to %d: abandoned writes live on", g0, g1)
	}
	if rss1 > rss0+24<<10 {
		t.Fatalf("rss grew from %d to %d KiB: abandoned input is still held", rss0, rss1)
	}
	// The process now reads: what its pipe took before the clients gave up
	// (a prefix of one input, at most the pipe's 64 KiB) and then END; the
	// abandoned rest never arrives.
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	procStdin(t, ctx, c, procPID(pid), "END")
	if _, err := c.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: procPID(pid)})); err != nil {
		t.Fatal(err)
	}
	sleeper := connectReader(mustConnect(t, c, ctx, pid))
	sleeper.first(t)
	if err := sleeper.drain(); err != nil || sleeper.end.GetExitCode() != 0 {
		t.Fatalf("reader of stdin: %v, end %v", err, sleeper.end)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(b, []byte("END")) || len(b) > 1<<20 || bytes.Count(b, []byte{'x'}) != len(b)-3 {
		t.Fatalf("the process read %d bytes of stdin (suffix %q)", len(b), b[max(0, len(b)-8):])
	}
	t.Logf("the process read %d bytes of the abandoned input", len(b)-3)
}

// startDetached starts a process with a stdin pipe, reads its start event
// and closes the stream; the process keeps running.
func startDetached(t *testing.T, c processconnect.ProcessClient, script string) uint32 {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := c.Start(ctx, procReq(&pb.StartRequest{Process: procSh(script), Stdin: ptr(true)}))
	if err != nil {
		t.Fatal(err)
	}
	return startReader(s).first(t)
}

func mustConnect(t *testing.T, c processconnect.ProcessClient, ctx context.Context, pid uint32) *connect.ServerStreamForClient[pb.ConnectResponse] {
	t.Helper()
	s, err := c.Connect(ctx, procReq(&pb.ConnectRequest{Process: procPID(pid)}))
	if err != nil {
		t.Fatal(err)
	}
	return s
}
