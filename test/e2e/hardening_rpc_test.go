package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/envd/envd/gen/filesystem"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// hrGzip compresses b at the best ratio (a bomb is as small as gzip allows).
func hrGzip(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// hrEnvelope frames one message of a Connect or gRPC stream.
func hrEnvelope(flags byte, payload []byte) []byte {
	out := make([]byte, 5, 5+len(payload))
	out[0] = flags
	binary.BigEndian.PutUint32(out[1:], uint32(len(payload)))
	return append(out, payload...)
}

// hrOutcome is what a hand-made RPC request got back: the Connect error
// code ("" for success) and message, whichever protocol carried it.
type hrOutcome struct {
	status int
	code   string
	msg    string
	msgs   int // data envelopes of a stream response
}

// hrStream posts a Connect streaming request body and reads the response
// envelopes up to the end of the stream.
func hrStream(ctx context.Context, c *http.Client, url string, hdr http.Header, body []byte) (hrOutcome, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return hrOutcome{}, err
	}
	req.Header = hdr.Clone()
	req.Header.Set("Content-Type", "application/connect+proto")
	req.Header.Set("Connect-Protocol-Version", "1")
	resp, err := c.Do(req)
	if err != nil {
		return hrOutcome{}, err
	}
	defer resp.Body.Close()
	return hrReadStream(resp)
}

// hrReadStream reads a Connect streaming response up to its end.
func hrReadStream(resp *http.Response) (hrOutcome, error) {
	out := hrOutcome{status: resp.StatusCode}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return out, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	for {
		var pre [5]byte
		if _, err := io.ReadFull(resp.Body, pre[:]); err != nil {
			return out, fmt.Errorf("stream ended without end-of-stream envelope: %w", err)
		}
		n := binary.BigEndian.Uint32(pre[1:])
		payload := make([]byte, n)
		if _, err := io.ReadFull(resp.Body, payload); err != nil {
			return out, err
		}
		if pre[0]&0x01 != 0 {
			zr, err := gzip.NewReader(bytes.NewReader(payload))
			if err != nil {
				return out, err
			}
			if payload, err = io.ReadAll(io.LimitReader(zr, 256<<20)); err != nil {
				return out, err
			}
		}
		if pre[0]&0x02 == 0 {
			out.msgs++
			continue
		}
		var end struct {
			Error *struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(payload, &end); err != nil {
			return out, fmt.Errorf("end of stream %.200q: %w", payload, err)
		}
		if end.Error != nil {
			out.code, out.msg = end.Error.Code, end.Error.Message
		}
		return out, nil
	}
}

// hrUnary posts a Connect unary request body (proto codec).
func hrUnary(ctx context.Context, c *http.Client, url string, hdr http.Header, body []byte) (hrOutcome, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return hrOutcome{}, err
	}
	req.Header = hdr.Clone()
	req.Header.Set("Content-Type", "application/proto")
	req.Header.Set("Connect-Protocol-Version", "1")
	resp, err := c.Do(req)
	if err != nil {
		return hrOutcome{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	out := hrOutcome{status: resp.StatusCode}
	if err != nil || resp.StatusCode == http.StatusOK {
		return out, err
	}
	var e struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return out, fmt.Errorf("status %d body %q", resp.StatusCode, b)
	}
	out.code, out.msg = e.Code, e.Message
	return out, nil
}

// hrBigStart is a StartRequest of about n bytes (one huge argument) that
// gzip shrinks about a thousand times.
func hrBigStart(t testing.TB, n int) []byte {
	t.Helper()
	b, err := proto.Marshal(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/true", Args: []string{strings.Repeat("a", n)}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hrBombs sends the same request parallel times at once over HTTP/1.1,
// while sampling envd's RSS, and returns the outcomes and the peak.
func hrBombs(t *testing.T, e *envdtest.Envd, parallel int, send func(ctx context.Context, c *http.Client) (hrOutcome, error)) ([]hrOutcome, int64) {
	t.Helper()
	rss := sampleRSS(t, e.Pid())
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	outcomes := make([]hrOutcome, parallel)
	errs := make([]error, parallel)
	for i := range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outcomes[i], errs[i] = send(ctx, &http.Client{})
		}()
	}
	wg.Wait()
	peak, samples := rss.finish()
	t.Logf("peak RSS %d MiB over %d samples", peak>>20, samples)
	codes := map[string]int{}
	for _, o := range outcomes {
		codes[o.code]++
	}
	t.Logf("outcomes: %v", codes)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	return outcomes, peak
}

// hrOutcomesOK checks that every outcome is either resource_exhausted with
// the budget's or the limit's message, or one of ok (the request was
// decoded within the budget and the handler answered).
func hrOutcomesOK(t *testing.T, outcomes []hrOutcome, ok ...string) {
	t.Helper()
	for i, o := range outcomes {
		if o.code == "resource_exhausted" {
			if !strings.Contains(o.msg, "too many large request messages in flight") && !strings.Contains(o.msg, "larger than the limit") {
				t.Fatalf("request %d: message %q", i, o.msg)
			}
			continue
		}
		if !slices.Contains(ok, o.code) {
			t.Fatalf("request %d: %+v", i, o)
		}
	}
}

// hrAlive checks that envd still runs commands and answers RPCs.
func hrAlive(t *testing.T, e *envdtest.Envd) {
	t.Helper()
	res := lcExec(t, e, "echo alive")
	if !strings.Contains(res.stdout.String(), "alive") {
		t.Fatalf("envd no longer runs commands: %+v", res)
	}
}

// A 61 KB gzip envelope that inflates to a 60 MiB StartRequest, sent 8
// times at once, must neither run envd out of memory nor stop it serving:
// the budget lets one through at a time, the others wait for their turn or
// are refused with resource_exhausted; one let through is decoded and then
// refused by the kernel (an argument that long cannot be exec'd).
// Unbounded, the 8 cost 1.7 GB. The ceiling allows one such request at a
// time: about three times its size to decode it, and three times as much
// again for the copies the spawn makes of its command line (argv, the
// joined command line, the error message).
func TestHardening_CompressedStartBombsAreBounded(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	bomb := hrEnvelope(0x01, hrGzip(t, hrBigStart(t, 60<<20)))
	if len(bomb) > 100<<10 {
		t.Fatalf("bomb is %d bytes", len(bomb))
	}
	hdr := http.Header{"Connect-Content-Encoding": {"gzip"}}
	outcomes, peak := hrBombs(t, e, 8, func(ctx context.Context, c *http.Client) (hrOutcome, error) {
		return hrStream(ctx, c, e.URL+"/process.Process/Start", hdr, bomb)
	})
	hrOutcomesOK(t, outcomes, "invalid_argument")
	if peak > 640<<20 {
		t.Fatalf("peak RSS %d MiB during the bombs, ceiling 640 MiB", peak>>20)
	}
	for _, o := range outcomes {
		if len(o.msg) > 8<<10 {
			t.Fatalf("error message of %d bytes", len(o.msg))
		}
	}
	hrAlive(t, e)
}

// The same with SendInput, whose handler keeps nothing of the message: the
// peak is what the budget lets through at once.
func TestHardening_CompressedSendInputBombsAreBounded(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	b, err := proto.Marshal(&pb.SendInputRequest{Process: procPID(999999), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: make([]byte, 60<<20)}}})
	if err != nil {
		t.Fatal(err)
	}
	bomb := hrGzip(t, b)
	hdr := http.Header{"Content-Encoding": {"gzip"}}
	outcomes, peak := hrBombs(t, e, 8, func(ctx context.Context, c *http.Client) (hrOutcome, error) {
		return hrUnary(ctx, c, e.URL+"/process.Process/SendInput", hdr, bomb)
	})
	hrOutcomesOK(t, outcomes, "not_found")
	if peak > 300<<20 {
		t.Fatalf("peak RSS %d MiB during the bombs, ceiling 300 MiB", peak>>20)
	}
	hrAlive(t, e)
}

