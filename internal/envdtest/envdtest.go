// Package envdtest starts the real envd binary for end-to-end tests: it
// builds the binary once per test process (or uses $ENVD_BIN), runs it on a
// free port, waits until /health answers, captures its log and stops it
// with SIGTERM at the end of the test.
package envdtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem/filesystemconnect"
	"github.com/envd/envd/gen/process/processconnect"
)

// RepoRoot is the directory holding go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Version is the protocol level in the VERSION file, which the build stamps.
func Version(t testing.TB) string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// Binary returns the path of an envd binary: $ENVD_BIN if set, else one
// built (once) from this checkout with the same stamping as the Makefile.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ENVD_BIN"); p != "" {
		return p
	}
	return BinaryStamped(t, "", "e2etest")
}

type stamp struct{ version, commit string }

var (
	stampedMu sync.Mutex
	stamped   = map[stamp]*stampedBuild{}
)

type stampedBuild struct {
	once sync.Once
	path string
	err  error
}

// BinaryStamped returns an envd binary built (once per test process) from
// this checkout with the given version and commit stamped, as the
// Makefile does; an empty version stamps the VERSION file's. Live-upgrade
// tests use two builds that differ in their stamps. $ENVD_BIN is not
// consulted.
func BinaryStamped(t testing.TB, version, commit string) string {
	t.Helper()
	stampedMu.Lock()
	b, ok := stamped[stamp{version, commit}]
	if !ok {
		b = &stampedBuild{}
		stamped[stamp{version, commit}] = b
	}
	stampedMu.Unlock()
	b.once.Do(func() { b.path, b.err = build(version, commit) })
	if b.err != nil {
		t.Fatal(b.err)
	}
	// Unprivileged users must be able to run it.
	_ = os.Chmod(filepath.Dir(b.path), 0o755)
	return b.path
}

