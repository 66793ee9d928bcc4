package rpc

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/gen/process/processconnect"
)

// recordingProcess is a process service that records the stdin it gets
// and the budget in use when each message reaches it.
type recordingProcess struct {
	processconnect.UnimplementedProcessHandler
	budget *Budget

	mu      sync.Mutex
	stdin   [][]byte
	inUse   []int64
	started chan struct{}
	release chan struct{}
}

func (s *recordingProcess) record(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stdin = append(s.stdin, b)
	s.inUse = append(s.inUse, s.budget.InUse())
}

func (s *recordingProcess) SendInput(_ context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	s.record(req.Msg.GetInput().GetStdin())
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

func (s *recordingProcess) StreamInput(_ context.Context, st *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	for st.Receive() {
		s.record(st.Msg().GetData().GetInput().GetStdin())
	}
	if err := st.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

func (s *recordingProcess) Start(ctx context.Context, req *connect.Request[pb.StartRequest], st *connect.ServerStream[pb.StartResponse]) error {
	if err := st.Send(&pb.StartResponse{Event: &pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: 1}}}}); err != nil {
		return err
	}
	s.record(nil)
	close(s.started)
	select {
	case <-s.release:
	case <-ctx.Done():
	}
	return nil
}

// guardServer serves a recordingProcess behind a guard with the given
// limits over HTTP/1.1 and h2c.
func guardServer(t *testing.T, budget BudgetLimits, large, small int64) (*recordingProcess, *Guard, string) {
	t.Helper()
	g := NewGuard(GuardOptions{
		Budget:       NewBudget(budget),
		Limits:       map[string]int64{processconnect.ProcessSendInputProcedure: large, processconnect.ProcessStreamInputProcedure: large, processconnect.ProcessStartProcedure: large},
		DefaultLimit: small,
	})
	svc := &recordingProcess{budget: g.Budget(), started: make(chan struct{}), release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle(g.Wrap(processconnect.NewProcessHandler(svc, HandlerOptions(slog.New(slog.DiscardHandler), g)...)))
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: protocols}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return svc, g, "http://" + ln.Addr().String()
}

func h2cClient() *http.Client {
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: protocols}}
}

var guardLimits = BudgetLimits{Total: 64 << 20, Reserve: 8 << 20, SmallBytes: 64 << 10}

// waitIdle waits until every charge is released (the guard releases a
// unary request's charge once the response is written, which a client may
// see first).
func waitIdle(t *testing.T, b *Budget) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for b.InUse() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("budget still holds %d bytes", b.InUse())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func stdinReq(b []byte) *pb.SendInputRequest {
	return &pb.SendInputRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: 1}}, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: b}}}
}

// Every protocol and codec, compressed or not, arrives intact through the
// guard, and every charge is released afterwards.
func TestGuard_MessagesArriveIntact(t *testing.T) {
	svc, g, url := guardServer(t, guardLimits, 16<<20, 1<<20)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB, compressible
	for _, tc := range []struct {
		name   string
		client *http.Client
		opts   []connect.ClientOption
	}{
		{"connect-proto", http.DefaultClient, nil},
		{"connect-proto-gzip", http.DefaultClient, []connect.ClientOption{connect.WithSendGzip()}},
		{"connect-json-gzip", http.DefaultClient, []connect.ClientOption{connect.WithSendGzip(), connect.WithProtoJSON()}},
		{"grpc-gzip", h2cClient(), []connect.ClientOption{connect.WithGRPC(), connect.WithSendGzip()}},
		{"grpcweb-gzip", http.DefaultClient, []connect.ClientOption{connect.WithGRPCWeb(), connect.WithSendGzip()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := processconnect.NewProcessClient(tc.client, url, tc.opts...)
			svc.mu.Lock()
			svc.stdin = nil
			svc.mu.Unlock()
			if _, err := c.SendInput(context.Background(), connect.NewRequest(stdinReq(data))); err != nil {
				t.Fatal(err)
			}
			st := c.StreamInput(context.Background())
			for i := range 3 {
				msg := &pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: data[:1<<20*(i+1)]}}}}}
				if err := st.Send(msg); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := st.CloseAndReceive(); err != nil {
				t.Fatal(err)
			}
			svc.mu.Lock()
			got := svc.stdin
			inUse := svc.inUse
			svc.mu.Unlock()
			if len(got) != 4 || !bytes.Equal(got[0], data) {
				t.Fatalf("got %d messages", len(got))
			}
			for i := range 3 {
				if !bytes.Equal(got[i+1], data[:1<<20*(i+1)]) {
					t.Fatalf("stream message %d corrupted (%d bytes)", i, len(got[i+1]))
				}
			}
			// A stream message holds only its own charge while handled.
			for i, n := range inUse[len(inUse)-3:] {
				if ceil := int64(2<<20*(i+1)) + 64<<10; n > ceil {
					t.Fatalf("message %d handled with %d bytes charged, more than itself", i, n)
				}
			}
			waitIdle(t, g.Budget())
		})
	}
}

