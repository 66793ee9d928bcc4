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
