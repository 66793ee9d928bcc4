package vmimage

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Kernel is Debian's stock kernel prepared for a direct (PVH) boot: the
// uncompressed vmlinux and the modules the early init loads.
type Kernel struct {
	Package string // e.g. linux-image-6.1.0-56-amd64
	Release string // e.g. 6.1.0-56-amd64 (the modules directory name)
	Vmlinux string // path of the uncompressed ELF kernel
	// Modules are .ko paths in load order (every module after its
	// dependencies).
	Modules []string
}

// Package names and modules the test VM needs.
const (
	kernelMetaPackage = "linux-image-amd64"
	busyboxPackage    = "busybox-static"
)

// BootModules are what the stock kernel needs, as modules, to reach the
// devices of a QEMU microvm: the virtio-mmio transport, the network card
// (with its failover helpers), the entropy source, the keyboard that
// carries Ctrl-Alt-Del, and the root disk (virtio_blk, ext4 and the crc32c
// implementation ext4's metadata checksums ask the crypto API for, which
// no depends= line names). Their dependencies are added automatically.
var BootModules = []string{"virtio", "virtio_ring", "virtio_mmio", "failover", "net_failover", "virtio_net", "virtio_rng", "virtio_input",
	"virtio_blk", "crc32c_generic", "ext4"}

// kernelPackage asks apt which kernel image package linux-image-amd64
// currently depends on.
func kernelPackage(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", kernelMetaPackage).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends %s: %w (run apt-get update first)", kernelMetaPackage, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if name, ok := strings.CutPrefix(line, "Depends: "); ok && strings.HasPrefix(name, "linux-image-") {
			return strings.TrimSpace(name), nil
		}
	}
	return "", fmt.Errorf("apt-cache depends %s: no linux-image dependency in %q", kernelMetaPackage, out)
}

// download returns the cached .deb of pkg under dir, fetching it with
// apt-get download if it is not there yet.
func download(ctx context.Context, dir, pkg string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	find := func() string {
		m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
		sort.Strings(m)
		if len(m) == 0 {
			return ""
		}
		return m[len(m)-1]
	}
	if p := find(); p != "" {
		return p, nil
	}
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %w\n%s", pkg, err, out)
	}
	if p := find(); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("apt-get download %s left no %s_*.deb in %s", pkg, pkg, dir)
}

// extractDeb unpacks a .deb's file system tree into dst.
func extractDeb(ctx context.Context, deb, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %w\n%s", deb, err, out)
	}
	return nil
}

// PrepareKernel returns the kernel under work, downloading and unpacking it
// the first time. Only vmlinux and the needed modules are kept.
func PrepareKernel(ctx context.Context, work string) (*Kernel, error) {
	pkg, err := kernelPackage(ctx)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(work, pkg)
	wanted := strings.Join(BootModules, " ") + "\n"
	if b, err := os.ReadFile(filepath.Join(dir, "wanted")); err == nil && string(b) == wanted {
		if k, err := loadKernel(dir, pkg); err == nil {
			return k, nil
		}
	}
	deb, err := download(ctx, filepath.Join(work, "debs"), pkg)
	if err != nil {
		return nil, err
	}
	tmp := dir + ".unpack"
	_ = os.RemoveAll(tmp)
	defer os.RemoveAll(tmp)
	if err := extractDeb(ctx, deb, tmp); err != nil {
		return nil, err
	}
	bz, err := filepath.Glob(filepath.Join(tmp, "boot", "vmlinuz-*"))
	if err != nil || len(bz) != 1 {
		return nil, fmt.Errorf("%s: expected one boot/vmlinuz-*, found %v", deb, bz)
	}
	release := strings.TrimPrefix(filepath.Base(bz[0]), "vmlinuz-")
	image, err := os.ReadFile(bz[0])
	if err != nil {
		return nil, err
	}
	vmlinux, err := ExtractVmlinux(ctx, image)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bz[0], err)
	}
	order, err := ModuleClosure(filepath.Join(tmp, "lib", "modules", release), BootModules)
	if err != nil {
		return nil, err
	}
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(filepath.Join(dir, "modules"), 0o755); err != nil {
		return nil, err
	}
	var names []string
	for _, m := range order {
		b, err := os.ReadFile(m.Path)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, "modules", m.Name+".ko"), b, 0o644); err != nil {
			return nil, err
		}
		names = append(names, m.Name)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules", "load-order"), []byte(strings.Join(names, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "release"), []byte(release+"\n"), 0o644); err != nil {
		return nil, err
	}
	// The module list the cache entry was made for: a changed list
	// rebuilds it.
	if err := os.WriteFile(filepath.Join(dir, "wanted"), []byte(wanted), 0o644); err != nil {
		return nil, err
	}
	// vmlinux last: its presence marks a complete cache entry.
	if err := os.WriteFile(filepath.Join(dir, "vmlinux.tmp"), vmlinux, 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(filepath.Join(dir, "vmlinux.tmp"), filepath.Join(dir, "vmlinux")); err != nil {
		return nil, err
	}
	return loadKernel(dir, pkg)
}

