package watch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// inotifyMask is what envd watches: the operations of spec rpc.md §9.2 plus
// the self events of the watched directory. IN_EXCL_UNLINK avoids events on
// files that were unlinked but are still open.
const inotifyMask = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_MOVE_SELF |
	unix.IN_ATTRIB | unix.IN_MODIFY | unix.IN_DELETE | unix.IN_DELETE_SELF | unix.IN_EXCL_UNLINK

// inotify is one inotify instance. The descriptor is non-blocking and owned
// by an *os.File, so a Read blocked in the runtime poller is woken by Close;
// watches are added through the file's raw connection so they can never hit
// a closed (or reused) descriptor number.
type inotify struct {
	f  *os.File
	mu sync.Mutex // serialises add/remove with Close
}

func newInotify() (*inotify, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	return &inotify{f: os.NewFile(uintptr(fd), "inotify")}, nil
}

// add watches dir; follow=false refuses a symlink (IN_DONT_FOLLOW).
func (in *inotify) add(dir string, follow bool) (int32, error) {
	mask := uint32(inotifyMask | unix.IN_ONLYDIR)
	if !follow {
		mask |= unix.IN_DONT_FOLLOW
	}
	rc, err := in.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var wd int
	var werr error
	in.mu.Lock()
	defer in.mu.Unlock()
	if cerr := rc.Control(func(fd uintptr) { wd, werr = unix.InotifyAddWatch(int(fd), dir, mask) }); cerr != nil {
		return 0, cerr
	}
	if werr != nil {
		return 0, &os.PathError{Op: "inotify_add_watch", Path: dir, Err: werr}
	}
	return int32(wd), nil
}

// remove drops a watch; errors (the watch is already gone) are irrelevant.
func (in *inotify) remove(wd int32) {
	rc, err := in.f.SyscallConn()
	if err != nil {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	_ = rc.Control(func(fd uintptr) { _, _ = unix.InotifyRmWatch(int(fd), uint32(wd)) })
}

// read blocks until events are available or the instance is closed
// (os.ErrClosed).
func (in *inotify) read(buf []byte) (int, error) { return in.f.Read(buf) }

func (in *inotify) close() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.f.Close()
}

// rawEvent is one decoded struct inotify_event.
type rawEvent struct {
	wd     int32
	mask   uint32
	cookie uint32 // pairs IN_MOVED_FROM with IN_MOVED_TO
	name   string
}

// inotifyHeader is sizeof(struct inotify_event) without the name.
const inotifyHeader = unix.SizeofInotifyEvent

var errShortEvent = errors.New("truncated inotify event")

// parseEvents decodes a buffer returned by read(2) on an inotify descriptor.
// The name field is NUL-padded.
func parseEvents(buf []byte) ([]rawEvent, error) {
	var out []rawEvent
	for len(buf) > 0 {
		if len(buf) < inotifyHeader {
			return out, errShortEvent
		}
		wd := int32(binary.NativeEndian.Uint32(buf[0:4]))
		mask := binary.NativeEndian.Uint32(buf[4:8])
		cookie := binary.NativeEndian.Uint32(buf[8:12])
		n := int(binary.NativeEndian.Uint32(buf[12:16]))
		if len(buf) < inotifyHeader+n {
			return out, errShortEvent
		}
		name := buf[inotifyHeader : inotifyHeader+n]
		for i, c := range name {
			if c == 0 {
				name = name[:i]
				break
			}
		}
		out = append(out, rawEvent{wd: wd, mask: mask, cookie: cookie, name: string(name)})
		buf = buf[inotifyHeader+n:]
	}
	return out, nil
}
