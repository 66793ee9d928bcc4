package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// daemon is an envd started by the bench.
type daemon struct {
	cmd     *exec.Cmd
	url     string
	startup time.Duration // exec to first 200 from /health
	done    chan struct{}
	log     *boundedBuffer
}

// startDaemon runs bin with --isnotfc on a free port and waits for the
// first healthy /health, polling every millisecond so the figure resolves
// startup, not the polling interval.
func startDaemon(ctx context.Context, bin string) (*daemon, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := &daemon{url: "http://127.0.0.1:" + strconv.Itoa(port), done: make(chan struct{}), log: &boundedBuffer{max: 1 << 20}}
	d.cmd = exec.Command(bin, "--isnotfc", "--port", strconv.Itoa(port))
	d.cmd.Stdout = d.log
	d.cmd.Stderr = d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	client := &http.Client{Timeout: 500 * time.Millisecond}
	start := time.Now()
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		_ = d.cmd.Wait()
		close(d.done)
	}()
	deadline := start.Add(15 * time.Second)
	for {
		resp, err := client.Get(d.url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				d.startup = time.Since(start)
				return d, nil
			}
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("envd exited during startup:\n%s", d.log.String())
		case <-ctx.Done():
			_ = d.stop()
			return nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			_ = d.stop()
			return nil, fmt.Errorf("envd not healthy within 15 s:\n%s", d.log.String())
		}
		time.Sleep(time.Millisecond)
	}
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// stop sends SIGTERM and waits (SIGKILL to the group after 10 s).
func (d *daemon) stop() error {
	select {
	case <-d.done:
		return nil
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
		return fmt.Errorf("envd did not stop within 10 s of SIGTERM")
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// rssKiB reads VmRSS of pid from /proc.
func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// boundedBuffer keeps the first max bytes written (the daemon's log, shown
// only when it fails to start).
type boundedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room > 0 {
		if len(p) > room {
			b.buf.Write(p[:room])
		} else {
			b.buf.Write(p)
		}
	}
	return len(p), nil
}

func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
