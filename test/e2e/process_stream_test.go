package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// 100 Start streams at once, each 1 MiB of random bytes: every byte
// arrives on its stream (the process prints the checksum on stderr).
func TestProcess_ConcurrentStarts100x1MiB(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := e.Process()
	script := `f=$(mktemp); head -c 1048576 /dev/urandom > $f; sha256sum < $f | cut -d' ' -f1 >&2; cat $f; rm -f $f`
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := c.Start(procCtx(t), procReq(&pb.StartRequest{Process: procSh(script), Stdin: ptr(false)}))
			if err != nil {
				errs <- err
				return
			}
			ev := newProcReader[pb.StartResponse, *pb.StartResponse](s).drain()
			sum := sha256.Sum256(ev.out["stdout"].Bytes())
			switch {
			case ev.err != nil:
				errs <- ev.err
			case ev.end.GetExitCode() != 0:
				errs <- fmt.Errorf("exit %v: %s", ev.end, ev.stderr())
			case ev.out["stdout"].Len() != 1<<20:
				errs <- fmt.Errorf("got %d bytes", ev.out["stdout"].Len())
			case hex.EncodeToString(sum[:]) != strings.TrimSpace(ev.stderr()):
				errs <- fmt.Errorf("checksum %x, process says %s", sum, ev.stderr())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// rawStream is a Connect streaming call made by hand over one TCP
// connection whose receive buffer is tiny, so that a reader that stops
// reading stalls envd's writes quickly.
type rawStream struct {
	conn net.Conn
	resp *http.Response
}

func rawCall(t *testing.T, e *envdtest.Envd, method string, msg proto.Message) *rawStream {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", "127.0.0.1:"+strconv.Itoa(e.Port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	b, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 5+len(b))
	binary.BigEndian.PutUint32(body[1:], uint32(len(b)))
	copy(body[5:], b)
	req, _ := http.NewRequest("POST", e.URL+"/process.Process/"+method, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/connect+proto")
	req.Header.Set("Connect-Protocol-Version", "1")
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("raw %s: %v %v", method, resp, err)
	}
	return &rawStream{conn: conn, resp: resp}
}

// next reads one envelope.
func (r *rawStream) next() (flags byte, payload []byte, err error) {
	var h [5]byte
	if _, err := io.ReadFull(r.resp.Body, h[:]); err != nil {
		return 0, nil, err
	}
	payload = make([]byte, binary.BigEndian.Uint32(h[1:]))
	_, err = io.ReadFull(r.resp.Body, payload)
	return h[0], payload, err
}

// A subscriber that stops reading does not delay another subscriber of the
// same process nor the process's exit: once its queue is full while the
// other one has room, it is disconnected with aborted, after whole
// messages, and with the offsets it received (spec rpc.md §4.5, D10).
func TestProcess_StalledSubscriberDoesNotDelayOthers(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := e.Process()
	ctx := procCtx(t)
	const total = 48 << 20
	// Waits for a line, then writes 48 MiB at about 20 MB/s, a pace a
	// reader under the race detector keeps up with. The reading subscriber
	// uses large read buffers so that it keeps up comfortably.
	good := procStart(t, ctx, benchStreamClient(e), procReq(&pb.StartRequest{Process: procSh("read go; for i in $(seq 192); do head -c 262144 /dev/zero; sleep 0.01; done")}))
	pid := good.ev.pid
	stalled := rawCall(t, e, "Connect", &pb.ConnectRequest{Process: procPID(pid)})
	_, payload, err := stalled.next()
	if err != nil {
		t.Fatal(err)
	}
	var first pb.ConnectResponse
	if err := proto.Unmarshal(payload, &first); err != nil || first.GetEvent().GetStart().GetPid() != pid {
		t.Fatalf("start event: %v %v", &first, err)
	}
	// From here on the raw Connect stream is not read any more.
	procStdin(t, ctx, c, procPID(pid), "\n")
	ev := good.drain()
	wantEnd(t, ev, 0, true, "exit status 0")
	if ev.out["stdout"].Len() != total {
		t.Fatalf("the reading subscriber got %d of %d bytes", ev.out["stdout"].Len(), total)
	}
	// The stalled stream was cut off: what it can still read is whole
	// messages, well short of the output and without the process's end,
	// then the end of the stream with aborted and its offsets.
	_ = stalled.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	n := 0
	for {
		flags, payload, err := stalled.next()
		if err != nil {
			t.Fatalf("stalled stream after %d bytes: %v", n, err)
		}
		if flags&2 != 0 {
			var end struct {
				Error    struct{ Code, Message string }
				Metadata map[string][]string
			}
			if err := json.Unmarshal(payload, &end); err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("stdout=%d,stderr=0", n)
			if end.Error.Code != "aborted" || end.Error.Message != "subscriber too slow: output queue overflow; reconnect with Connect (received "+want+")" ||
				len(end.Metadata["Envd-Output-Offset"]) != 1 || end.Metadata["Envd-Output-Offset"][0] != want {
				t.Fatalf("end of the stalled stream after %d bytes: %s", n, payload)
			}
			break
		}
		var m pb.ConnectResponse
		if err := proto.Unmarshal(payload, &m); err != nil || m.GetEvent().GetEnd() != nil {
			t.Fatalf("stalled stream: %v, %v", &m, err)
		}
		n += len(m.GetEvent().GetData().GetStdout())
	}
	if n >= total {
		t.Fatalf("stalled stream got %d bytes", n)
	}
	// envd serves on.
	wantEnd(t, procRun(t, c, procReq(&pb.StartRequest{Process: procSh("true")})), 0, true, "exit status 0")
}

// Output produced while nobody is attached goes to the next Connect, once.
func TestProcess_UnclaimedOutputDeliveredOnce(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for _, codec := range procCodecs {
		t.Run(codec.name, func(t *testing.T) {
			c := e.Process(codec.opts...)
			ctx := procCtx(t)
			input := func(pid uint32, s string) { procStdin(t, ctx, c, procPID(pid), s) }
			startCtx, cancel := context.WithCancel(ctx)
			r := procStart(t, startCtx, c, procReq(&pb.StartRequest{Process: procSh("read x; echo missed-$x; echo err-$x >&2; read y; echo live-$y")}))
			pid := r.ev.pid
			cancel() // the client goes away
			input(pid, "1\n")
			time.Sleep(300 * time.Millisecond) // let it be produced while detached
			cr := procConnect(t, ctx, c, procReq(&pb.ConnectRequest{Process: procPID(pid)}))
			cr.until(t, "stdout", "missed-1\n")
			cr.until(t, "stderr", "err-1\n")
			input(pid, "2\n")
			ev := cr.drain()
			wantEnd(t, ev, 0, true, "exit status 0")
			if ev.stdout() != "missed-1\nlive-2\n" || ev.stderr() != "err-1\n" || ev.kinds[1] != "data" {
				t.Fatalf("connect got %q %q %v", ev.stdout(), ev.stderr(), ev.kinds)
			}
			// Delivered once: a later Connect gets only start and end.
			ev = procConnect(t, ctx, c, procReq(&pb.ConnectRequest{Process: procPID(pid)})).drain()
			wantEnd(t, ev, 0, true, "exit status 0")
			if len(ev.kinds) != 2 || ev.header.Get("Envd-Output-Offset") != "" {
				t.Fatalf("second connect: %v %v", ev.kinds, ev.header)
			}
		})
	}
}

// The Wrenn host reads only the start of a background process and closes
// the stream: the process keeps running, and what it writes afterwards
// reaches the later Connect by tag.
func TestProcess_StartCancelledProcessKeepsRunning(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := e.Process()
	ctx := procCtx(t)
	startCtx, cancel := context.WithCancel(ctx)
	r := procStart(t, startCtx, c, procReq(&pb.StartRequest{Process: procSh("sleep 0.3; echo begin; sleep 0.3; echo done"), Tag: ptr("bg-job"), Stdin: ptr(false)}))
	cancel()
	ev := procConnect(t, ctx, c, procReq(&pb.ConnectRequest{Process: procTag("bg-job")})).drain()
	wantEnd(t, ev, 0, true, "exit status 0")
	if ev.pid != r.ev.pid || ev.stdout() != "begin\ndone\n" {
		t.Fatalf("pid %d/%d, output %q", ev.pid, r.ev.pid, ev.stdout())
	}
}

// seqText is what `seq a b` prints.
func seqText(a, b int) string {
	var s strings.Builder
	for i := a; i <= b; i++ {
		s.WriteString(strconv.Itoa(i) + "\n")
	}
	return s.String()
}

// With Envd-Replay-From a reconnecting client gets exactly the bytes after
// the offset it names, then live output: no loss, no duplicates.
func TestProcess_ReplayFromOffsetExactlyOnce(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for _, codec := range procCodecs {
		t.Run(codec.name, func(t *testing.T) {
			c := e.Process(codec.opts...)
			ctx := procCtx(t)
			input := func(pid uint32, s string) { procStdin(t, ctx, c, procPID(pid), s) }
			startCtx, cancel := context.WithCancel(ctx)
			r := procStart(t, startCtx, c, procReq(&pb.StartRequest{Process: procSh("while read n; do seq $n $((n+3000)); done")}))
			pid := r.ev.pid
			input(pid, "1\n")
			r.until(t, "stdout", "\n3001\n")
			have := r.ev.stdout()
			cancel()
			input(pid, "10000\n")
			input(pid, "20000\n")
			time.Sleep(300 * time.Millisecond)
			cr := procConnect(t, ctx, c, procReq(&pb.ConnectRequest{Process: procPID(pid)}, "Envd-Replay-From", "stdout="+strconv.Itoa(len(have))+",stderr=0"))
			if h := cr.ev.header; h.Get("Envd-Output-Offset") != "stdout="+strconv.Itoa(len(have))+",stderr=0" || h.Get("Envd-Replay-Gap") != "" {
				t.Fatalf("headers %v", h)
			}
			cr.until(t, "stdout", "\n23000\n")
			input(pid, "30000\n")
			cr.until(t, "stdout", "\n33000\n")
			if _, err := c.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: procPID(pid)})); err != nil {
				t.Fatal(err)
			}
			ev := cr.drain()
			wantEnd(t, ev, 0, true, "exit status 0")
			want := seqText(1, 3001) + seqText(10000, 13000) + seqText(20000, 23000) + seqText(30000, 33000)
			if got := have + ev.stdout(); got != want {
				t.Fatalf("replayed output differs: got %d bytes, want %d", len(got), len(want))
			}
			// The replay claimed the unclaimed output: no duplicate later.
			ev = procConnect(t, ctx, c, procReq(&pb.ConnectRequest{Process: procPID(pid)})).drain()
			if len(ev.kinds) != 2 {
				t.Fatalf("plain connect after replay: %v", ev.kinds)
			}
		})
	}
}

