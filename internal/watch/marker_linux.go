package watch

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/fsops"
)

// placeMarker creates and unlinks the regular file name in dir, once it is
// sure that the path still leads to the directory that changed: every
// watcher of that directory reads an IN_CREATE for name after the events
// of the operation (and an IN_DELETE), and the directory is left as it was
// but for its modification time. mknodat makes the file without opening
// it; a regular file needs no privilege.
func placeMarker(dir fsops.ChangedDir, name string) error {
	fd, err := unix.Open(dir.Path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir.Path, Err: err}
	}
	defer unix.Close(fd)
	if id, ok := fsops.DirIDOf(fd); !ok || id != dir.ID {
		return fmt.Errorf("%s is no longer the directory that changed", dir.Path)
	}
	if err := unix.Mknodat(fd, name, unix.S_IFREG|0o600, 0); err != nil {
		return &os.PathError{Op: "mknod", Path: dir.Path + "/" + name, Err: err}
	}
	// The marker did its work once it existed; a failed unlink only leaves
	// a hidden empty file behind, which is retried once.
	if err := unix.Unlinkat(fd, name, 0); err != nil && err != unix.ENOENT {
		_ = unix.Unlinkat(fd, name, 0)
	}
	return nil
}
