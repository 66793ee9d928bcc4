// Package mountinfo answers "is this path a mount point" from
// /proc/self/mountinfo, for the PID-1 mounts and for /init volumes.
package mountinfo

import (
	"bufio"
	"bytes"
	"os"
	"strings"
)

// Self is the mount table of envd's own mount namespace.
const Self = "/proc/self/mountinfo"

// MountPoints returns every mount point listed in the mountinfo file.
func MountPoints(path string) (map[string]bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data), nil
}

// Parse extracts the mount points (fifth field, octal escapes decoded).
func Parse(data []byte) map[string]bool {
	out := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 4 {
			out[unescape(f[4])] = true
		}
	}
	return out
}

// IsMountPoint reports whether path is a mount point per the mountinfo
// file; an unreadable file means no.
func IsMountPoint(mountinfo, path string) bool {
	mp, err := MountPoints(mountinfo)
	return err == nil && mp[path]
}

// unescape decodes the \NNN octal escapes the kernel uses for spaces,
// tabs, newlines and backslashes in paths.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			if n, ok := octal3(s[i+1:]); ok {
				b.WriteByte(n)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func octal3(s string) (byte, bool) {
	if len(s) < 3 {
		return 0, false
	}
	n := 0
	for i := 0; i < 3; i++ {
		if s[i] < '0' || s[i] > '7' {
			return 0, false
		}
		n = n*8 + int(s[i]-'0')
	}
	if n > 255 {
		return 0, false
	}
	return byte(n), true
}
