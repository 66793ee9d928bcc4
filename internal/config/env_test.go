package config

import (
	"testing"
	"time"
)

func TestReadTestSettings(t *testing.T) {
	env := map[string]string{
		EnvThawWatchdog:     "1500",
		EnvFSFreezeWatchdog: "-3",
		EnvFSFreezeTarget:   "/var/tmp/x/../mnt",
	}
	s := ReadTestSettings(func(k string) string { return env[k] })
	if s.ThawWatchdog != 1500*time.Millisecond || s.FSFreezeWatchdog != 0 || s.FSFreezeTarget != "/var/tmp/mnt" {
		t.Fatalf("%+v", s)
	}
	if len(s.Invalid) != 1 || s.Invalid[0] != EnvFSFreezeWatchdog {
		t.Fatalf("invalid %v", s.Invalid)
	}
	env[EnvFSFreezeTarget] = "relative/path"
	if s := ReadTestSettings(func(k string) string { return env[k] }); s.FSFreezeTarget != "" || len(s.Invalid) != 2 {
		t.Fatalf("%+v", s)
	}
}

func TestHandoverSettings(t *testing.T) {
	env := map[string]string{EnvHandoverFallback: "2500", EnvHandoverCorrupt: "1"}
	s := ReadTestSettings(func(k string) string { return env[k] })
	if s.HandoverFallback != 2500*time.Millisecond || !s.HandoverCorrupt || len(s.Invalid) != 0 {
		t.Fatalf("%+v", s)
	}
	env[EnvHandoverCorrupt] = "yes"
	if s := ReadTestSettings(func(k string) string { return env[k] }); s.HandoverCorrupt || len(s.Invalid) != 1 {
		t.Fatalf("%+v", s)
	}
}

// --version prints the handover-schema line only for the probe (lifecycle.md
// §1.3), and the probe's variable never reaches the next image.
func TestVersionTextAndExecEnvironment(t *testing.T) {
	get := func(v string) func(string) string {
		return func(k string) string {
			if k == EnvHandoverProbe {
				return v
			}
			return ""
		}
	}
	if got := VersionText("0.6.6", get(""), 1); got != "0.6.6" {
		t.Fatalf("without the probe: %q", got)
	}
	if got := VersionText("0.6.6", get("1"), 1); got != "0.6.6\nhandover-schema 1" {
		t.Fatalf("with the probe: %q", got)
	}
	if got := VersionText("0.6.6", get("yes"), 1); got != "0.6.6" {
		t.Fatalf("with another value: %q", got)
	}
	env := ExecEnvironment([]string{"PATH=/bin", EnvHandoverProbe + "=1", EnvMMDSAddress + "=x:1", EnvThawWatchdog + "=5"})
	if len(env) != 3 || env[0] != "PATH=/bin" || env[1] != EnvMMDSAddress+"=x:1" {
		t.Fatalf("exec environment %v", env)
	}
}