func build(version, commit string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	name := "envd"
	if version != "" || commit != "e2etest" {
		name = "envd-" + version + "-" + commit
	}
	if version == "" {
		ver, err := os.ReadFile(filepath.Join(root, "VERSION"))
		if err != nil {
			return "", err
		}
		version = strings.TrimSpace(string(ver))
	}
	// One binary per checkout, user and stamp, replaced atomically, so test
	// processes running side by side share it and nothing piles up.
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("envd-e2e-bin-%d-%x", os.Getuid(), sum[:6]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp := filepath.Join(dir, fmt.Sprintf("envd-%d-%d.tmp", os.Getpid(), time.Now().UnixNano()))
	defer os.Remove(tmp)
	path := filepath.Join(dir, name)
	ldflags := "-s -w -X github.com/envd/envd/internal/version.Version=" + version +
		" -X github.com/envd/envd/internal/version.Commit=" + commit
	cmd := exec.Command("go", "build", "-o", tmp, "-ldflags", ldflags, "./cmd/envd")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return path, os.Rename(tmp, path)
}

// Options configure one envd instance.
type Options struct {
	// FC runs in Firecracker mode (no --isnotfc).
	FC bool
	// Args are extra command-line arguments.
	Args []string
	// Env is added to the environment (NAME=value).
	Env []string
	// Credential runs envd as another user (unprivileged envd).
	Credential *syscall.Credential
	// Wrap prefixes the command (e.g. unshare ...); envd's path and
	// arguments follow.
	Wrap []string
	// Dir is envd's working directory.
	Dir string
	// Host is the address the test reaches envd at (default 127.0.0.1),
	// e.g. a network namespace's address when Wrap enters one.
	Host string
	// Bin is the envd binary to run (default: Binary).
	Bin string
}

// Envd is a running envd.
type Envd struct {
	t    testing.TB
	cmd  *exec.Cmd
	Port int
	URL  string // http://<host>:<port>, host 127.0.0.1 unless Options.Host

	logMu sync.Mutex
	log   bytes.Buffer

	done    chan struct{}
	waitErr error
	stopped bool
}

type logWriter struct{ e *Envd }

func (w logWriter) Write(p []byte) (int, error) {
	w.e.logMu.Lock()
	defer w.e.logMu.Unlock()
	if w.e.log.Len() < 8<<20 {
		w.e.log.Write(p)
	}
	return len(p), nil
}

// Pdeathsig fires when the *thread* that forked the child exits, and Go
// retires threads (e.g. one a test locked and left). Every envd is therefore
// started from one goroutine locked to a thread that never exits.
var (
	spawnerOnce sync.Once
	spawnerJobs = make(chan spawnJob)
)

type spawnJob struct {
	cmd  *exec.Cmd
	done chan error
}

func startOnSpawnerThread(cmd *exec.Cmd) error {
	spawnerOnce.Do(func() {
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the test process
			for job := range spawnerJobs {
				job.done <- job.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnerJobs <- spawnJob{cmd: cmd, done: done}
	return <-done
}

// FreePort returns a TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Start runs envd with opts and waits until /health answers 200. The
// instance is stopped when the test ends; a test that expects a clean
// exit calls Stop itself and checks its result.
func Start(t testing.TB, opts Options) *Envd {
	t.Helper()
	bin := opts.Bin
	if bin == "" {
		bin = Binary(t)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		e, err := start(t, bin, opts)
		if err == nil {
			return e
		}
		lastErr = err
	}
	t.Fatalf("envd did not start: %v", lastErr)
	return nil
}

func start(t testing.TB, bin string, opts Options) (*Envd, error) {
	port := FreePort(t)
	args := []string{"--port", strconv.Itoa(port)}
	if !opts.FC {
		args = append(args, "--isnotfc")
	}
	args = append(args, opts.Args...)
	argv := append(append(append([]string{}, opts.Wrap...), bin), args...)
	host := opts.Host
	if host == "" {
		host = "127.0.0.1"
	}
	e := &Envd{t: t, Port: port, URL: "http://" + net.JoinHostPort(host, strconv.Itoa(port)), done: make(chan struct{})}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), opts.Env...)
	cmd.Stdout = logWriter{e}
	cmd.Stderr = logWriter{e}
	cmd.Dir = opts.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if opts.Credential != nil {
		cmd.SysProcAttr.Credential = opts.Credential
	}
	if err := startOnSpawnerThread(cmd); err != nil {
		return nil, err
	}
	e.cmd = cmd
	go func() {
		e.waitErr = cmd.Wait()
		close(e.done)
	}()
	t.Cleanup(func() {
		if !e.stopped {
			e.Stop()
		}
		if t.Failed() {
			t.Logf("envd log (port %d):\n%s", e.Port, e.Log())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-e.done:
			e.stopped = true
			return nil, fmt.Errorf("envd exited early (%v):\n%s", e.waitErr, e.Log())
		default:
		}
		resp, err := client.Get(e.URL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return e, nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.Kill()
	return nil, fmt.Errorf("envd not healthy within 15 s:\n%s", e.Log())
}

// Log returns everything envd wrote so far.
func (e *Envd) Log() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.log.String()
}

// Pid is envd's process id (or that of the Wrap command).
func (e *Envd) Pid() int { return e.cmd.Process.Pid }

// Signal sends sig to envd.
func (e *Envd) Signal(sig syscall.Signal) { _ = e.cmd.Process.Signal(sig) }

// Stop sends SIGTERM and waits up to 15 s; it returns the exit error (nil
// for exit code 0) and kills envd if it did not stop.
func (e *Envd) Stop() error {
	e.stopped = true
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
		return e.waitErr
	case <-time.After(15 * time.Second):
		e.Kill()
		return fmt.Errorf("envd did not stop within 15 s of SIGTERM")
	}
}

// Kill ends envd and its process group at once.
func (e *Envd) Kill() {
	e.stopped = true
	_ = syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
	<-e.done
}

// Done is closed when envd has exited.
func (e *Envd) Done() <-chan struct{} { return e.done }

// HTTP is a plain client for envd (no overall timeout: streams).
func (e *Envd) HTTP() *http.Client { return http.DefaultClient }

// Process returns a Connect client for process.Process with the given
// options (default: binary proto codec, like the Wrenn host).
func (e *Envd) Process(opts ...connect.ClientOption) processconnect.ProcessClient {
	return processconnect.NewProcessClient(http.DefaultClient, e.URL, opts...)
}

// Filesystem returns a Connect client for filesystem.Filesystem.
func (e *Envd) Filesystem(opts ...connect.ClientOption) filesystemconnect.FilesystemClient {
	return filesystemconnect.NewFilesystemClient(http.DefaultClient, e.URL, opts...)
}

// WaitLog waits until envd's log contains s.
func (e *Envd) WaitLog(ctx context.Context, s string) error {
	for {
		if strings.Contains(e.Log(), s) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("log never contained %q", s)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
