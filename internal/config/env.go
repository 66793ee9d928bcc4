package config

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Test-only settings are environment variables because the flag set is fixed
// (spec decision D2). They are read once at startup and removed from envd's
// environment so that no spawned process inherits them.
const (
	// EnvMMDSAddress overrides the metadata service address: "host" or
	// "host:port" (IPv6 in brackets). Spec lifecycle.md §4.1.
	EnvMMDSAddress = "ENVD_MMDS_ADDRESS"
	// EnvThawWatchdog shortens the thaw watchdog's window (milliseconds;
	// control-plane.md §4.3).
	EnvThawWatchdog = "ENVD_TEST_THAW_WATCHDOG_MS"
	// EnvFSFreezeWatchdog shortens the filesystem-freeze watchdog's window
	// (milliseconds; control-plane.md §7.4).
	EnvFSFreezeWatchdog = "ENVD_TEST_FSFREEZE_WATCHDOG_MS"
	// EnvFSFreezeTarget names the mount point /fsfreeze and /fsthaw act on
	// instead of "/" (an absolute path), so that tests outside a VM can
	// freeze a filesystem they created rather than the machine's root.
	EnvFSFreezeTarget = "ENVD_TEST_FSFREEZE_TARGET"
	// EnvWatcherIdle overrides how long a polling watcher may go unpolled
	// before it expires, in milliseconds (tests of the expiry).
	EnvWatcherIdle = "ENVD_TEST_WATCHER_IDLE_MS"
	// EnvHandoverFallback shortens the post-handover fallback's window
	// (milliseconds; control-plane.md §8.14).
	EnvHandoverFallback = "ENVD_TEST_HANDOVER_FALLBACK_MS"
	// EnvHandoverCorrupt, set to 1, makes a live upgrade write garbage
	// instead of its record, so that tests can reach the incoming side's
	// failure path (control-plane.md §8.16).
	EnvHandoverCorrupt = "ENVD_TEST_HANDOVER_CORRUPT"
	// EnvHandoverProbe is the compatibility probe's variable: with it set
	// to 1, --version prints a second line `handover-schema <N>`
	// (lifecycle.md §1.3, control-plane.md §8.5).
	EnvHandoverProbe = "ENVD_HANDOVER_PROBE"
)

// TestSettings are the test-only overrides of the control plane's timers
// and filesystem-freeze target; zero values mean "not overridden".
type TestSettings struct {
	ThawWatchdog     time.Duration
	FSFreezeWatchdog time.Duration
	FSFreezeTarget   string
	HandoverFallback time.Duration
	HandoverCorrupt  bool
	// Invalid lists the variables that were set but not understood (they
	// are ignored; main logs them).
	Invalid []string
}

// ReadTestSettings reads the test-only variables. A window must be a
// positive number of milliseconds; a target must be an absolute path.
func ReadTestSettings(getenv func(string) string) TestSettings {
	var s TestSettings
	ms := func(name string) time.Duration {
		v := getenv(name)
		if v == "" {
			return 0
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 || n > int64(24*time.Hour/time.Millisecond) {
			s.Invalid = append(s.Invalid, name)
			return 0
		}
		return time.Duration(n) * time.Millisecond
	}
	s.ThawWatchdog = ms(EnvThawWatchdog)
	s.FSFreezeWatchdog = ms(EnvFSFreezeWatchdog)
	s.HandoverFallback = ms(EnvHandoverFallback)
	switch v := getenv(EnvHandoverCorrupt); v {
	case "":
	case "1":
		s.HandoverCorrupt = true
	default:
		s.Invalid = append(s.Invalid, EnvHandoverCorrupt)
	}
	if v := getenv(EnvFSFreezeTarget); v != "" {
		if filepath.IsAbs(v) {
			s.FSFreezeTarget = filepath.Clean(v)
		} else {
			s.Invalid = append(s.Invalid, EnvFSFreezeTarget)
		}
	}
	return s
}

// WatcherIdle returns the polling-watcher expiry override; 0 (use the
// default) when unset, and ok=false when set but not a positive integer.
func WatcherIdle(getenv func(string) string) (d time.Duration, ok bool) {
	v := getenv(EnvWatcherIdle)
	if v == "" {
		return 0, true
	}
	ms, err := strconv.ParseUint(v, 10, 31)
	if err != nil || ms == 0 {
		return 0, false
	}
	return time.Duration(ms) * time.Millisecond, true
}

// DefaultMMDSAddress is Firecracker's metadata service.
const DefaultMMDSAddress = "169.254.169.254:80"

// MMDSAddress returns the metadata service address as host:port. An invalid
// override is reported through ok=false and the default is returned.
func MMDSAddress(getenv func(string) string) (addr string, ok bool) {
	v := getenv(EnvMMDSAddress)
	if v == "" {
		return DefaultMMDSAddress, true
	}
	return ParseHostPort(v, 80)
}

// ParseHostPort accepts "host", "host:port", "[v6]" or "[v6]:port" and returns
// "host:port" with defaultPort filled in.
func ParseHostPort(v string, defaultPort int) (string, bool) {
	if host, port, err := net.SplitHostPort(v); err == nil {
		p, perr := strconv.Atoi(port)
		if host == "" || perr != nil || p < 1 || p > 65535 {
			return DefaultMMDSAddress, false
		}
		return net.JoinHostPort(host, port), true
	}
	host := v
	if len(host) > 2 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
		if net.ParseIP(host) == nil {
			return DefaultMMDSAddress, false
		}
	}
	if host == "" || strings.ContainsAny(host, "[]/ ") {
		return DefaultMMDSAddress, false
	}
	return net.JoinHostPort(host, strconv.Itoa(defaultPort)), true
}

// scrubbed are the variables envd reads for itself and no child may see.
var scrubbed = []string{EnvMMDSAddress, EnvWatcherIdle, EnvThawWatchdog, EnvFSFreezeWatchdog, EnvFSFreezeTarget,
	EnvHandoverFallback, EnvHandoverCorrupt, EnvHandoverProbe}

// ScrubEnvironment removes envd's test-only variables (and the probe's)
// from its own environment so spawned processes never see them. A live
// upgrade passes its successor the environment envd was given instead
// (ExecEnvironment, taken before this).
func ScrubEnvironment() {
	for _, name := range scrubbed {
		_ = os.Unsetenv(name)
	}
}

// ExecEnvironment is the environment a live upgrade's execve passes on
// (control-plane.md §8.8 step 3): envd's own, as the kernel or the image's
// init script gave it — test-only settings included, so that the next
// image behaves as this one — but never the probe variable. Call it before
// ScrubEnvironment.
func ExecEnvironment(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		if strings.HasPrefix(kv, EnvHandoverProbe+"=") {
			continue
		}
		out = append(out, kv)
	}
	return out
}
