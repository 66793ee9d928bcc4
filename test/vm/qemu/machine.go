// Package qemu runs a QEMU "microvm" guest (virtio-mmio, the device model
// Firecracker uses) under TCG and drives it over QMP: boot, snapshot to a
// file (stop + migrate), restore from it (-incoming, wait for "paused",
// cont), keys, and termination. It stands in for Firecracker where /dev/kvm
// is not available.
package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// binary is the QEMU system emulator the machines run in.
const binary = "qemu-system-x86_64"

// GuestPort is envd's port inside the guest.
const GuestPort = 49983

// Network layout of QEMU's user-mode network as the guest's early init
// configures it.
const (
	GuestAddr   = "10.0.2.15"
	GatewayAddr = "10.0.2.2"
	// MMDSAddr is where the guest reaches the host's fake metadata
	// service: a guestfwd rule, the only destination that restrict=on
	// lets through besides hostfwd replies.
	MMDSAddr = "10.0.2.100:80"
)

// Spec describes one QEMU instance.
type Spec struct {
	Name      string // for file names and messages
	Dir       string // QMP socket, console log and QEMU's own log go here
	Kernel    string // uncompressed vmlinux (PVH boot)
	Initrd    string
	Cmdline   string
	MemoryMiB int
	CPUs      int
	// HostPort on 127.0.0.1 is forwarded to the guest's envd port.
	HostPort int
	// MMDSCommand is run by QEMU for every guest connection to MMDSAddr,
	// with the connection as its stdin and stdout.
	MMDSCommand []string
	// Incoming restores from this snapshot file instead of booting.
	Incoming string
	// Disk, when set, is a raw image attached as the guest's first
	// virtio block device (/dev/vda). A restore must get the disk as it
	// was when its snapshot was taken; two machines never share one.
	Disk string
}

// Machine is a running QEMU process.
type Machine struct {
	Spec    Spec
	Console string // serial console log (the guest's stdout, envd's log)
	QEMULog string
	QMP     *QMP
	Started time.Time

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	killed  atomic.Bool
}

// Args are QEMU's arguments for s.
func (s Spec) Args(console string, qmpSock string) []string {
	netdev := "user,id=net0,restrict=on" +
		",hostfwd=tcp:127.0.0.1:" + strconv.Itoa(s.HostPort) + "-:" + strconv.Itoa(GuestPort)
	if len(s.MMDSCommand) > 0 {
		// QEMU splits the option at commas (a literal comma is doubled);
		// libslirp parses the command like a shell word list.
		netdev += ",guestfwd=tcp:" + MMDSAddr + "-cmd:" + strings.ReplaceAll(strings.Join(s.MMDSCommand, " "), ",", ",,")
	}
	args := []string{
		// ACPI on: Debian's kernel finds the virtio-mmio devices only
		// in the ACPI tables (it lacks VIRTIO_MMIO_CMDLINE_DEVICES).
		"-machine", "microvm,x-option-roms=off,rtc=on,isa-serial=on,acpi=on",
		// Modern (version 2) virtio-mmio, as Firecracker has: QEMU
		// defaults to the legacy layout, which virtio_input rejects.
		"-global", "virtio-mmio.force-legacy=false",
		"-cpu", "max",
		"-m", strconv.Itoa(s.MemoryMiB),
		"-smp", strconv.Itoa(max(1, s.CPUs)),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", s.Kernel,
		"-initrd", s.Initrd,
		"-append", s.Cmdline,
		"-netdev", netdev,
		"-device", "virtio-net-device,netdev=net0",
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-device,rng=rng0",
		// Carries Ctrl-Alt-Del (send-key) to the guest: microvm has no
		// i8042, and the kernel's keyboard handler turns the chord into
		// SIGINT for init once envd has disabled the immediate reboot.
		"-device", "virtio-keyboard-device",
		"-chardev", "file,id=console,path=" + console,
		"-serial", "chardev:console",
		"-qmp", "unix:" + qmpSock + ",server=on,wait=off",
	}
	if s.Disk != "" {
		// QEMU splits -drive at commas: a literal comma is doubled.
		args = append(args,
			"-drive", "if=none,id=disk0,format=raw,cache=writeback,file="+strings.ReplaceAll(s.Disk, ",", ",,"),
			"-device", "virtio-blk-device,drive=disk0")
	}
	if s.Incoming != "" {
		args = append(args, "-incoming", "exec:cat "+shellQuote(s.Incoming))
	}
	return args
}

