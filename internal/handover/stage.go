package handover

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Staging (§8.4).
const (
	// MaxBinaryBytes is the largest body /upgrade stores (larger: 413).
	MaxBinaryBytes = 512 << 20
	// DefaultStagingDir holds the staged binary.
	DefaultStagingDir = "/usr/bin"
	// NextName is the staged binary's name: /usr/bin/envd.next, the only
	// X-Envd-Upgrade-Bin target.
	NextName = "envd.next"
	// stagingPrefix starts the temporary file's name, followed by 16
	// random lowercase hex digits.
	stagingPrefix = ".envd.next."
	// ReExecPath is what an empty body executes: the running binary itself,
	// even when its file was deleted or replaced.
	ReExecPath = "/proc/self/exe"
)

const copyChunk = 256 << 10

// stageBody streams body into a new temporary file in dir (mode 0700 while
// it is written, 0755 once complete) and returns its path. It never leaves
// a file behind on failure: ErrTooLarge past limit bytes, ErrClientGone
// when the body ends early or its client goes away, a *Failure with the
// error text when the file cannot be written (ENOSPC, EROFS).
func stageBody(dir string, body io.Reader, limit int64) (string, error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", failf(err, "staging: %v", err)
	}
	path := filepath.Join(dir, stagingPrefix+hex.EncodeToString(rnd[:]))
	fd, err := unix.Open(path, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o700)
	if err != nil {
		return "", failf(err, "%v", &os.PathError{Op: "open", Path: path, Err: err})
	}
	f := os.NewFile(uintptr(fd), path)
	ok := false
	defer func() {
		if !ok {
			f.Close()
			_ = os.Remove(path)
		}
	}()
	buf := make([]byte, copyChunk)
	var total int64
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			total += int64(n)
			if total > limit {
				return "", ErrTooLarge
			}
			if _, werr := f.Write(buf[:n]); werr != nil {
				return "", failf(werr, "%v", werr)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return "", fmt.Errorf("%w: %v", ErrClientGone, rerr)
		}
	}
	// The mode is set before the close, on the descriptor: nothing can
	// swap the file in between.
	if err := f.Chmod(0o755); err != nil {
		return "", failf(err, "%v", err)
	}
	if err := f.Close(); err != nil {
		return "", failf(err, "%v", err)
	}
	ok = true
	return path, nil
}

// install renames the probed temporary file onto dir/envd.next (atomic: a
// running image started from that path keeps its now unlinked file). On
// failure the temporary file is removed.
func install(tmp, dir string) (string, error) {
	final := filepath.Join(dir, NextName)
	if err := os.Rename(tmp, final); err != nil {
		_ = os.Remove(tmp)
		var le *os.LinkError
		if errors.As(err, &le) {
			return "", failf(err, "rename %s: %v", final, le.Err)
		}
		return "", failf(err, "%v", err)
	}
	return final, nil
}
