package reaper

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxHelperOutput bounds what Run keeps of a helper's combined output.
const maxHelperOutput = 64 << 10

// Run starts a helper program (argv[0] looked up in PATH) with env, waits
// for it through the reaper and returns its status and combined output
// (bounded). When ctx ends first the helper's process group is killed and
// ctx's error is returned together with the status.
func (r *Reaper) Run(ctx context.Context, argv []string, env []string) (unix.WaitStatus, []byte, error) {
	if len(argv) == 0 {
		return 0, nil, fmt.Errorf("run: empty command")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return 0, nil, fmt.Errorf("run %s: %w", argv[0], err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, nil, fmt.Errorf("run %s: %w", argv[0], err)
	}
	defer devnull.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return 0, nil, fmt.Errorf("run %s: %w", argv[0], err)
	}
	defer pr.Close()
	pid, status, err := r.Spawn(func() (int, error) {
		return syscall.ForkExec(path, argv, &syscall.ProcAttr{
			Env:   env,
			Files: []uintptr{devnull.Fd(), pw.Fd(), pw.Fd()},
			Sys:   &syscall.SysProcAttr{Setpgid: true},
		})
	})
	pw.Close()
	if err != nil {
		return 0, nil, fmt.Errorf("run %s: %w", argv[0], err)
	}
	outc := make(chan []byte, 1)
	go func() {
		var buf bytes.Buffer
		chunk := make([]byte, 4096)
		for {
			n, err := pr.Read(chunk)
			if buf.Len() < maxHelperOutput {
				buf.Write(chunk[:min(n, maxHelperOutput-buf.Len())])
			}
			if err != nil {
				outc <- buf.Bytes()
				return
			}
		}
	}()
	select {
	case ws := <-status:
		return ws, <-outc, nil
	case <-ctx.Done():
		_ = unix.Kill(-pid, unix.SIGKILL)
		ws := <-status
		return ws, <-outc, ctx.Err()
	}
}