// Start launches QEMU and connects to its QMP socket. A restore (Incoming
// set) is left paused until Resume.
func Start(ctx context.Context, s Spec) (*Machine, error) {
	if _, err := exec.LookPath(binary); err != nil {
		return nil, fmt.Errorf("%s not found (Debian package qemu-system-x86): %w", binary, err)
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return nil, err
	}
	m := &Machine{
		Spec:    s,
		Console: filepath.Join(s.Dir, s.Name+".console.log"),
		QEMULog: filepath.Join(s.Dir, s.Name+".qemu.log"),
		exited:  make(chan struct{}),
	}
	// A short socket path: unix socket paths are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("", "vmqmp-")
	if err != nil {
		return nil, err
	}
	qmpSock := filepath.Join(sockDir, "qmp.sock")
	logf, err := os.Create(m.QEMULog)
	if err != nil {
		return nil, err
	}
	m.cmd = exec.Command(binary, s.Args(m.Console, qmpSock)...)
	m.cmd.Stdout = logf
	m.cmd.Stderr = logf
	// Own process group: Kill also ends the migration helpers (cat) and
	// the MMDS relays QEMU spawned. Pdeathsig: no VM outlives the test.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	m.Started = time.Now()
	if err := m.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	go func() {
		m.waitErr = m.cmd.Wait()
		logf.Close()
		os.RemoveAll(sockDir)
		close(m.exited)
	}()
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	type res struct {
		q   *QMP
		err error
	}
	ch := make(chan res, 1)
	go func() {
		q, err := DialQMP(qctx, qmpSock)
		ch <- res{q, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			m.Kill()
			return nil, fmt.Errorf("%s: %w\n%s", s.Name, r.err, m.Log())
		}
		m.QMP = r.q
	case <-m.exited:
		cancel()
		<-ch
		return nil, fmt.Errorf("%s: qemu exited at start (%v):\n%s", s.Name, m.waitErr, m.Log())
	}
	return m, nil
}

// Log is QEMU's own stdout/stderr so far.
func (m *Machine) Log() string {
	b, _ := os.ReadFile(m.QEMULog)
	return string(b)
}

// ConsoleText is the guest's serial console output so far.
func (m *Machine) ConsoleText() string {
	b, _ := os.ReadFile(m.Console)
	return string(b)
}

// Exited is closed when the QEMU process has ended.
func (m *Machine) Exited() <-chan struct{} { return m.exited }

// ExitErr is QEMU's exit status (valid after Exited is closed).
func (m *Machine) ExitErr() error { return m.waitErr }

// Wait waits for QEMU to exit on its own.
func (m *Machine) Wait(ctx context.Context) error {
	select {
	case <-m.exited:
		return m.waitErr
	case <-ctx.Done():
		return fmt.Errorf("%s: qemu still running: %w", m.Spec.Name, ctx.Err())
	}
}

// Kill ends QEMU and its helpers at once and waits for the exit, so the
// host port it forwarded is free again when Kill returns.
func (m *Machine) Kill() {
	select {
	case <-m.exited:
		return
	default:
	}
	m.killed.Store(true)
	_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
	<-m.exited
	m.QMP.Close()
}

// Killed reports whether Kill ended the machine (rather than the guest or
// a crash).
func (m *Machine) Killed() bool { return m.killed.Load() }

// Snapshot pauses the guest and writes its complete state (RAM and
// devices) to file, like Firecracker's pause + full snapshot. The guest
// stays paused afterwards (status "postmigrate").
func (m *Machine) Snapshot(ctx context.Context, file string) error {
	if _, err := m.QMP.Execute(ctx, "stop", nil); err != nil {
		return err
	}
	// QEMU 7.2 limits migration to 32 MiB/s by default; a local file
	// needs no throttle.
	if _, err := m.QMP.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}); err != nil {
		return err
	}
	if _, err := m.QMP.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > " + shellQuote(file)}); err != nil {
		return err
	}
	for {
		raw, err := m.QMP.Execute(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("%s: %w: %s %s", m.Spec.Name, errMigrationFailed, st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: migration status %q: %w", m.Spec.Name, st.Status, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Resume starts the vCPUs of a restored machine once the incoming
// migration has been loaded completely: while the state is "inmigrate",
// cont would be refused or race the load.
func (m *Machine) Resume(ctx context.Context) error {
	if err := m.QMP.WaitStatus(ctx, "paused"); err != nil {
		return fmt.Errorf("%s: %w\n%s", m.Spec.Name, err, m.Log())
	}
	_, err := m.QMP.Execute(ctx, "cont", nil)
	return err
}

// CtrlAltDel presses Ctrl-Alt-Del on the guest's keyboard (what
// Firecracker's SendCtrlAltDel action does).
func (m *Machine) CtrlAltDel(ctx context.Context) error {
	keys := []map[string]string{
		{"type": "qcode", "data": "ctrl"},
		{"type": "qcode", "data": "alt"},
		{"type": "qcode", "data": "delete"},
	}
	_, err := m.QMP.Execute(ctx, "send-key", map[string]any{"keys": keys})
	return err
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
