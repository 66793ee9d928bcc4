package fsrpc

import (
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/watch"
)

// Names on Linux are bytes; protobuf strings must be UTF-8, and one
// invalid string fails the whole message (a listing, a batch of events) in
// either codec. So every string from the filesystem or the user database
// goes out with each invalid byte replaced by U+FFFD (as Go's encoding/json
// does; byte by byte, so that "\xff" and "\xff\xfe" stay apart): the entry is still listed, with a name that says it could not be
// shown, and everything around it survives. Such a file cannot be
// addressed by the name it is listed under; a process (a shell glob) or an
// operation on its directory still reaches it.
func text(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func entryInfo(e *fsops.Entry) *filesystem.EntryInfo {
	if e == nil {
		return nil
	}
	out := &filesystem.EntryInfo{
		Name:        text(e.Name),
		Type:        fileType(e.Type),
		Path:        text(e.Path),
		Size:        e.Size,
		Mode:        e.Mode,
		Permissions: e.Permissions,
		Owner:       text(e.Owner),
		Group:       text(e.Group),
		// Metadata keys and values are UTF-8 already: fsops skips others
		// (spec rpc.md §6).
		Metadata: e.Metadata,
	}
	if e.SymlinkTarget != nil {
		t := text(*e.SymlinkTarget)
		out.SymlinkTarget = &t
	}
	if !e.ModTime.IsZero() {
		out.ModifiedTime = timestamppb.New(e.ModTime)
	}
	return out
}

func fileType(t fsops.FileType) filesystem.FileType {
	switch t {
	case fsops.TypeFile:
		return filesystem.FileType_FILE_TYPE_FILE
	case fsops.TypeDirectory:
		return filesystem.FileType_FILE_TYPE_DIRECTORY
	}
	return filesystem.FileType_FILE_TYPE_UNSPECIFIED
}

func eventType(op watch.Op) filesystem.EventType {
	switch op {
	case watch.OpCreate:
		return filesystem.EventType_EVENT_TYPE_CREATE
	case watch.OpWrite:
		return filesystem.EventType_EVENT_TYPE_WRITE
	case watch.OpRemove:
		return filesystem.EventType_EVENT_TYPE_REMOVE
	case watch.OpRename:
		return filesystem.EventType_EVENT_TYPE_RENAME
	case watch.OpChmod:
		return filesystem.EventType_EVENT_TYPE_CHMOD
	}
	return filesystem.EventType_EVENT_TYPE_UNSPECIFIED
}

func filesystemEvent(ev watch.Event) *filesystem.FilesystemEvent {
	return &filesystem.FilesystemEvent{Name: text(ev.Name), Type: eventType(ev.Op), Entry: entryInfo(ev.Entry)}
}
