package watch

import (
	"os"

	"github.com/envd/envd/internal/fsops"
)

// Validate checks that w can be watched (spec rpc.md §9.1 steps 2–3): it
// exists, is a directory (following symlinks) and, unless network mounts are
// allowed, is not on a network or FUSE filesystem.
func Validate(w string, allowNetworkMounts bool) error {
	st, err := os.Stat(w)
	if err != nil {
		if os.IsNotExist(err) {
			return fsops.Errorf(fsops.KindNotFound, err, "path %s not found: %v", w, err)
		}
		return fsops.Errorf(fsops.KindInternal, err, "error statting path %s: %v", w, err)
	}
	if !st.IsDir() {
		return fsops.Errorf(fsops.KindInvalidArgument, nil, "path %s not a directory", w)
	}
	if allowNetworkMounts {
		return nil
	}
	t, err := fsTypeOf(w)
	if err != nil {
		return fsops.Errorf(fsops.KindInternal, err, "error checking mount status: %v", err)
	}
	if isNetworkFS(t) {
		return fsops.Errorf(fsops.KindInvalidArgument, nil, "cannot watch path on network filesystem: %s", w)
	}
	return nil
}
