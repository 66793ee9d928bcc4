package handover

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/envd/envd/internal/signame"
)

// Probe limits (§8.5).
const (
	probeDeadline = 5 * time.Second
	// probeOutput is how much of the probe's stdout is looked at; the rest
	// is drained and discarded so that the probe is not blocked writing.
	probeOutput    = 4 << 10
	probeRetries   = 5
	probeRetryWait = 50 * time.Millisecond
)

// Spawner forks through the single reaper (*reaper.Reaper): start runs
// under the spawn lock and the returned channel delivers the child's status
// once.
type Spawner interface {
	Spawn(start func() (int, error)) (int, <-chan unix.WaitStatus, error)
}

// isVersion reports whether s is three dot-separated decimal numbers
// (MAJOR.MINOR.PATCH), the first line of `envd --version`.
func isVersion(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// probe runs `<candidate> --version` with only PATH and
// ENVD_HANDOVER_PROBE=1 in its environment and checks that it prints a
// version and a handover schema of at least need (§8.5). It returns the
// candidate's version. The child is started through the reaper, in envd's
// cgroup, in a process group of its own (killed with SIGKILL at the
// deadline and after its exit, so nothing it started lingers), with stdin
// /dev/null and stderr discarded. An execve failing with ETXTBSY (another
// spawn's child may briefly hold the file open for writing between its fork
// and its own exec) is retried.
func probe(sp Spawner, candidate, pathEnv string, need uint32) (string, error) {
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer devnull.Close()
	var pid int
	var status <-chan unix.WaitStatus
	var pr *os.File
	for attempt := 0; ; attempt++ {
		r, w, err := os.Pipe()
		if err != nil {
			return "", err
		}
		pid, status, err = sp.Spawn(func() (int, error) {
			return syscall.ForkExec(candidate, []string{candidate, "--version"}, &syscall.ProcAttr{
				Env:   []string{"PATH=" + pathEnv, EnvProbe + "=1"},
				Files: []uintptr{devnull.Fd(), w.Fd(), devnull.Fd()},
				Sys:   &syscall.SysProcAttr{Setpgid: true},
			})
		})
		w.Close()
		if err == nil {
			pr = r
			break
		}
		r.Close()
		if !errors.Is(err, unix.ETXTBSY) || attempt+1 >= probeRetries {
			return "", err // an errno from the child's execve: "exec format error"
		}
		time.Sleep(probeRetryWait)
	}
	out := make(chan []byte, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				out <- nil
			}
		}()
		out <- readBounded(pr, probeOutput)
	}()
	deadline := time.NewTimer(probeDeadline)
	defer deadline.Stop()
	var ws unix.WaitStatus
	timedOut := false
	select {
	case ws = <-status:
	case <-deadline.C:
		timedOut = true
		_ = unix.Kill(-pid, unix.SIGKILL)
		ws = <-status
	}
	// Whatever the probe left behind in its group goes too; then the pipe
	// has no writer left (or its reader gives up when it is closed).
	_ = unix.Kill(-pid, unix.SIGKILL)
	var stdout []byte
	select {
	case stdout = <-out:
	case <-time.After(time.Second):
		// A grandchild outside the group holds the pipe: stop reading.
	}
	pr.Close()
	switch {
	case timedOut:
		return "", fmt.Errorf("did not finish within %v", probeDeadline)
	case ws.Signaled():
		return "", fmt.Errorf("signal: %s", signame.Name(int(ws.Signal())))
	case ws.ExitStatus() != 0:
		return "", fmt.Errorf("exit status %d", ws.ExitStatus())
	}
	return checkProbeOutput(stdout, need)
}

// readBounded reads r to its end and keeps at most max+1 bytes (one more
// than allowed, so that the caller can tell output that was too long).
func readBounded(r io.Reader, max int) []byte {
	var buf bytes.Buffer
	chunk := make([]byte, 1024)
	for {
		n, err := r.Read(chunk)
		if room := max + 1 - buf.Len(); room > 0 {
			buf.Write(chunk[:min(n, room)])
		}
		if err != nil {
			return buf.Bytes()
		}
	}
}

// checkProbeOutput requires exactly two lines: a plain MAJOR.MINOR.PATCH
// and `handover-schema <N>` with N ≥ need.
func checkProbeOutput(b []byte, need uint32) (string, error) {
	if len(b) > probeOutput {
		return "", fmt.Errorf("more than %d bytes of output", probeOutput)
	}
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return "", errors.New("no output")
	}
	lines := strings.Split(s, "\n")
	if !isVersion(lines[0]) {
		return "", fmt.Errorf("not a version: %s", quoteShort(lines[0]))
	}
	if len(lines) < 2 {
		return "", errors.New("no handover-schema line")
	}
	if len(lines) > 2 {
		return "", fmt.Errorf("unexpected output after the handover-schema line: %s", quoteShort(lines[2]))
	}
	num, ok := strings.CutPrefix(lines[1], "handover-schema ")
	n, err := strconv.ParseUint(num, 10, 32)
	if !ok || err != nil || num == "" || num[0] == '+' {
		return "", fmt.Errorf("not a handover-schema line: %s", quoteShort(lines[1]))
	}
	if uint32(n) < need {
		return "", fmt.Errorf("reads handover schema %d, state needs %d", n, need)
	}
	return lines[0], nil
}

// quoteShort quotes a line of the candidate's output for an error message,
// cut to 64 bytes: the output is the candidate's, not ours.
func quoteShort(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return strconv.Quote(s)
}
