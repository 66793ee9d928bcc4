package lifecycle

import (
	"errors"

	"golang.org/x/sys/unix"
)

// consoleCandidates are tried, in order, for a closed standard descriptor.
var consoleCandidates = []string{"/dev/console", "/dev/null"}

// EnsureStdio makes sure descriptors 0, 1 and 2 are open so that logging
// works and no later open() lands on them (spec lifecycle.md §2.1 step 1).
// A closed one is opened on /dev/console, or /dev/null if that fails. It
// reports which descriptors it had to open.
//
// Go's runtime already opens /dev/null for closed standard descriptors
// before main runs (and aborts if it cannot), so in practice this finds
// them open; it stays as the documented guarantee and for runtimes that
// stop doing so.
func EnsureStdio() []int {
	return ensureStdio(consoleCandidates)
}

func ensureStdio(candidates []string) []int {
	var opened []int
	for fd := 0; fd <= 2; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
			continue
		}
		for _, path := range candidates {
			// No O_CLOEXEC: standard descriptors are meant to be inherited.
			nfd, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY, 0)
			if err != nil {
				continue
			}
			if nfd != fd {
				err = unix.Dup3(nfd, fd, 0)
				_ = unix.Close(nfd)
				if err != nil {
					continue
				}
			}
			opened = append(opened, fd)
			break
		}
	}
	return opened
}
