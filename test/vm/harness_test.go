//go:build vm

package vm

import (
	"bufio"
	"context"
	"fmt"
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

func TestMain(m *testing.M) {
	if addr := os.Getenv(RelayEnv); addr != "" {
		os.Exit(Relay(addr))
	}
	os.Exit(m.Run())
}

// Guest sizing: what a small sandbox has.
const (
	guestMemoryMiB = 512
	guestCPUs      = 2
)

var (
	imageOnce sync.Once
	imageVal  *vmimage.Image
	imageErr  error
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

// image builds (once per test binary) the kernel and an initramfs holding
// the envd under test.
func image(t testing.TB) *vmimage.Image {
	t.Helper()
	imageOnce.Do(func() {
		work := workDir(t)
		envd := envdtest.Binary(t)
		root, err := envdtest.RepoRoot()
		if err != nil {
			imageErr = err
			return
		}
		memhog := filepath.Join(work, "memhog")
		cmd := exec.Command("go", "build", "-o", memhog, "./test/vm/guest/memhog")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			imageErr = fmt.Errorf("build memhog: %v\n%s", err, out)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		imageVal, imageErr = vmimage.Build(ctx, vmimage.Options{
			Work:     work,
			Envd:     envd,
			Binaries: map[string]string{"usr/local/bin/memhog": memhog},
		})
	})
	if imageErr != nil {
		t.Fatalf("build VM image: %v", imageErr)
	}
	return imageVal
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
}

func newFakeMMDS(t testing.TB, doc map[string]any) *fakeMMDS {
	s := mmdstest.New(doc)
	t.Cleanup(s.Close)
	return &fakeMMDS{s}
}

// relayCommand is the guestfwd command that connects a guest connection to
// the fake: this test binary in relay mode.
func (f *fakeMMDS) relayCommand(t testing.TB) []string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{"env", RelayEnv + "=" + f.HostPort(), exe}
}

// vmDir holds the QMP sockets, console logs and snapshots of one test.
func vmDir(t testing.TB) string {
	d := filepath.Join(workDir(t), "run")
	_ = os.RemoveAll(d)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
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

// guest is one running VM and how to reach envd in it.
type guest struct {
	t    testing.TB
	m    *qemu.Machine
	port int
	url  string
}

func (g *guest) spec(t testing.TB, name, dir string, mm *fakeMMDS, incoming string) qemu.Spec {
	img := image(t)
	return qemu.Spec{
		Name:        name,
		Dir:         dir,
		Kernel:      img.Kernel.Vmlinux,
		Initrd:      img.Initrd,
		Cmdline:     kernelCmdline(t),
		MemoryMiB:   guestMemoryMiB,
		CPUs:        guestCPUs,
		HostPort:    g.port,
		MMDSCommand: mm.relayCommand(t),
		Incoming:    incoming,
	}
}

// start launches QEMU for g (a cold boot, or a restore when incoming is set).
func startGuest(t testing.TB, name, dir string, port int, mm *fakeMMDS, incoming string) *guest {
	t.Helper()
	g := &guest{t: t, port: port, url: "http://127.0.0.1:" + strconv.Itoa(port)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := qemu.Start(ctx, g.spec(t, name, dir, mm, incoming))
	if err != nil {
		t.Fatal(err)
	}
	g.m = m
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s console (last 8 KiB):\n%s", name, tail(m.ConsoleText(), 8<<10))
			t.Logf("%s qemu log:\n%s", name, tail(m.Log(), 4<<10))
		}
		m.Kill()
	})
	return g
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
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
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

func TestBoot(t *testing.T) {
	dir := vmDir(t)
	mm := newFakeMMDS(t, map[string]any{"instanceID": "sbx-1", "envID": "tpl-1"})
	t0 := time.Now()
	g := startGuest(t, "boot", dir, freePort(t), mm, "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := g.waitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("boot to /health: %v", time.Since(t0))
	t.Logf("console:\n%s", g.m.ConsoleText())
}

func TestSnapshotOnce(t *testing.T) {
	dir := vmDir(t)
	mm := newFakeMMDS(t, map[string]any{"instanceID": "sbx-1", "envID": "tpl-1"})
	port := freePort(t)
	g := startGuest(t, "boot", dir, port, mm, "")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := g.waitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(g.url+"/snapshot/prepare", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	t.Logf("prepare: %d", resp.StatusCode)
	snap := filepath.Join(dir, "snap")
	t0 := time.Now()
	if err := g.m.Snapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(snap)
	t.Logf("snapshot: %v, %d bytes", time.Since(t0), st.Size())
	g.m.Kill()
	for i := 0; i < 3; i++ {
		t1 := time.Now()
		g2 := startGuest(t, fmt.Sprintf("restore%d", i), dir, port, mm, snap)
		if err := g2.m.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		t2 := time.Now()
		if err := g2.waitHealthy(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("restore: resume %v, first answer %v", t2.Sub(t1), time.Since(t1))
		t.Logf("console:\n%s", g2.m.ConsoleText())
		g2.m.Kill()
	}
}
