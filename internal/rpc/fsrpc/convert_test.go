package fsrpc

import (
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/watch"
)

func TestText_ReplacesEachInvalidByte(t *testing.T) {
	for in, want := range map[string]string{
		"plain.txt":      "plain.txt",
		"é✓":             "é✓",
		"\xff":           "\uFFFD",
		"a\xff\xfeb":     "a\uFFFD\uFFFDb",
		"\xe2\x9c":       "\uFFFD\uFFFD", // a truncated ✓
		"dir/\xc3(x.txt": "dir/\uFFFD(x.txt",
	} {
		if got := text(in); got != want {
			t.Errorf("text(%q) = %q, want %q", in, got, want)
		}
	}
}

// Messages built from non-UTF-8 names encode in both codecs.
func TestConvert_NonUTF8AlwaysEncodes(t *testing.T) {
	target := "/t/\xff"
	e := &fsops.Entry{Name: "\xff", Path: "/t/\xff", Owner: "us\xe9r", Group: "gr\xfcp", SymlinkTarget: &target, ModTime: time.Now()}
	msgs := []proto.Message{
		&filesystem.ListDirResponse{Entries: []*filesystem.EntryInfo{entryInfo(e), entryInfo(&fsops.Entry{Name: "ok"})}},
		&filesystem.GetWatcherEventsResponse{Events: []*filesystem.FilesystemEvent{filesystemEvent(watch.Event{Name: "sub/\xff", Op: watch.OpCreate, Entry: e})}},
		&filesystem.StatResponse{Entry: entryInfo(e)},
	}
	for _, m := range msgs {
		if _, err := proto.Marshal(m); err != nil {
			t.Fatalf("binary: %v", err)
		}
		if _, err := protojson.Marshal(m); err != nil {
			t.Fatalf("json: %v", err)
		}
	}
	if got := entryInfo(e).GetSymlinkTarget(); got != "/t/\uFFFD" {
		t.Fatalf("symlink target %q", got)
	}
	if *e.SymlinkTarget != target {
		t.Fatal("the domain entry was changed")
	}
}
