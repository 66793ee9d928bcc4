package jsoncodec

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/envd/envd/gen/process"
	"github.com/envd/envd/gen/process/processconnect"
)

// fakeProcess answers Start with a start, a data and an end event, and
// List with one process (a message the codec leaves to protojson).
type fakeProcess struct {
	processconnect.UnimplementedProcessHandler
}

var (
	fakeEvents = []*process.StartResponse{
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{Pid: 42}}}),
		startResp(data(&process.ProcessEvent_DataEvent_Stdout{Stdout: []byte("out\n")})),
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_End{End: &process.ProcessEvent_EndEvent{ExitCode: 3, Exited: true, Status: "exit status 3", Error: ptr("exit status 3")}}}),
	}
	fakeList = &process.ListResponse{Processes: []*process.ProcessInfo{{Pid: 42, Tag: ptr("t"), Config: &process.ProcessConfig{Cmd: "sh", Args: []string{"-c", "x"}}}}}
)

func (fakeProcess) Start(_ context.Context, _ *connect.Request[process.StartRequest], s *connect.ServerStream[process.StartResponse]) error {
	for _, ev := range fakeEvents {
		if err := s.Send(ev); err != nil {
			return err
		}
	}
	return nil
}

func (fakeProcess) List(context.Context, *connect.Request[process.ListRequest]) (*connect.Response[process.ListResponse], error) {
	return connect.NewResponse(fakeList), nil
}

func serve(t *testing.T, opts ...connect.HandlerOption) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(processconnect.NewProcessHandler(fakeProcess{}, opts...))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

func post(t *testing.T, url, contentType string, body []byte) []byte {
	t.Helper()
	resp, err := http.Post(url, contentType, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != contentType {
		t.Fatalf("%s: status %d, %s, %v: %s", contentType, resp.StatusCode, resp.Header.Get("Content-Type"), err, b)
	}
	return b
}

// payloads splits a Connect streaming body into its message payloads
// (without the end-of-stream envelope).
func payloads(t *testing.T, body []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(body) >= 5 {
		n := int(binary.BigEndian.Uint32(body[1:5]))
		if body[0]&2 == 0 {
			out = append(out, body[5:5+n])
		}
		body = body[5+n:]
	}
	return out
}

func envelope(b []byte) []byte {
	return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(b))), b...)
}

func streamPayloads(t *testing.T, url string) [][]byte {
	t.Helper()
	return payloads(t, post(t, url+"/process.Process/Start", "application/connect+json", envelope([]byte(`{"process":{"cmd":"x"}}`))))
}

// With HandlerOption, a handler's streams, unary calls and both JSON
// content types carry exactly what connect-go's own JSON codec sends.
func TestHandlerOption_ServesProtojsonBytes(t *testing.T) {
	url := serve(t, HandlerOption())
	got := streamPayloads(t, url)
	if len(got) != len(fakeEvents) {
		t.Fatalf("%d messages", len(got))
	}
	for i, ev := range fakeEvents {
		if want, _ := reference(ev); !bytes.Equal(got[i], want) {
			t.Errorf("event %d: %s, want %s", i, got[i], want)
		}
	}
	want, _ := reference(fakeList)
	for _, ct := range []string{"application/json", "application/json; charset=utf-8"} {
		if got := post(t, url+"/process.Process/List", ct, []byte(`{}`)); !bytes.Equal(got, want) {
			t.Errorf("%s: %s, want %s", ct, got, want)
		}
	}
}

// The codec registered under "json" is the one connect-go uses for
// application/connect+json: one writing the other comma spacing than
// protojson shows up on the wire.
func TestHandlerOption_CodecIsUsedForJSONStreams(t *testing.T) {
	flipped := &Codec{name: Name, commaSpace: !New(Name).commaSpace}
	got := streamPayloads(t, serve(t, connect.WithCodec(flipped)))
	end := fakeEvents[2]
	want, _ := flipped.Marshal(end)
	ref, _ := reference(end)
	if len(got) != 3 || !bytes.Equal(got[2], want) || bytes.Equal(want, ref) {
		t.Fatalf("end event %q; the codec writes %q, protojson %q", got, want, ref)
	}
	var decoded process.StartResponse
	if err := New(Name).Unmarshal(got[2], &decoded); err != nil || !proto.Equal(&decoded, end) {
		t.Fatalf("round trip: %v %v", &decoded, err)
	}
}