func loadKernel(dir, pkg string) (*Kernel, error) {
	k := &Kernel{Package: pkg, Vmlinux: filepath.Join(dir, "vmlinux")}
	if _, err := os.Stat(k.Vmlinux); err != nil {
		return nil, err
	}
	rel, err := os.ReadFile(filepath.Join(dir, "release"))
	if err != nil {
		return nil, err
	}
	k.Release = strings.TrimSpace(string(rel))
	order, err := os.ReadFile(filepath.Join(dir, "modules", "load-order"))
	if err != nil {
		return nil, err
	}
	for _, n := range strings.Fields(string(order)) {
		k.Modules = append(k.Modules, filepath.Join(dir, "modules", n+".ko"))
	}
	return k, nil
}

// Compressed-payload signatures the x86 boot image may carry.
var (
	magicGzip = []byte{0x1f, 0x8b}
	magicXZ   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicZstd = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// ExtractVmlinux returns the uncompressed ELF kernel inside an x86 bzImage.
// It reads the payload's position from the boot protocol header (setup
// sectors at 0x1f1, payload_offset/payload_length at 0x248/0x24c, both
// relative to the protected-mode code after the setup sectors) instead of
// scanning for compression signatures, and decompresses it with the
// matching tool. Booting the ELF directly skips the in-guest decompression,
// which under TCG costs seconds.
func ExtractVmlinux(ctx context.Context, image []byte) ([]byte, error) {
	if len(image) < 0x250 || string(image[0x202:0x206]) != "HdrS" {
		return nil, errors.New("not an x86 boot image (no HdrS header)")
	}
	if v := binary.LittleEndian.Uint16(image[0x206:]); v < 0x208 {
		return nil, fmt.Errorf("boot protocol %#x too old to describe its payload", v)
	}
	setupSects := int(image[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	start := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(image[0x248:]))
	end := start + int(binary.LittleEndian.Uint32(image[0x24c:]))
	if start >= len(image) || end > len(image) || end <= start {
		return nil, fmt.Errorf("payload [%d,%d) outside the %d-byte image", start, end, len(image))
	}
	payload := image[start:end]
	var out []byte
	var err error
	switch {
	case bytes.HasPrefix(payload, magicGzip):
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(payload)); err == nil {
			zr.Multistream(false)
			out, err = io.ReadAll(zr)
		}
	case bytes.HasPrefix(payload, magicXZ):
		// The build appends the uncompressed size after the stream;
		// --single-stream stops before it.
		out, err = filter(ctx, payload, "xz", "-dc", "--single-stream")
	case bytes.HasPrefix(payload, magicZstd):
		out, err = filter(ctx, payload, "zstd", "-dcq")
	default:
		return nil, fmt.Errorf("unsupported payload compression (first bytes % x)", payload[:min(8, len(payload))])
	}
	if err != nil {
		return nil, fmt.Errorf("decompress kernel payload: %w", err)
	}
	if _, err := elf.NewFile(bytes.NewReader(out)); err != nil {
		return nil, fmt.Errorf("decompressed payload is not ELF: %w", err)
	}
	return out, nil
}

func filter(ctx context.Context, in []byte, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, stderr.Bytes())
	}
	return out, nil
}