// hrStdinBody streams a SendInputRequest with n bytes of stdin for pid
// 999999 without holding it in memory.
func hrStdinBody(n int) (io.Reader, int64) {
	sel, _ := proto.Marshal(procPID(999999))
	stdin := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.BytesType), uint64(n))            // ProcessInput.stdin
	input := protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.BytesType), uint64(len(stdin)+n)) // SendInputRequest.input
	head := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), sel)                    // SendInputRequest.process
	head = append(append(head, input...), stdin...)
	return io.MultiReader(bytes.NewReader(head), io.LimitReader(hrRepeat('a'), int64(n))), int64(len(head) + n)
}

type hrRepeat byte

func (r hrRepeat) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

// Uncompressed large bodies share the budget too: 24 concurrent 60 MiB
// SendInput bodies would hold 1.4 GB if each were read whole (100 would
// hold 6 GB).
func TestHardening_UncompressedLargeBodiesShareTheBudget(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	const n = 60 << 20
	outcomes, peak := hrBombs(t, e, 24, func(ctx context.Context, c *http.Client) (hrOutcome, error) {
		body, size := hrStdinBody(n)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.URL+"/process.Process/SendInput", body)
		if err != nil {
			return hrOutcome{}, err
		}
		req.ContentLength = size
		req.Header.Set("Content-Type", "application/proto")
		resp, err := c.Do(req)
		if err != nil {
			// envd answered and closed the connection while the client was
			// still sending: the answer is lost, the refusal is not.
			return hrOutcome{code: "resource_exhausted", msg: "too many large request messages in flight (send failed: " + err.Error() + ")"}, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var e struct{ Code, Message string }
		_ = json.Unmarshal(b, &e)
		return hrOutcome{status: resp.StatusCode, code: e.Code, msg: e.Message}, nil
	})
	hrOutcomesOK(t, outcomes, "not_found")
	if peak > 300<<20 {
		t.Fatalf("peak RSS %d MiB, ceiling 300 MiB", peak>>20)
	}
	hrAlive(t, e)
}

