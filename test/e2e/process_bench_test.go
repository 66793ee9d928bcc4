package e2e

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/gen/process/processconnect"
	"github.com/envd/envd/internal/envdtest"
)

// benchExec runs cmd through Start and reads the stream to its end.
func benchExec(b *testing.B, c processconnect.ProcessClient, cfg *pb.ProcessConfig) *procEvents {
	s, err := c.Start(context.Background(), procReq(&pb.StartRequest{Process: cfg, Stdin: ptr(false)}))
	if err != nil {
		b.Fatal(err)
	}
	ev := newProcReader[pb.StartResponse, *pb.StartResponse](s).drain()
	if ev.err != nil || ev.end == nil || ev.end.GetExitCode() != 0 {
		b.Fatalf("exec: %v %v", ev.err, ev.end)
	}
	return ev
}

// Exec round trip of /bin/true over the binary codec (the Wrenn host's
// exec): Start, start event, end event, stream complete. Reports p50/p99.
// Run with e.g. -benchtime 500x for meaningful percentiles.
func BenchmarkProcess_ExecRoundTrip(b *testing.B) {
	e := envdtest.Start(b, envdtest.Options{})
	c := e.Process()
	benchExec(b, c, &pb.ProcessConfig{Cmd: "/bin/true"}) // warm up
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		benchExec(b, c, &pb.ProcessConfig{Cmd: "/bin/true"})
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(float64(len(lat)-1)*p)]) / float64(time.Millisecond) }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// Execs of /bin/true per second with 8 concurrent clients.
func BenchmarkProcess_ParallelExecs8(b *testing.B) {
	e := envdtest.Start(b, envdtest.Options{})
	c := e.Process()
	benchExec(b, c, &pb.ProcessConfig{Cmd: "/bin/true"})
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	t0 := time.Now()
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				benchExec(b, c, &pb.ProcessConfig{Cmd: "/bin/true"})
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "execs/s")
}

// benchStream streams one process's stdout to a client tuned for
// throughput (binary codec, no gzip, 256 KiB read buffer) and returns the
// bytes delivered and the stream's error. A reading client is never cut off
// (flow control, docs/processes.md), so any error is a failure.
func benchStream(b *testing.B, c processconnect.ProcessClient, script string) (int, error) {
	s, err := c.Start(context.Background(), procReq(&pb.StartRequest{Process: procSh(script), Stdin: ptr(false)}))
	if err != nil {
		b.Fatal(err)
	}
	var n int
	for s.Receive() {
		if d := s.Msg().GetEvent().GetData(); d != nil {
			n += len(d.GetStdout())
		}
	}
	return n, s.Err()
}

func benchStreamClient(e *envdtest.Envd) processconnect.ProcessClient {
	hc := &http.Client{Transport: &http.Transport{ReadBufferSize: 256 << 10}}
	return processconnect.NewProcessClient(hc, e.URL, connect.WithAcceptCompression("gzip", nil, nil))
}

func runStreamBench(b *testing.B, script string) {
	e := envdtest.Start(b, envdtest.Options{})
	c := benchStreamClient(e)
	const size = 512 << 20
	var delivered int64
	b.ResetTimer()
	t0 := time.Now()
	for i := 0; i < b.N; i++ {
		n, err := benchStream(b, c, script)
		delivered += int64(n)
		if err != nil || n != size {
			b.Fatalf("stream ended after %d of %d bytes: %v", n, size, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(delivered)/time.Since(t0).Seconds()/1e6, "MB/s")
}

// One process writing 512 MiB from /dev/zero as fast as the kernel lets it.
func BenchmarkProcess_Stdout512MiB(b *testing.B) {
	runStreamBench(b, "head -c 536870912 /dev/zero")
}

// The same 512 MiB in 1 MiB bursts (one head per MiB), a pace closer to
// real programs' output.
func BenchmarkProcess_Stdout512MiBBursts(b *testing.B) {
	runStreamBench(b, "for i in $(seq 512); do head -c 1048576 /dev/zero; done")
}

// Keystroke to echo on a terminal, as an interactive shell's user sees it:
// one byte sent with SendInput (a unary RPC) is echoed by the terminal and
// must come back on the open Start stream at once, never held back for
// output that might follow (docs/processes.md, "Sending output"). Reports
// p50/p99 over b.N keystrokes; run with e.g. -benchtime 500x. The binary
// codec is the Wrenn host's; JSON is what the E2B SDKs use.
func BenchmarkProcess_PTYEcho(b *testing.B) {
	for _, json := range []bool{false, true} {
		name := "binary"
		if json {
			name = "json"
		}
		b.Run(name, func(b *testing.B) { benchPTYEcho(b, json) })
	}
}

func benchPTYEcho(b *testing.B, json bool) {
	e := envdtest.Start(b, envdtest.Options{})
	var opts []connect.ClientOption
	if json {
		opts = append(opts, connect.WithProtoJSON())
	}
	c := e.Process(opts...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The terminal echoes what is typed; the program itself prints nothing
	// (its output would mix with the echo).
	s, err := c.Start(ctx, procReq(&pb.StartRequest{Process: procSh("exec cat >/dev/null"), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}}}))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if !s.Receive() || s.Msg().GetEvent().GetStart() == nil {
		b.Fatalf("no start event: %v", s.Err())
	}
	sel := procPID(s.Msg().GetEvent().GetStart().GetPid())
	echoed := make(chan byte, 1)
	go func() {
		defer close(echoed)
		for s.Receive() {
			for _, ch := range s.Msg().GetEvent().GetData().GetPty() {
				echoed <- ch
			}
		}
	}()
	key := func(ch byte) time.Duration {
		t0 := time.Now()
		if _, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte{ch}}}})); err != nil {
			b.Fatal(err)
		}
		for got := range echoed {
			if got == ch {
				return time.Since(t0)
			}
		}
		b.Fatal("stream ended")
		return 0
	}
	for i := 0; i < 20; i++ { // warm up
		key('a' + byte(i%26))
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// A line at most 60 characters long: the terminal's line buffer
		// never fills (cat reads each line at its carriage return).
		ch := byte('a' + i%26)
		if i%60 == 59 {
			ch = '\r'
		}
		lat = append(lat, key(ch))
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(float64(len(lat)-1)*p)]) / float64(time.Microsecond) }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}
