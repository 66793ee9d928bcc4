package jsoncodec

import (
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/gen/process"
)

// go test -run '^$' -bench . -benchmem ./internal/rpc/jsoncodec/
// Each message is marshalled into a reused buffer, as connect-go does with
// its pooled buffers; "protojson" is connect-go's own JSON codec.
func BenchmarkMarshal(b *testing.B) {
	out := make([]byte, 32<<10)
	for i := range out {
		out[i] = byte(i * 7)
	}
	entry := &filesystem.EntryInfo{Name: "file.txt", Type: filesystem.FileType_FILE_TYPE_FILE, Path: "/home/user/file.txt", Size: 1234,
		Mode: 0o644, Permissions: "-rw-r--r--", Owner: "user", Group: "user", ModifiedTime: timestamppb.Now()}
	events := make([]*filesystem.FilesystemEvent, 100)
	for i := range events {
		events[i] = &filesystem.FilesystemEvent{Name: "dir/file.txt", Type: filesystem.EventType_EVENT_TYPE_WRITE, Entry: entry}
	}
	cases := []struct {
		name  string
		msg   proto.Message
		bytes int
	}{
		{"stdout_32KiB", startResp(data(&process.ProcessEvent_DataEvent_Stdout{Stdout: out})), len(out)},
		{"stdout_100B", startResp(data(&process.ProcessEvent_DataEvent_Stdout{Stdout: out[:100]})), 100},
		{"end", startResp(&process.ProcessEvent{Event: &process.ProcessEvent_End{End: &process.ProcessEvent_EndEvent{ExitCode: 1, Exited: true, Status: "exit status 1", Error: ptr("exit status 1")}}}), 0},
		{"keepalive", &process.ConnectResponse{Event: &process.ProcessEvent{Event: &process.ProcessEvent_Keepalive{Keepalive: &process.ProcessEvent_KeepAlive{}}}}, 0},
		{"watch_event_with_entry", &filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: events[0]}}, 0},
		{"watcher_events_100", &filesystem.GetWatcherEventsResponse{Events: events}, 0},
	}
	c := New(Name)
	for _, tc := range cases {
		for _, impl := range []struct {
			name string
			fn   func([]byte, proto.Message) ([]byte, error)
		}{
			{"protojson", func(dst []byte, m proto.Message) ([]byte, error) {
				return protojson.MarshalOptions{}.MarshalAppend(dst, m)
			}},
			{"jsoncodec", func(dst []byte, m proto.Message) ([]byte, error) { return c.MarshalAppend(dst, m) }},
		} {
			b.Run(tc.name+"/"+impl.name, func(b *testing.B) {
				if tc.bytes > 0 {
					b.SetBytes(int64(tc.bytes))
				}
				b.ReportAllocs()
				buf := make([]byte, 0, 64<<10)
				for b.Loop() {
					var err error
					if buf, err = impl.fn(buf[:0], tc.msg); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
