// Package fsrpc implements the filesystem.Filesystem Connect service on top
// of the filesystem operations and watchers.
package fsrpc

import (
	"github.com/envd/envd/gen/filesystem/filesystemconnect"
)

// Service implements filesystem.Filesystem. Until the filesystem
// operations land, every RPC answers unimplemented.
type Service struct {
	filesystemconnect.UnimplementedFilesystemHandler
}
