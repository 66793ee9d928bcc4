package jsoncodec

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/gen/process"
)

// reference is what connect-go's own JSON codec writes.
func reference(m proto.Message) ([]byte, error) { return protojson.MarshalOptions{}.Marshal(m) }

// same checks that the codec writes exactly protojson's bytes for m, or
// fails exactly as protojson fails, also when appending to a buffer.
func same(t *testing.T, c *Codec, m proto.Message) {
	t.Helper()
	want, wantErr := reference(m)
	got, err := c.Marshal(m)
	if (err != nil) != (wantErr != nil) || (err != nil && err.Error() != wantErr.Error()) {
		t.Fatalf("%T %v:\nerror %v\nwant  %v", m, m, err, wantErr)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%T %v:\ngot  %s\nwant %s", m, m, got, want)
	}
	prefix := []byte("prefix")
	got, err = c.MarshalAppend(prefix[:len(prefix):len(prefix)], m)
	if wantErr == nil && (err != nil || !bytes.Equal(got, append(prefix, want...))) {
		t.Fatalf("MarshalAppend: %q %v", got, err)
	}
}

func ptr[T any](v T) *T { return &v }

func startResp(e *process.ProcessEvent) *process.StartResponse {
	return &process.StartResponse{Event: e}
}

// data is a data event with out (one of the output oneof's members, or
// nil) as its output.
func data(out any) *process.ProcessEvent {
	d := &process.ProcessEvent_DataEvent{}
	switch o := out.(type) {
	case *process.ProcessEvent_DataEvent_Stdout:
		d.Output = o
	case *process.ProcessEvent_DataEvent_Stderr:
		d.Output = o
	case *process.ProcessEvent_DataEvent_Pty:
		d.Output = o
	}
	return &process.ProcessEvent{Event: &process.ProcessEvent_Data{Data: d}}
}

func TestMarshal_HotMessagesAsProtojson(t *testing.T) {
	c := New(Name)
	entry := &filesystem.EntryInfo{
		Name: "a \"b\"\n\x01\x1f\x7f é ✓ \u2028", Type: filesystem.FileType_FILE_TYPE_FILE, Path: "/x/<a>&", Size: 1 << 40,
		Mode: 0o755, Permissions: "-rwxr-xr-x", Owner: "root", Group: "root",
		ModifiedTime:  &timestamppb.Timestamp{Seconds: 1700000000, Nanos: 120000000},
		SymlinkTarget: ptr(""), Metadata: map[string]string{"z": "1", "a": "\t", "m": ""},
	}
	msgs := []proto.Message{
		startResp(nil),
		startResp(&process.ProcessEvent{}),
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{Pid: 1234}}}),
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{}}}),
		startResp(data(&process.ProcessEvent_DataEvent_Stdout{Stdout: []byte("hello\n")})),
		startResp(data(&process.ProcessEvent_DataEvent_Stdout{})),
		startResp(data(&process.ProcessEvent_DataEvent_Stderr{Stderr: []byte{0xff, 0, 1}})),
		startResp(data(&process.ProcessEvent_DataEvent_Pty{Pty: bytes.Repeat([]byte{0xfb}, 32<<10)})),
		startResp(data(nil)),
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_Keepalive{Keepalive: &process.ProcessEvent_KeepAlive{}}}),
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_End{End: &process.ProcessEvent_EndEvent{ExitCode: 2, Exited: true, Status: "exit status 2", Error: ptr("exit status 2")}}}),
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_End{End: &process.ProcessEvent_EndEvent{Exited: true, Status: "exit status 0"}}}),
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_End{End: &process.ProcessEvent_EndEvent{ExitCode: -1, Status: "signal: killed", Error: ptr("")}}}),
		&process.ConnectResponse{Event: &process.ProcessEvent{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{Pid: 4294967295}}}},
		&process.ConnectResponse{},
		&filesystem.WatchDirResponse{},
		&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Start{Start: &filesystem.WatchDirResponse_StartEvent{}}},
		&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Keepalive{Keepalive: &filesystem.WatchDirResponse_KeepAlive{}}},
		&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: &filesystem.FilesystemEvent{Name: "f", Type: filesystem.EventType_EVENT_TYPE_WRITE}}},
		&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: &filesystem.FilesystemEvent{Name: "f", Type: 42, Entry: entry}}},
		&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: &filesystem.FilesystemEvent{Type: -3, Entry: &filesystem.EntryInfo{Type: 9, Size: -5}}}},
		&filesystem.GetWatcherEventsResponse{},
		&filesystem.GetWatcherEventsResponse{Events: []*filesystem.FilesystemEvent{{Name: "a", Type: 1}, {}, {Name: "c", Entry: entry}}},
		// Not hot: protojson itself.
		&process.ListResponse{Processes: []*process.ProcessInfo{{Pid: 1, Tag: ptr("t"), Config: &process.ProcessConfig{Cmd: "x", Envs: map[string]string{"A": "1"}}}}},
		&filesystem.ListDirResponse{Entries: []*filesystem.EntryInfo{entry}},
	}
	for _, nanos := range []int32{0, 1, 999, 1000, 1000000, 120000000, 123456000, 123456789, 999999999, 100000000} {
		msgs = append(msgs, &filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: &filesystem.FilesystemEvent{
			Entry: &filesystem.EntryInfo{ModifiedTime: &timestamppb.Timestamp{Seconds: 1, Nanos: nanos}}}}})
	}
	for _, m := range msgs {
		same(t, c, m)
	}
	// The spec's examples (rpc.md §2.2), whitespace aside.
	for msg, want := range map[proto.Message]string{
		msgs[2]:  `{"event":{"start":{"pid":1234}}}`,
		msgs[4]:  `{"event":{"data":{"stdout":"aGVsbG8K"}}}`,
		msgs[9]:  `{"event":{"keepalive":{}}}`,
		msgs[10]: `{"event":{"end":{"exitCode":2,"exited":true,"status":"exit status 2","error":"exit status 2"}}}`,
		msgs[11]: `{"event":{"end":{"exited":true,"status":"exit status 0"}}}`,
	} {
		got, _ := c.Marshal(msg)
		var compact bytes.Buffer
		if err := json.Compact(&compact, got); err != nil || compact.String() != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
}

