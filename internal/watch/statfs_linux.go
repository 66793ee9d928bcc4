package watch

import "golang.org/x/sys/unix"

// Filesystem magic numbers of network and FUSE filesystems (statfs f_type),
// on which inotify misses remote changes (spec rpc.md §9.1).
const (
	magicNFS  = 0x6969
	magicCIFS = 0xFF534D42
	magicSMB  = 0x517B
	magicSMB2 = 0xFE534D42
	magicFUSE = 0x65735546
)

// isNetworkFS decides from a statfs f_type whether a watch must be refused
// unless the client allows network mounts.
func isNetworkFS(fsType int64) bool {
	switch uint32(fsType) {
	case magicNFS, magicCIFS, magicSMB, magicSMB2, magicFUSE:
		return true
	}
	return false
}

func fsTypeOf(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Type), nil
}
