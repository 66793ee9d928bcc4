//go:build vm

package vm

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envd/envd/internal/envdtest"
	"github.com/envd/envd/internal/mmds/mmdstest"
	"github.com/envd/envd/test/vm/qemu"
	"github.com/envd/envd/test/vm/vmimage"
)

// relayEnv names the environment variable that turns the test binary into
// the MMDS relay: QEMU's guestfwd "cmd:" rule runs one process per guest
// connection with the connection on stdin/stdout, and the relay joins it to
// the host-side fake metadata server at the address in this variable.
const relayEnv = "ENVD_VM_MMDS_RELAY"

// relay copies between stdin/stdout and a TCP connection to addr until both
// directions end, passing half-closes on. It returns the exit code.
func relay(addr string) int {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return 1
	}
	defer conn.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(conn, os.Stdin)
		_ = conn.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(os.Stdout, conn)
	_ = os.Stdout.Close()
	wg.Wait()
	return 0
}

func TestMain(m *testing.M) {
	if addr := os.Getenv(relayEnv); addr != "" {
		os.Exit(relay(addr))
	}
	os.Exit(m.Run())
}

// Guest sizing: what a small sandbox has.
const (
	guestMemoryMiB = 512
	guestCPUs      = 2
)

// workDir is the git-ignored cache of downloads and builds.
func workDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("ENVD_VM_WORK"); d != "" {
		return d
	}
	root, err := envdtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "test", "vm", "work")
}

// buildImage builds the kernel (cached) and an initramfs holding the envd
// under test and the guest helpers.
func buildImage(t testing.TB) *vmimage.Image {
	t.Helper()
	work := workDir(t)
	envd := envdtest.Binary(t)
	root, err := envdtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	memhog := filepath.Join(work, "memhog")
	cmd := exec.Command("go", "build", "-o", memhog, "./test/vm/guest/memhog")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build memhog: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := vmimage.Build(ctx, vmimage.Options{
		Work:     work,
		Envd:     envd,
		Binaries: map[string]string{"usr/local/bin/memhog": memhog},
	})
	if err != nil {
		t.Fatalf("build VM image: %v", err)
	}
	return img
}

// hostTSCkHz is the host's TSC frequency in kHz, for tsc_early_khz: under
// TCG the guest reads the host's TSC, and without the hint the kernel's
// early TSC calibration against the emulated timers hangs in about half the
// boots.
func hostTSCkHz(t testing.TB) int {
	t.Helper()
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil && mhz > 0 {
				return int(mhz * 1000)
			}
		}
	}
	t.Fatal("no 'cpu MHz' in /proc/cpuinfo")
	return 0
}

// kernelCmdline is what the guest kernel gets. Words the kernel does not
// know (ENVD_MMDS_ADDRESS=…) reach init, and through it envd, as
// environment variables.
func kernelCmdline(t testing.TB) string {
	return strings.Join([]string{
		"console=ttyS0",
		"reboot=k", "panic=1", "pci=off", "nomodeset", "quiet",
		// Under TCG every vCPU reads the host TSC, so it is synchronised
		// even though the kernel's warp check cannot prove it; without
		// this the clock source falls back to jiffies (4 ms steps).
		"tsc=reliable",
		"tsc_early_khz=" + strconv.Itoa(hostTSCkHz(t)),
		// Freed pages are zeroed, so the snapshot (which skips zero
		// pages) stays small after a memory-hungry process ended.
		"init_on_free=1",
		"random.trust_cpu=on",
		"ENVD_MMDS_ADDRESS=" + qemu.MMDSAddr,
	}, " ")
}

// fakeMMDS is the host side of the guest's metadata service.
type fakeMMDS struct {
	*mmdstest.Server
	// relay is the guestfwd command that joins a guest connection to the
	// fake: this test binary in relay mode.
	relay []string
}

func newFakeMMDS(t testing.TB, doc map[string]any) *fakeMMDS {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := mmdstest.New(doc)
	t.Cleanup(s.Close)
	return &fakeMMDS{Server: s, relay: []string{"env", relayEnv + "=" + s.HostPort(), exe}}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// fleet starts the VMs of one test: all boot the same image with the same
// kernel command line, keep their files in one directory, and live until
// the owning test ends (or until they are killed).
type fleet struct {
	owner   testing.TB
	dir     string // QMP sockets live elsewhere; consoles, logs, snapshots here
	img     *vmimage.Image
	cmdline string
}

func newFleet(t testing.TB) *fleet {
	dir := filepath.Join(workDir(t), "run")
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &fleet{owner: t, dir: dir, img: buildImage(t), cmdline: kernelCmdline(t)}
}

// guest is one running VM and how to reach envd in it.
type guest struct {
	m    *qemu.Machine
	port int
	url  string
	// lastHealth is how long the /health request that first succeeded
	// took (after a restore: the one that ran envd's recovery).
	lastHealth time.Duration
}

// start launches QEMU (a cold boot, or a restore when incoming is set)
// with 127.0.0.1:port forwarded to envd, mm as its metadata service and
// disk as its root disk (for a restore: the disk as its snapshot left it).
// It may be called from any goroutine.
func (f *fleet) start(name string, port int, mm *fakeMMDS, incoming, disk string) (*guest, error) {
	g := &guest{port: port, url: "http://127.0.0.1:" + strconv.Itoa(port)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := qemu.Start(ctx, qemu.Spec{
		Name:        name,
		Dir:         f.dir,
		Kernel:      f.img.Kernel.Vmlinux,
		Initrd:      f.img.Initrd,
		Cmdline:     f.cmdline,
		MemoryMiB:   guestMemoryMiB,
		CPUs:        guestCPUs,
		HostPort:    port,
		MMDSCommand: mm.relay,
		Incoming:    incoming,
		Disk:        disk,
	})
	if err != nil {
		return nil, err
	}
	g.m = m
	f.owner.Cleanup(func() {
		// Machines the test itself killed (past snapshot cycles) are not
		// interesting; the live ones and those that ended by themselves are.
		if f.owner.Failed() && !m.Killed() {
			f.owner.Logf("%s console (last 8 KiB):\n%s", name, tail(m.ConsoleText(), 8<<10))
			f.owner.Logf("%s qemu log:\n%s", name, tail(m.Log(), 4<<10))
		}
		m.Kill()
	})
	return g, nil
}

// copyDisk copies a root disk image (sparse) for a machine of its own: a
// disk is never shared by two running machines.
func copyDisk(src, dst string) error {
	if out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("copy disk %s: %v %s", src, err, out)
	}
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// waitHealthy polls GET /health every 20 ms (on fresh connections) until
// it answers 204 or 200, and returns when it did.
func (g *guest) waitHealthy(ctx context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.url+"/health", nil)
		t0 := time.Now()
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				g.lastHealth = time.Since(t0)
				return nil
			}
			last = fmt.Errorf("status %d", resp.StatusCode)
		} else {
			last = err
		}
		select {
		case <-g.m.Exited():
			return fmt.Errorf("qemu exited (%v) while waiting for /health", g.m.ExitErr())
		case <-ctx.Done():
			return fmt.Errorf("/health not answering: %v", last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