// A message over its procedure's limit is refused with resource_exhausted
// before it is inflated or read into memory, compressed or not.
func TestGuard_LimitPerProcedure(t *testing.T) {
	_, g, url := guardServer(t, guardLimits, 4<<20, 1<<10)
	big := make([]byte, 5<<20)
	for _, tc := range []struct {
		name string
		opts []connect.ClientOption
	}{
		{"identity", nil},
		{"gzip", []connect.ClientOption{connect.WithSendGzip()}},
		{"stream-gzip", []connect.ClientOption{connect.WithSendGzip()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := processconnect.NewProcessClient(http.DefaultClient, url, tc.opts...)
			var err error
			if strings.HasPrefix(tc.name, "stream") {
				st := c.StreamInput(context.Background())
				_ = st.Send(&pb.StreamInputRequest{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: big}}}}})
				_, err = st.CloseAndReceive()
			} else {
				_, err = c.SendInput(context.Background(), connect.NewRequest(stdinReq(big)))
			}
			if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "limit of 4194304 bytes for /process.Process/") {
				t.Fatalf("over the limit: %v", err)
			}
			// A small procedure has the small limit.
			_, err = c.SendSignal(context.Background(), connect.NewRequest(&pb.SendSignalRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: strings.Repeat("t", 2<<10)}}}))
			if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "limit of 1024 bytes for /process.Process/SendSignal") {
				t.Fatalf("small procedure: %v", err)
			}
			waitIdle(t, g.Budget())
		})
	}
}

// A gzip bomb costs no memory: it is refused while it is being counted.
func TestGuard_BombRefusedWhileCounting(t *testing.T) {
	_, g, url := guardServer(t, guardLimits, 4<<20, 1<<10)
	// SendInputRequest{input: {stdin: 256 MiB of zeros}}, gzipped without
	// building it in memory.
	const n = 256 << 20
	stdin := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.BytesType), n)
	head := protowire.AppendTag(nil, 2, protowire.BytesType)
	head = protowire.AppendVarint(head, uint64(len(stdin)+n))
	head = append(head, stdin...)
	var zbuf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&zbuf, gzip.BestSpeed)
	zw.Write(head)
	zeros := make([]byte, 1<<20)
	for range n / len(zeros) {
		zw.Write(zeros)
	}
	zw.Close()
	for _, stream := range []bool{false, true} {
		var body []byte
		hdr := http.Header{"Connect-Protocol-Version": {"1"}}
		path := processconnect.ProcessSendInputProcedure
		if stream {
			body = make([]byte, 5, 5+zbuf.Len())
			body[0] = 1
			binary.BigEndian.PutUint32(body[1:], uint32(zbuf.Len()))
			body = append(body, zbuf.Bytes()...)
			hdr.Set("Content-Type", "application/connect+proto")
			hdr.Set("Connect-Content-Encoding", "gzip")
			path = processconnect.ProcessStreamInputProcedure
		} else {
			body = zbuf.Bytes()
			hdr.Set("Content-Type", "application/proto")
			hdr.Set("Content-Encoding", "gzip")
		}
		req, _ := http.NewRequest(http.MethodPost, url+path, bytes.NewReader(body))
		req.Header = hdr
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !bytes.Contains(out, []byte("resource_exhausted")) {
			t.Fatalf("stream=%v: status %d %.300q", stream, resp.StatusCode, out)
		}
		// Inflating all of it would take seconds.
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("stream=%v: refusal took %s", stream, d)
		}
		waitIdle(t, g.Budget())
	}
}

