package files

import (
	"io"
	"io/fs"
	"os"
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
// be served (step 8).
func OpenDownload(resolved string) (*Download, error) {
	f, err := os.Open(resolved)
	if err != nil {
		return nil, errorf(KindInternal, err, "error opening file '%s': %v", resolved, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, errorf(KindInternal, err, "error opening file '%s': %v", resolved, err)
	}
	d := &Download{File: f, Info: st, Sized: !onPseudoFS(resolved)}
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
