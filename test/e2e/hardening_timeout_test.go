package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// RPC deadline headers are non-negative integers of at most 10 digits
// (Connect-Timeout-Ms) or 8 digits and a unit (grpc-timeout); anything else
// is invalid_argument and starts nothing (rpc.md §2.5; issue 11 item 16).
// strconv, which connect-go uses, also takes "+5" and "-0".

// noDeadlineCtx ends after 30 s without carrying a deadline, so that the
// Connect client sends only the Connect-Timeout-Ms the test sets.
func noDeadlineCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	timer := time.AfterFunc(30*time.Second, cancel)
	t.Cleanup(func() { timer.Stop(); cancel() })
	return ctx
}

func TestHardening_TimeoutHeadersStrict(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	dir := t.TempDir()
	for _, v := range []string{"+5", "-0", "+0", "1e3", "0x10", "12345678901", "٣"} {
		marker := filepath.Join(dir, "started-"+strings.NewReplacer("+", "p", "-", "m").Replace(v))
		req := procReq(&pb.StartRequest{Process: procSh("touch " + marker + "; sleep 1")})
		req.Header().Set("Connect-Timeout-Ms", v)
		s, err := e.Process().Start(noDeadlineCtx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		started := false
		for s.Receive() {
			started = started || s.Msg().GetEvent().GetStart() != nil
		}
		if started || connect.CodeOf(s.Err()) != connect.CodeInvalidArgument || !strings.Contains(s.Err().Error(), "Connect-Timeout-Ms") {
			t.Fatalf("Connect-Timeout-Ms %q: started %v, error %v", v, started, s.Err())
		}
		time.Sleep(50 * time.Millisecond)
		if _, err := os.Stat(marker); err == nil {
			t.Fatalf("Connect-Timeout-Ms %q: the process ran", v)
		}
	}
	// Valid values still work: zero and leading zeros (no deadline), ten
	// digits, and a real deadline with leading zeros (300 ms).
	for _, v := range []string{"0", "000", "9999999999", "0300"} {
		req := procReq(&pb.StartRequest{Process: procSh("sleep 0.6")})
		req.Header().Set("Connect-Timeout-Ms", v)
		s, err := e.Process().Start(noDeadlineCtx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		ev := newProcReader[pb.StartResponse, *pb.StartResponse](s).drain()
		took := time.Since(start)
		if v == "0300" {
			if connect.CodeOf(ev.err) != connect.CodeDeadlineExceeded || took > 550*time.Millisecond {
				t.Fatalf("Connect-Timeout-Ms %q: %v after %v, want deadline_exceeded after 300 ms", v, ev.err, took)
			}
			continue
		}
		if ev.err != nil || ev.end == nil || ev.end.GetStatus() != "exit status 0" {
			t.Fatalf("Connect-Timeout-Ms %q: end %v (%v)", v, ev.end, ev.err)
		}
	}
}

// grpcStart sends a gRPC Start over h2c with the given grpc-timeout and
// returns the grpc-status and whether a start event came.
func grpcStart(t *testing.T, e *envdtest.Envd, timeout, script string) (status string, started bool) {
	t.Helper()
	msg, err := proto.Marshal(&pb.StartRequest{Process: procSh(script)})
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	body.WriteByte(0)
	binary.Write(&body, binary.BigEndian, uint32(len(msg)))
	body.Write(msg)
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: &http.Transport{Protocols: protocols}, Timeout: 30 * time.Second}
	req, _ := http.NewRequest("POST", e.URL+"/process.Process/Start", &body)
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("Grpc-Timeout", timeout)
	resp, err := h2.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	for len(out) >= 5 {
		n := binary.BigEndian.Uint32(out[1:5])
		if int(n) > len(out)-5 {
			break
		}
		var ev pb.StartResponse
		if proto.Unmarshal(out[5:5+n], &ev) == nil && ev.GetEvent().GetStart() != nil {
			started = true
		}
		out = out[5+n:]
	}
	status = resp.Trailer.Get("Grpc-Status")
	if status == "" {
		status = resp.Header.Get("Grpc-Status")
	}
	return status, started
}

func TestHardening_GRPCTimeoutStrict(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for _, v := range []string{"+5S", "-0S", "5s", "123456789S", "S", "5"} {
		if status, started := grpcStart(t, e, v, "sleep 0.2"); status != "3" || started {
			t.Fatalf("grpc-timeout %q: grpc-status %q, started %v; want 3 (invalid argument), nothing started", v, status, started)
		}
	}
	for _, v := range []string{"5S", "0S", "00000000S", "99999999m"} {
		if status, started := grpcStart(t, e, v, "sleep 0.2"); status != "0" || !started {
			t.Fatalf("grpc-timeout %q: grpc-status %q, started %v", v, status, started)
		}
	}
}
