package lifecycle

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary act as a helper process instead of running
// tests; used where a test must change process-wide state (closing standard
// descriptors) that the test process itself must keep.
const helperEnv = "ENVD_LIFECYCLE_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "stdio":
		os.Exit(stdioHelper())
	default:
		fmt.Fprintln(os.Stderr, "unknown helper", os.Getenv(helperEnv))
		os.Exit(3)
	}
}

// stdioHelper closes descriptors 0 and 2, runs ensureStdio with the
// candidate paths from ENVD_STDIO_CANDIDATES and writes a marker through
// fd 2, so the parent can see where it landed.
func stdioHelper() int {
	_ = unix.Close(0)
	_ = unix.Close(2)
	opened := ensureStdio(strings.Split(os.Getenv("ENVD_STDIO_CANDIDATES"), ","))
	if _, err := unix.Write(2, []byte("marker-on-fd2\n")); err != nil {
		fmt.Fprintln(os.Stdout, "write fd 2:", err)
		return 1
	}
	target, _ := os.Readlink("/proc/self/fd/0")
	fmt.Fprintf(os.Stdout, "opened=%v fd0=%s\n", opened, target)
	return 0
}