func TestProcess_ReplayGapAndBadHeaders(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := e.Process()
	ctx := procCtx(t)
	const total = 3 << 20
	r := procStart(t, ctx, c, procReq(&pb.StartRequest{Process: procSh("head -c 3145728 /dev/zero | tr '\\0' a"), Stdin: ptr(false)}))
	wantEnd(t, r.drain(), 0, true, "exit status 0")
	// From offset 0 of an ended process: the retention record still has the
	// newest part; the rest is reported as a gap.
	ev := procConnect(t, ctx, c, procReq(&pb.ConnectRequest{Process: procPID(r.ev.pid)}, "Envd-Replay-From", "stdout=0")).drain()
	wantEnd(t, ev, 0, true, "exit status 0")
	from, err1 := strconv.Atoi(strings.TrimPrefix(strings.TrimSuffix(ev.header.Get("Envd-Output-Offset"), ",stderr=0"), "stdout="))
	gap, err2 := strconv.Atoi(strings.TrimPrefix(ev.header.Get("Envd-Replay-Gap"), "stdout="))
	n := ev.out["stdout"].Len()
	if err1 != nil || err2 != nil || gap != from || from+n != total || n == 0 || n > 1<<20 || strings.Trim(ev.stdout(), "a") != "" {
		t.Fatalf("offset %q gap %q, %d bytes replayed", ev.header.Get("Envd-Output-Offset"), ev.header.Get("Envd-Replay-Gap"), n)
	}
	for hdr, msg := range map[string]string{
		"bogus":            `invalid Envd-Replay-From header: "bogus" is not <stream>=<offset>`,
		"stdin=3":          `invalid Envd-Replay-From header: unknown stream "stdin" (want stdout, stderr or pty)`,
		"stdout=3145729":   "replay offset stdout=3145729 is beyond the 3145728 bytes the process has written to stdout",
		"stdout=0,pty=1":   "replay offset pty=1 is beyond the 0 bytes the process has written to pty",
		"stdout=1,stdout=": `invalid Envd-Replay-From header: stream stdout given twice`,
	} {
		s, err := c.Connect(ctx, procReq(&pb.ConnectRequest{Process: procPID(r.ev.pid)}, "Envd-Replay-From", hdr))
		if err == nil {
			err = newProcReader[pb.ConnectResponse, *pb.ConnectResponse](s).drain().err
		}
		wantCode(t, err, connect.CodeInvalidArgument, msg)
	}
}