// Messages that together exceed the budget wait for room and are refused
// with resource_exhausted when none comes in time, while small messages
// are still served from the reserve.
func TestGuard_BudgetSharedAcrossRequests(t *testing.T) {
	svc, g, url := guardServer(t, BudgetLimits{Total: 6 << 20, Reserve: 2 << 20, SmallBytes: 64 << 10, Wait: time.Second}, 4<<20, 1<<20)
	c := processconnect.NewProcessClient(http.DefaultClient, url)
	// A Start whose handler holds the stream open does not hold budget.
	st, err := c.Start(context.Background(), connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: strings.Repeat("x", 3<<20)}}))
	if err != nil {
		t.Fatal(err)
	}
	defer close(svc.release)
	if !st.Receive() {
		t.Fatal(st.Err())
	}
	<-svc.started
	waitIdle(t, g.Budget())

	// A stream message declared at 3.5 MiB holds room for all of it while
	// its sender dawdles: 3.5 of the 4 MiB large messages may use.
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest(http.MethodPost, url+processconnect.ProcessStreamInputProcedure, pr)
	req.Header.Set("Content-Type", "application/connect+proto")
	go func() {
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	prefix := []byte{0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(prefix[1:], 3584<<10)
	if _, err := pw.Write(append(prefix, make([]byte, 1<<10)...)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for g.Budget().InUse() < 3584<<10 {
		if time.Now().After(deadline) {
			t.Fatalf("held %d", g.Budget().InUse())
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	_, err = c.SendInput(context.Background(), connect.NewRequest(stdinReq(make([]byte, 1<<20))))
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "too many large request messages in flight") {
		t.Fatalf("over the budget: %v", err)
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("refused after %s without waiting for room", d)
	}
	// Small messages are still served from the reserve.
	for range 10 {
		if _, err := c.SendInput(context.Background(), connect.NewRequest(stdinReq([]byte("ok")))); err != nil {
			t.Fatal(err)
		}
	}
	// A message waiting for room gets it when the holder goes away.
	waited := make(chan error, 1)
	go func() {
		_, err := c.SendInput(context.Background(), connect.NewRequest(stdinReq(make([]byte, 1<<20))))
		waited <- err
	}()
	time.Sleep(200 * time.Millisecond)
	pw.CloseWithError(errors.New("gone"))
	if err := <-waited; err != nil {
		t.Fatalf("waiting message: %v", err)
	}
	waitIdle(t, g.Budget())
}

// A unary body of unknown length reserves its whole limit; one whose
// Content-Length is over the limit is refused before it is read.
func TestGuard_UnaryEstimates(t *testing.T) {
	_, g, url := guardServer(t, guardLimits, 4<<20, 1<<20)
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest(http.MethodPost, url+processconnect.ProcessSendInputProcedure, pr)
	req.Header.Set("Content-Type", "application/proto")
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	pw.Write([]byte{0x12})
	deadline := time.Now().Add(5 * time.Second)
	for g.Budget().InUse() != 4<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("a chunked body holds %d, want its limit", g.Budget().InUse())
		}
		time.Sleep(5 * time.Millisecond)
	}
	pw.CloseWithError(errors.New("gone"))
	<-done
	waitIdle(t, g.Budget())

	body := make([]byte, 5<<20)
	req, _ = http.NewRequest(http.MethodPost, url+processconnect.ProcessSendInputProcedure, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/proto")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || !bytes.Contains(out, []byte("message size 5242880 is larger than the limit of 4194304 bytes")) {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	waitIdle(t, g.Budget())
}

func TestBoundError(t *testing.T) {
	long := connect.NewError(connect.CodeInvalidArgument, errors.New(strings.Repeat("é", 10<<10)))
	long.Meta().Set("X-Test", "1")
	got := boundError(long)
	var ce *connect.Error
	if !errors.As(got, &ce) || ce.Code() != connect.CodeInvalidArgument || len(ce.Message()) > maxErrorMessage+64 || ce.Meta().Get("X-Test") != "1" {
		t.Fatalf("%v", got)
	}
	if !strings.HasSuffix(ce.Message(), "bytes cut)") {
		t.Fatalf("%q", ce.Message()[len(ce.Message())-40:])
	}
	short := connect.NewError(connect.CodeNotFound, errors.New("nope"))
	if boundError(short) != short || boundError(nil) != nil {
		t.Fatal("short errors must pass unchanged")
	}
}