// What protojson refuses, the codec refuses with protojson's error.
func TestMarshal_RefusesWhatProtojsonRefuses(t *testing.T) {
	c := New(Name)
	for _, m := range []proto.Message{
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_End{End: &process.ProcessEvent_EndEvent{Status: "bad \xff utf-8"}}}),
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_End{End: &process.ProcessEvent_EndEvent{Error: ptr("\xc3")}}}),
		&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: &filesystem.FilesystemEvent{Name: "\xed\xa0\x80"}}}, // a surrogate
		&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: &filesystem.FilesystemEvent{Entry: &filesystem.EntryInfo{Metadata: map[string]string{"k\xff": "v"}}}}},
		&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: &filesystem.FilesystemEvent{Entry: &filesystem.EntryInfo{Metadata: map[string]string{"k": "v\xff"}}}}},
		&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: &filesystem.FilesystemEvent{Entry: &filesystem.EntryInfo{ModifiedTime: &timestamppb.Timestamp{Seconds: 253402300800}}}}},
		&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: &filesystem.FilesystemEvent{Entry: &filesystem.EntryInfo{ModifiedTime: &timestamppb.Timestamp{Nanos: -1}}}}},
		&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: &filesystem.FilesystemEvent{Entry: &filesystem.EntryInfo{ModifiedTime: &timestamppb.Timestamp{Nanos: 1e9}}}}},
		&filesystem.GetWatcherEventsResponse{Events: []*filesystem.FilesystemEvent{{Name: "ok"}, {Name: "\x80"}}},
	} {
		if _, err := reference(m); err == nil {
			t.Fatalf("protojson accepts %v", m)
		}
		same(t, c, m)
	}
	if _, err := c.Marshal("not a message"); err == nil || err.Error() != "string doesn't implement proto.Message" {
		t.Fatalf("non-message: %v", err)
	}
}

// Odd shapes the hand-written path leaves to protojson: nil members of
// oneofs and lists, typed nil messages, unknown fields.
func TestMarshal_OddShapesAsProtojson(t *testing.T) {
	c := New(Name)
	withUnknown := startResp(&process.ProcessEvent{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{Pid: 7}}})
	withUnknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 5))
	for _, m := range []proto.Message{
		(*process.StartResponse)(nil),
		(*filesystem.WatchDirResponse)(nil),
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_Start{}}),
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_Data{}}),
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_End{}}),
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_Keepalive{}}),
		&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{}},
		&filesystem.GetWatcherEventsResponse{Events: []*filesystem.FilesystemEvent{nil}},
		withUnknown,
	} {
		same(t, c, m)
	}
}

