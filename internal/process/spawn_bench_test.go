package process

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/identity"
)

// The spawn path's benchmarks: go test -run '^$' -bench 'Spawn' ./internal/process/
// (add -cpuprofile to see where the time goes). Each iteration is a whole
// process: Start of /bin/true with stdin /dev/null until its end was
// delivered to the subscription, as an exec RPC does without the RPC.

func benchManager(b *testing.B) *Manager {
	b.Helper()
	return New(Options{Spawner: testReaper, Defaults: defaults.New("root")})
}

func benchRoot(b *testing.B) *identity.User {
	b.Helper()
	u, err := identity.LookupUser("root")
	if err != nil {
		b.Fatal(err)
	}
	return u
}

func benchStart(b *testing.B, m *Manager, cfg Config) {
	b.Helper()
	u := benchRoot(b)
	no := false
	for b.Loop() {
		_, s, err := m.Start(StartOptions{Config: cfg, User: u, Stdin: &no})
		if err != nil {
			b.Fatal(err)
		}
		for end := false; !end; {
			it, ok := s.Next()
			if !ok {
				<-s.Ready()
				continue
			}
			if it.Err != nil {
				b.Fatal(it.Err)
			}
			end = it.End != nil
		}
		s.Close()
	}
}

func trueBinary(b *testing.B) string {
	b.Helper()
	p, err := exec.LookPath("true")
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkSpawn_Direct is the in-process path: the command is exec'd
// directly, the wrapper's effects produced by envd.
func BenchmarkSpawn_Direct(b *testing.B) {
	m := benchManager(b)
	benchStart(b, m, Config{Cmd: trueBinary(b)})
}

// BenchmarkSpawn_Wrapper is the same through the wrapper (/bin/sh,
// ionice, nice), the fallback and the path before in-process effects.
func BenchmarkSpawn_Wrapper(b *testing.B) {
	m := benchManager(b)
	m.fx.off.Store(true)
	benchStart(b, m, Config{Cmd: trueBinary(b)})
}

// BenchmarkSpawn_DirectParallel runs Starts from as many goroutines as
// GOMAXPROCS, as concurrent exec RPCs do.
func BenchmarkSpawn_DirectParallel(b *testing.B) {
	m := benchManager(b)
	path := trueBinary(b)
	u := benchRoot(b)
	no := false
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, s, err := m.Start(StartOptions{Config: Config{Cmd: path}, User: u, Stdin: &no})
			if err != nil {
				b.Error(err)
				return
			}
			for end := false; !end; {
				it, ok := s.Next()
				if !ok {
					<-s.Ready()
					continue
				}
				end = it.End != nil || it.Err != nil
			}
			s.Close()
		}
	})
}

// BenchmarkSpawn_ForkExecFloor is the floor under both: fork+exec of
// /bin/true through the reaper and its exit status, nothing else.
func BenchmarkSpawn_ForkExecFloor(b *testing.B) {
	path := trueBinary(b)
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()
	fd := devnull.Fd()
	attr := &syscall.ProcAttr{Files: []uintptr{fd, fd, fd}, Env: []string{"PATH=/usr/bin:/bin"}}
	for b.Loop() {
		_, status, err := testReaper.Spawn(func() (int, error) { return syscall.ForkExec(path, []string{path}, attr) })
		if err != nil {
			b.Fatal(err)
		}
		select {
		case <-status:
		case <-time.After(20 * time.Second):
			b.Fatal("no exit status within 20 s")
		}
	}
}
