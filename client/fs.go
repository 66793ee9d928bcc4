package client

import (
	"context"
	"io/fs"
	"time"

	"github.com/envd/envd/gen/filesystem"
)

// FileType is the kind of a filesystem entry.
type FileType int

// File types. envd reports a symlink with the type of its final target (see
// EntryInfo.Symlink); FileTypeOther covers devices, FIFOs, sockets and
// broken links.
const (
	FileTypeOther FileType = iota
	FileTypeFile
	FileTypeDir
)

// String returns "file", "dir" or "other".
func (t FileType) String() string {
	switch t {
	case FileTypeFile:
		return "file"
	case FileTypeDir:
		return "dir"
	}
	return "other"
}

// MarshalText encodes the type as its String.
func (t FileType) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// EntryInfo describes a file, directory or link in the guest.
type EntryInfo struct {
	// Name is the base name; "/" for the root.
	Name string `json:"name"`
	// Path is the path as requested (for ListDir: under the requested
	// directory, even when that is a symlink).
	Path string   `json:"path"`
	Type FileType `json:"type"`
	// Size is the length in bytes (of the link text for a symlink).
	Size int64 `json:"size"`
	// Mode holds the permission bits (of the target, for a symlink).
	Mode fs.FileMode `json:"mode"`
	// Permissions renders the entry's own mode like "drwxr-xr-x".
	Permissions string    `json:"permissions"`
	Owner       string    `json:"owner"`
	Group       string    `json:"group"`
	ModTime     time.Time `json:"modTime"`
	// Symlink is true for a symbolic link; SymlinkTarget is then its fully
	// resolved target (or the link's own path if it cannot be resolved).
	Symlink       bool   `json:"symlink,omitempty"`
	SymlinkTarget string `json:"symlinkTarget,omitempty"`
	// Metadata is what an upload stored with the file.
	Metadata map[string]string `json:"metadata,omitempty"`
}

// IsDir reports whether the entry is a directory (or a link to one).
func (e *EntryInfo) IsDir() bool { return e.Type == FileTypeDir }

func entryFromProto(p *filesystem.EntryInfo) *EntryInfo {
	if p == nil {
		return nil
	}
	e := &EntryInfo{
		Name:          p.GetName(),
		Path:          p.GetPath(),
		Size:          p.GetSize(),
		Mode:          fs.FileMode(p.GetMode()) & fs.ModePerm,
		Permissions:   p.GetPermissions(),
		Owner:         p.GetOwner(),
		Group:         p.GetGroup(),
		Symlink:       p.SymlinkTarget != nil,
		SymlinkTarget: p.GetSymlinkTarget(),
		Metadata:      p.GetMetadata(),
	}
	switch p.GetType() {
	case filesystem.FileType_FILE_TYPE_FILE:
		e.Type = FileTypeFile
	case filesystem.FileType_FILE_TYPE_DIRECTORY:
		e.Type = FileTypeDir
	}
	if t := p.GetModifiedTime(); t != nil {
		e.ModTime = t.AsTime()
	}
	if len(e.Metadata) == 0 {
		e.Metadata = nil
	}
	return e
}

// Stat describes the entry at path without following a final symlink. A
// missing path is reported as not found (IsNotFound).
func (c *Client) Stat(ctx context.Context, path string) (*EntryInfo, error) {
	resp, err := c.fs.Stat(ctx, newRequest(c, &filesystem.StatRequest{Path: path}, true, false))
	if err != nil {
		return nil, rpcError("Stat", err)
	}
	return entryFromProto(resp.Msg.GetEntry()), nil
}

// ListDir lists the directory at path down to depth levels (0 and 1 list
// the directory's own entries), depth-first with names in byte order.
// Symlinks are listed but not descended into.
func (c *Client) ListDir(ctx context.Context, path string, depth int) ([]EntryInfo, error) {
	if depth < 0 {
		depth = 0
	}
	if depth > 1<<31 {
		depth = 1 << 31
	}
	resp, err := c.fs.ListDir(ctx, newRequest(c, &filesystem.ListDirRequest{Path: path, Depth: uint32(depth)}, true, false))
	if err != nil {
		return nil, rpcError("ListDir", err)
	}
	out := make([]EntryInfo, 0, len(resp.Msg.GetEntries()))
	for _, e := range resp.Msg.GetEntries() {
		out = append(out, *entryFromProto(e))
	}
	return out, nil
}

// MakeDir creates the directory at path and any missing parents, owned by
// the client's user. An existing directory is reported as already existing
// (IsAlreadyExists).
func (c *Client) MakeDir(ctx context.Context, path string) (*EntryInfo, error) {
	resp, err := c.fs.MakeDir(ctx, newRequest(c, &filesystem.MakeDirRequest{Path: path}, true, false))
	if err != nil {
		return nil, rpcError("MakeDir", err)
	}
	return entryFromProto(resp.Msg.GetEntry()), nil
}

// Move renames source to destination (within one filesystem), creating
// missing parents of destination. An existing destination file is
// replaced.
func (c *Client) Move(ctx context.Context, source, destination string) (*EntryInfo, error) {
	resp, err := c.fs.Move(ctx, newRequest(c, &filesystem.MoveRequest{Source: source, Destination: destination}, true, false))
	if err != nil {
		return nil, rpcError("Move", err)
	}
	return entryFromProto(resp.Msg.GetEntry()), nil
}

// Remove deletes path like rm -rf: a file, a link or a whole tree. A path
// that does not exist is not an error.
func (c *Client) Remove(ctx context.Context, path string) error {
	_, err := c.fs.Remove(ctx, newRequest(c, &filesystem.RemoveRequest{Path: path}, true, false))
	return rpcError("Remove", err)
}