// A small procedure has a small limit: ListDir with a compressed body that
// inflates to 2 MiB is refused, so are bodies that would inflate to 512 MiB
// (inflated only up to the limit) and 2 GiB (refused by its size alone).
func TestHardening_SmallProcedureLimit(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	twoMiB, err := proto.Marshal(&filesystem.ListDirRequest{Path: "/" + strings.Repeat("a", 2<<20)})
	if err != nil {
		t.Fatal(err)
	}
	// 2 KB inflating to 2 MiB, 540 KB inflating to 512 MiB, 2 MB inflating
	// to 2 GiB.
	bodies := [][]byte{hrGzip(t, twoMiB), hrGzipZeros(t, 512<<20), hrGzipZeros(t, 2<<30)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hdr := http.Header{"Content-Encoding": {"gzip"}}
	for _, body := range bodies {
		rss := sampleRSS(t, e.Pid())
		start := time.Now()
		o, err := hrUnary(ctx, &http.Client{}, e.URL+"/filesystem.Filesystem/ListDir", hdr, body)
		peak, _ := rss.finish()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d byte body: %+v in %s, peak RSS %d MiB", len(body), o, time.Since(start), peak>>20)
		if o.status != http.StatusTooManyRequests || o.code != "resource_exhausted" || !strings.Contains(o.msg, "limit of 1048576 bytes for /filesystem.Filesystem/ListDir") {
			t.Fatalf("%+v", o)
		}
		if peak > 100<<20 {
			t.Fatalf("peak RSS %d MiB", peak>>20)
		}
	}
	// Uncompressed too.
	o, err := hrUnary(ctx, &http.Client{}, e.URL+"/filesystem.Filesystem/ListDir", http.Header{}, twoMiB)
	if err != nil || o.code != "resource_exhausted" {
		t.Fatalf("%+v %v", o, err)
	}
	// A normal ListDir works, compressed or not.
	fs := e.Filesystem(connect.WithSendGzip())
	if _, err := fs.ListDir(ctx, connect.NewRequest(&filesystem.ListDirRequest{Path: "/"})); err != nil {
		t.Fatal(err)
	}
}

// hrGzipZeros returns gzip data inflating to n zero bytes (a multiple of
// 1 MiB): one member of 1 MiB of zeros repeated, which gzip readers take
// as one stream, so the bomb is built in no time.
func hrGzipZeros(t testing.TB, n int) []byte {
	t.Helper()
	member := hrGzip(t, make([]byte, 1<<20))
	return bytes.Repeat(member, n>>20)
}

// The large limit still holds for real use: a 32 MiB SendInput (and a
// gzip-compressed one, and a StreamInput of 32 MiB messages) reaches the
// process intact.
func TestHardening_LargeStdinStillWorks(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for _, tc := range []struct {
		name string
		opts []connect.ClientOption
	}{
		{"proto", nil},
		{"proto-gzip", []connect.ClientOption{connect.WithSendGzip()}},
		{"json", []connect.ClientOption{connect.WithProtoJSON()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.Process(tc.opts...)
			ctx := procCtx(t)
			r := procStart(t, ctx, c, connect.NewRequest(&pb.StartRequest{Process: procSh("wc -c"), Stdin: ptr(true)}))
			data := bytes.Repeat([]byte("envd"), 8<<20) // 32 MiB
			sel := procPID(r.ev.pid)
			if _, err := c.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: data}}})); err != nil {
				t.Fatal(err)
			}
			st := c.StreamInput(ctx)
			if err := st.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: sel}}}); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if err := st.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: data}}}}}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := st.CloseAndReceive(); err != nil {
				t.Fatal(err)
			}
			if _, err := c.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel})); err != nil {
				t.Fatal(err)
			}
			ev := r.drain()
			if got := strings.TrimSpace(ev.stdout()); got != fmt.Sprint(3*len(data)) {
				t.Fatalf("process read %q bytes, want %d (%v)", got, 3*len(data), ev.err)
			}
		})
	}
}
