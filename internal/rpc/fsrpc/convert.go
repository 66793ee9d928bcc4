package fsrpc

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/internal/fsops"
	"github.com/envd/envd/internal/watch"
)

func entryInfo(e *fsops.Entry) *filesystem.EntryInfo {
	if e == nil {
		return nil
	}
	out := &filesystem.EntryInfo{
		Name:          e.Name,
		Type:          fileType(e.Type),
		Path:          e.Path,
		Size:          e.Size,
		Mode:          e.Mode,
		Permissions:   e.Permissions,
		Owner:         e.Owner,
		Group:         e.Group,
		SymlinkTarget: e.SymlinkTarget,
		Metadata:      e.Metadata,
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
	return &filesystem.FilesystemEvent{Name: ev.Name, Type: eventType(ev.Op), Entry: entryInfo(ev.Entry)}
}