// Unmarshal is connect-go's: unknown fields discarded, both field-name
// spellings, an empty payload and malformed JSON refused with its errors.
func TestUnmarshal_AsConnectGo(t *testing.T) {
	c := New(Name)
	var req process.StartRequest
	if err := c.Unmarshal([]byte(`{"process":{"cmd":"ls","args":["-l"]},"unknownField":1,"stdin":false,"tag":"t"}`), &req); err != nil {
		t.Fatal(err)
	}
	if req.GetProcess().GetCmd() != "ls" || req.Stdin == nil || *req.Stdin || req.GetTag() != "t" {
		t.Fatalf("decoded %v", &req)
	}
	var w filesystem.WatchDirRequest
	if err := c.Unmarshal([]byte(`{"path":"/","include_entry":true,"allowNetworkMounts":true}`), &w); err != nil || !w.IncludeEntry || !w.AllowNetworkMounts {
		t.Fatalf("names: %v %v", &w, err)
	}
	if err := c.Unmarshal(nil, &req); err == nil || err.Error() != "zero-length payload is not a valid JSON object" {
		t.Fatalf("empty: %v", err)
	}
	err := c.Unmarshal([]byte(`{"process":`), &req)
	wantErr := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(`{"process":`), &process.StartRequest{})
	if err == nil || err.Error() != "unmarshal into *process.StartRequest: "+wantErr.Error() {
		t.Fatalf("malformed: %v", err)
	}
	if err := c.Unmarshal([]byte(`{}`), 3); err == nil || !strings.Contains(err.Error(), "doesn't implement proto.Message") {
		t.Fatalf("non-message: %v", err)
	}
}

// FuzzMarshal builds hot messages of every shape from the input, strings
// included (so also invalid UTF-8), and requires protojson's bytes or
// protojson's error. Seeds: f.Add below and testdata/fuzz/FuzzMarshal.
func FuzzMarshal(f *testing.F) {
	for _, seed := range [][]byte{
		{}, {0}, {1, 2, 3}, {0, 2, 0, 5, 'h', 'e', 'l', 'l', 'o'},
		{0, 3, 1, 0xff, 0xff, 0xff, 0xff, 1, 4, 0xc3, 0x28, 'x', 'y'},
		{2, 2, 1, 3, 0xe2, 0x82, 0xac, 5, 1, 2, 3, 4, 5, 6, 7, 8, 9},
		{3, 3, 1, 2, 'a', 'b', 2, 1, 0xed, 0xa0, 0x80, 9, 9, 9},
		bytes.Repeat([]byte{0x7f, 0x1f, '"', '\\', 0xf0, 0x9f, 0x98, 0x80}, 8),
	} {
		f.Add(seed)
	}
	c := New(Name)
	f.Fuzz(func(t *testing.T, in []byte) {
		same(t, c, build(&source{b: in}))
	})
}

// source hands out the fuzz input piece by piece (zeros when exhausted).
type source struct{ b []byte }

func (s *source) byte() byte {
	if len(s.b) == 0 {
		return 0
	}
	v := s.b[0]
	s.b = s.b[1:]
	return v
}

func (s *source) u32() uint32 {
	var buf [4]byte
	for i := range buf {
		buf[i] = s.byte()
	}
	return binary.LittleEndian.Uint32(buf[:])
}

func (s *source) i64() int64 { return int64(uint64(s.u32())<<32 | uint64(s.u32())) }

func (s *source) bytes() []byte {
	n := int(s.byte() % 40)
	if n > len(s.b) {
		n = len(s.b)
	}
	out := s.b[:n]
	s.b = s.b[n:]
	if n == 0 && s.byte()%2 == 0 {
		return nil
	}
	return append([]byte(nil), out...)
}

func (s *source) str() string { return string(s.bytes()) }

func (s *source) optStr() *string {
	if s.byte()%2 == 0 {
		return nil
	}
	return ptr(s.str())
}

func build(s *source) proto.Message {
	switch s.byte() % 5 {
	case 0:
		return startResp(buildProcessEvent(s))
	case 1:
		return &process.ConnectResponse{Event: buildProcessEvent(s)}
	case 2:
		return buildWatchDir(s)
	case 3:
		m := &filesystem.GetWatcherEventsResponse{}
		for n := s.byte() % 4; n > 0; n-- {
			if s.byte()%8 == 0 {
				m.Events = append(m.Events, nil)
			} else {
				m.Events = append(m.Events, buildFsEvent(s))
			}
		}
		return m
	default:
		m := startResp(buildProcessEvent(s))
		if s.byte()%2 == 0 {
			m.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 77, protowire.BytesType), s.bytes()))
		}
		return m
	}
}

