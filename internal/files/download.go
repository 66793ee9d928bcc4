package files

import (
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// Download is a file opened for GET /files.
type Download struct {
	File *os.File
	Info fs.FileInfo
	// Sized is false for files whose size cannot be trusted (pseudo
	// filesystems, files that refuse SEEK_END): they are streamed to EOF
	// without a length, ranges or conditionals (spec http.md §10.2).
	Sized bool
}

// StatDownload checks that resolved names a regular file (following
// symlinks), with the errors of spec http.md §10.2 step 5.
func StatDownload(resolved string) (fs.FileInfo, error) {
	st, err := os.Stat(resolved)
	if err != nil {
		if notExist(err) {
			return nil, errorf(KindNotFound, err, "path '%s' does not exist", resolved)
		}
		return nil, errorf(KindInternal, err, "error checking if path exists '%s': %v", resolved, err)
	}
	if st.IsDir() {
		return nil, errorf(KindBadRequest, nil, "path '%s' is a directory", resolved)
	}
	if !st.Mode().IsRegular() {
		return nil, errorf(KindBadRequest, nil, "path '%s' is not a regular file", resolved)
	}
	return st, nil
}

// OpenDownload opens resolved for reading and decides whether its size can
// be served (step 8). The path may have changed since StatDownload, so the
// type is checked again on the opened descriptor: it is opened with
// O_NONBLOCK (a FIFO swapped in meanwhile would otherwise block open(2) —
// and the request — until a writer appears), and anything but a regular
// file gets the step-5 errors (O_NOCTTY: a terminal swapped in never becomes
// envd's controlling terminal). O_NONBLOCK is then cleared, so reads of the
// regular file are ordinary blocking reads.
func OpenDownload(resolved string) (*Download, error) {
	fd, err := unix.Open(resolved, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		err = &os.PathError{Op: "open", Path: resolved, Err: err}
		if notExist(err) {
			return nil, errorf(KindNotFound, err, "path '%s' does not exist", resolved)
		}
		return nil, errorf(KindInternal, err, "error opening file '%s': %v", resolved, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		err = &os.PathError{Op: "stat", Path: resolved, Err: err}
		return nil, errorf(KindInternal, err, "error opening file '%s': %v", resolved, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFDIR:
		unix.Close(fd)
		return nil, errorf(KindBadRequest, nil, "path '%s' is a directory", resolved)
	default:
		unix.Close(fd)
		return nil, errorf(KindBadRequest, nil, "path '%s' is not a regular file", resolved)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		err = &os.PathError{Op: "fcntl", Path: resolved, Err: err}
		return nil, errorf(KindInternal, err, "error opening file '%s': %v", resolved, err)
	}
	f := os.NewFile(uintptr(fd), resolved)
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, errorf(KindInternal, err, "error opening file '%s': %v", resolved, err)
	}
	d := &Download{File: f, Info: info, Sized: !onPseudoFSFd(fd)}
	if d.Sized {
		if _, err := f.Seek(0, io.SeekEnd); err != nil {
			d.Sized = false
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			d.Sized = false
		}
	}
	return d, nil
}

// Close releases the file.
func (d *Download) Close() error { return d.File.Close() }
