package fsops

import (
	"bytes"
	"errors"

	"golang.org/x/sys/unix"
)

// listXattrs returns the attribute names of p. The list can change between
// sizing and reading (ERANGE), so it retries a few times.
func listXattrs(p string) []string {
	for range 4 {
		n, err := unix.Listxattr(p, nil)
		if err != nil || n == 0 {
			return nil
		}
		buf := make([]byte, n)
		n, err = unix.Listxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil
		}
		var names []string
		for _, b := range bytes.Split(buf[:n], []byte{0}) {
			if len(b) > 0 {
				names = append(names, string(b))
			}
		}
		return names
	}
	return nil
}

func getXattr(p, name string) ([]byte, bool) {
	for range 4 {
		n, err := unix.Getxattr(p, name, nil)
		if err != nil {
			return nil, false
		}
		buf := make([]byte, n)
		if n == 0 {
			return buf, true
		}
		n, err = unix.Getxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, false
		}
		return buf[:n], true
	}
	return nil, false
}
