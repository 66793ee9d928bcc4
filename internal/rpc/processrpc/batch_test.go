package processrpc

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/envd/envd/gen/process"
)

// recorder is a response writer that records every write and, at each
// flush, how many bytes had been written by then.
type recorder struct {
	mu      sync.Mutex
	hdr     http.Header
	body    bytes.Buffer
	writes  int
	flushes []int
}

func (r *recorder) Header() http.Header {
	if r.hdr == nil {
		r.hdr = http.Header{}
	}
	return r.hdr
}

func (r *recorder) WriteHeader(int) {}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes++
	return r.body.Write(p)
}

func (r *recorder) Flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushes = append(r.flushes, r.body.Len())
}

// connectSend writes an event as connect-go's streaming handler does:
// the envelope prefix, the message, a flush.
func connectSend(w http.ResponseWriter) func(*pb.ProcessEvent) error {
	return func(ev *pb.ProcessEvent) error {
		b, err := proto.Marshal(ev)
		if err != nil {
			return err
		}
		if _, err := w.Write(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(b)))); err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		w.(http.Flusher).Flush()
		return nil
	}
}

// events parses what was written back into events.
func events(t *testing.T, b []byte) []*pb.ProcessEvent {
	t.Helper()
	var out []*pb.ProcessEvent
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("torn envelope: %d bytes left", len(b))
		}
		n := int(binary.BigEndian.Uint32(b[1:5]))
		ev := &pb.ProcessEvent{}
		if err := proto.Unmarshal(b[5:5+n], ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
		b = b[5+n:]
	}
	return out
}

func batchedContext(ctx context.Context, s *Service, w http.ResponseWriter) (context.Context, *batchWriter) {
	bw := &batchWriter{ResponseWriter: w, pool: s.batches}
	return context.WithValue(ctx, batchKey{}, bw), bw
}

// Output that is ready together goes out in runs: the 32 events of 1 MiB
// waiting in the queue are written with a handful of writes and flushes,
// each event still one read of at most 32 KiB, in order, whole.
func TestPump_ReadyEventsGoOutInRuns(t *testing.T) {
	s, m, _, _ := testService(t, time.Hour)
	p, sub := startSub(t, m, "head -c 1048576 /dev/zero")
	defer sub.Close()
	<-p.Done() // everything is queued
	rec := &recorder{}
	ctx, bw := batchedContext(t.Context(), s, rec)
	if err := s.pump(ctx, nil, nil, false, sub, startEvent(p.PID()), connectSend(bw)); err != nil {
		t.Fatal(err)
	}
	bw.held = false
	if err := bw.drain(); err != nil { // what batching does after the handler
		t.Fatal(err)
	}
	evs := events(t, rec.body.Bytes())
	data := 0
	for i, ev := range evs[1 : len(evs)-1] {
		d := ev.GetData().GetStdout()
		if len(d) == 0 || len(d) > 32<<10 {
			t.Fatalf("event %d: %d bytes", i+1, len(d))
		}
		data += len(d)
	}
	if evs[0].GetStart() == nil || evs[len(evs)-1].GetEnd() == nil || data != 1<<20 {
		t.Fatalf("%d events, %d data bytes", len(evs), data)
	}
	// The start (alone, flushed at once), four runs of at most 256 KiB of
	// data, the end: about 6 writes instead of 2 per event.
	if rec.writes > 10 || len(rec.flushes) > 8 {
		t.Fatalf("%d events took %d writes and %d flushes", len(evs), rec.writes, len(rec.flushes))
	}
}

// A lone event is never held for company: an interactive program's output
// is written and flushed before the next output even exists.
func TestPump_LoneEventIsFlushedAtOnce(t *testing.T) {
	s, m, _, _ := testService(t, time.Hour)
	p, sub := startSub(t, m, "printf first; sleep 0.3; printf second")
	defer sub.Close()
	rec := &recorder{}
	ctx, bw := batchedContext(t.Context(), s, rec)
	flushedFirst := make(chan bool, 1)
	send := connectSend(bw)
	err := s.pump(ctx, nil, nil, false, sub, startEvent(p.PID()), func(ev *pb.ProcessEvent) error {
		if string(ev.GetData().GetStdout()) == "second" {
			rec.mu.Lock()
			// "first" was written and flushed before "second" was sent.
			flushedFirst <- len(rec.flushes) > 0 && strings.Contains(rec.body.String()[:rec.flushes[len(rec.flushes)-1]], "first")
			rec.mu.Unlock()
		}
		return send(ev)
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case ok := <-flushedFirst:
		if !ok {
			t.Fatal("the first output was still held when the second came")
		}
	default:
		t.Fatal("no second output")
	}
}

// The end event that a stream holds is written after the handler returned,
// together with what connect-go writes last, and flushed by net/http.
func TestBatching_HeldEndIsWrittenAfterTheHandler(t *testing.T) {
	s, _, _, _ := testService(t, time.Hour)
	h := s.batching(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bw := batchFrom(r.Context())
		if bw == nil {
			t.Error("no batch writer in the stream's context")
			return
		}
		_, _ = w.Write([]byte("start"))
		w.(http.Flusher).Flush()
		bw.hold()
		_, _ = w.Write([]byte("end"))
		w.(http.Flusher).Flush() // skipped: held
		_, _ = w.Write([]byte("trailer"))
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/process.Process/Start", nil))
	if rec.Body.String() != "startendtrailer" {
		t.Fatalf("body %q", rec.Body.String())
	}
	// Other procedures are not wrapped.
	h = s.batching(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if batchFrom(r.Context()) != nil {
			t.Error("a unary procedure got a batch writer")
		}
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/process.Process/List", nil))
}
