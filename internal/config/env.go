package config

import (
	"net"
	"os"
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
	// EnvWatcherIdle overrides how long a polling watcher may go unpolled
	// before it expires, in milliseconds (tests of the expiry).
	EnvWatcherIdle = "ENVD_TEST_WATCHER_IDLE_MS"
)

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

// ScrubEnvironment removes envd's test-only variables from its own
// environment so spawned processes never see them.
func ScrubEnvironment() {
	_ = os.Unsetenv(EnvMMDSAddress)
	_ = os.Unsetenv(EnvWatcherIdle)
}
