package lifecycle

import (
	"log/slog"
	"os"
	"syscall"
)

// DefaultPath is set when envd starts without PATH, as the kernel starts
// init; every spawned process inherits envd's PATH.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/games:/usr/local/games"

// ApplyProcessSettings sets envd's process-wide defaults (spec lifecycle.md
// §2.1 step 4): umask 022, a PATH when there is none, and an OOM score
// that keeps the kernel's OOM killer away from envd. Failures are logged.
func ApplyProcessSettings(log *slog.Logger) {
	syscall.Umask(0o22)
	if os.Getenv("PATH") == "" {
		_ = os.Setenv("PATH", DefaultPath)
	}
	// Children inherit -1000 until their wrapper shell raises it, which
	// needs no privilege.
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0o644); err != nil {
		log.Warn("cannot protect envd from the OOM killer", "error", err.Error())
	}
}