func buildProcessEvent(s *source) *process.ProcessEvent {
	switch s.byte() % 8 {
	case 0:
		return nil
	case 1:
		return &process.ProcessEvent{}
	case 2:
		return &process.ProcessEvent{Event: &process.ProcessEvent_Start{Start: &process.ProcessEvent_StartEvent{Pid: s.u32()}}}
	case 3:
		var out any
		switch s.byte() % 4 {
		case 0:
			out = &process.ProcessEvent_DataEvent_Stdout{Stdout: s.bytes()}
		case 1:
			out = &process.ProcessEvent_DataEvent_Stderr{Stderr: s.bytes()}
		case 2:
			out = &process.ProcessEvent_DataEvent_Pty{Pty: s.bytes()}
		}
		return data(out)
	case 4:
		return &process.ProcessEvent{Event: &process.ProcessEvent_End{End: &process.ProcessEvent_EndEvent{
			ExitCode: int32(s.u32()), Exited: s.byte()%2 == 1, Status: s.str(), Error: s.optStr()}}}
	case 5:
		return &process.ProcessEvent{Event: &process.ProcessEvent_Keepalive{Keepalive: &process.ProcessEvent_KeepAlive{}}}
	case 6:
		return &process.ProcessEvent{Event: &process.ProcessEvent_End{}}
	default:
		return &process.ProcessEvent{Event: &process.ProcessEvent_Data{}}
	}
}

func buildWatchDir(s *source) *filesystem.WatchDirResponse {
	switch s.byte() % 5 {
	case 0:
		return &filesystem.WatchDirResponse{}
	case 1:
		return &filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Start{Start: &filesystem.WatchDirResponse_StartEvent{}}}
	case 2:
		return &filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Keepalive{Keepalive: &filesystem.WatchDirResponse_KeepAlive{}}}
	case 3:
		return &filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{}}
	default:
		return &filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: buildFsEvent(s)}}
	}
}

func buildFsEvent(s *source) *filesystem.FilesystemEvent {
	e := &filesystem.FilesystemEvent{Name: s.str(), Type: filesystem.EventType(int32(s.byte()%8) - 1)}
	if s.byte()%4 == 0 {
		return e
	}
	en := &filesystem.EntryInfo{
		Name: s.str(), Type: filesystem.FileType(int32(s.byte()%6) - 1), Path: s.str(), Size: s.i64(),
		Mode: s.u32(), Permissions: s.str(), Owner: s.str(), Group: s.str(), SymlinkTarget: s.optStr(),
	}
	switch s.byte() % 4 {
	case 0:
	case 1:
		en.ModifiedTime = &timestamppb.Timestamp{Seconds: s.i64() % 300000000000, Nanos: int32(s.u32())}
	default:
		en.ModifiedTime = &timestamppb.Timestamp{Seconds: int64(s.u32()), Nanos: int32(s.u32() % 1000000000)}
	}
	for n := s.byte() % 4; n > 0; n-- {
		if en.Metadata == nil {
			en.Metadata = map[string]string{}
		}
		en.Metadata[s.str()] = s.str()
	}
	e.Entry = en
	return e
}

// protojson's whitespace depends on the binary: in one binary it writes a
// space after every comma, in another none. The codec's other setting,
// which this test binary's protojson cannot show, must differ from
// protojson's output by exactly those spaces.
func TestMarshal_OtherCommaSpacing(t *testing.T) {
	c := New(Name)
	flipped := &Codec{name: Name, commaSpace: !c.commaSpace}
	entry := &filesystem.EntryInfo{Name: "n", Type: 1, Path: "/n", Size: 3, Mode: 0o644, Owner: "o", Group: "g",
		ModifiedTime: &timestamppb.Timestamp{Seconds: 5, Nanos: 5}, SymlinkTarget: ptr("t"), Metadata: map[string]string{"a": "1", "b": "2"}}
	for _, m := range []proto.Message{
		startResp(&process.ProcessEvent{Event: &process.ProcessEvent_End{End: &process.ProcessEvent_EndEvent{ExitCode: 2, Exited: true, Status: "s", Error: ptr("e")}}}),
		&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: &filesystem.FilesystemEvent{Name: "f", Type: 2, Entry: entry}}},
		&filesystem.GetWatcherEventsResponse{Events: []*filesystem.FilesystemEvent{{Name: "a"}, {Name: "b", Entry: entry}}},
	} {
		want, _ := reference(m)
		got, err := flipped.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		spaced, plain := want, got
		if flipped.commaSpace {
			spaced, plain = got, want
		}
		// No string above contains a comma, so every comma is a separator.
		if !bytes.Equal(bytes.ReplaceAll(spaced, []byte(", "), []byte(",")), plain) ||
			bytes.Count(spaced, []byte(",")) != bytes.Count(spaced, []byte(", ")) || bytes.Count(plain, []byte(",")) == 0 {
			t.Fatalf("spaced %s\nplain  %s", spaced, plain)
		}
	}
}
