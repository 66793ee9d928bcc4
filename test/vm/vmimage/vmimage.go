// Package vmimage builds what the envd microVM test boots: Debian's stock
// kernel as an uncompressed vmlinux, and an initramfs that is the whole root
// file system — busybox, bash with its libraries, the virtio modules, a
// tiny early init that loads them and configures eth0, and envd, which the
// early init execs so that envd is PID 1.
//
// Downloads (Debian packages, fetched with apt-get download) and the
// extracted kernel are cached under the work directory; the initramfs is
// rebuilt each time because it contains the envd binary under test.
package vmimage

import (
	"bufio"
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

//go:embed init.sh
var earlyInit []byte

// GuestUser is the unprivileged account in the image (uid/gid 1000).
const GuestUser = "user"

// Options say what goes into the image.
type Options struct {
	// Work is the cache directory (test/vm/work).
	Work string
	// Envd is the envd binary to install as /usr/local/bin/envd.
	Envd string
	// Binaries are extra static programs: guest path → host path.
	Binaries map[string]string
}

// Image is a bootable kernel, its initramfs and the root disk.
type Image struct {
	Kernel *Kernel
	Initrd string // uncompressed newc cpio
	// Disk is an ext4 filesystem image (raw) holding the same tree: the
	// early init mounts it and switches to it, so that envd's "/" is a
	// real disk filesystem (one /fsfreeze can freeze; tmpfs cannot).
	Disk string
}

// DiskSize is the root disk's size (a sparse file).
const DiskSize = 256 << 20

// Build prepares the kernel (cached) and writes a fresh initramfs into
// Work/initramfs.cpio.
func Build(ctx context.Context, opts Options) (*Image, error) {
	if err := os.MkdirAll(opts.Work, 0o755); err != nil {
		return nil, err
	}
	k, err := PrepareKernel(ctx, opts.Work)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	busybox, err := prepareBusybox(ctx, opts.Work)
	if err != nil {
		return nil, fmt.Errorf("busybox: %w", err)
	}
	a := NewArchive()
	if err := populate(ctx, a, k, busybox, opts); err != nil {
		return nil, err
	}
	initrd := filepath.Join(opts.Work, "initramfs.cpio")
	if err := a.WriteFile(initrd); err != nil {
		return nil, err
	}
	disk := filepath.Join(opts.Work, "rootfs.ext4")
	if err := buildDisk(ctx, a, disk); err != nil {
		return nil, fmt.Errorf("root disk: %w", err)
	}
	return &Image{Kernel: k, Initrd: initrd, Disk: disk}, nil
}

// buildDisk writes the archive's tree into a fresh ext4 image at dst
// (mkfs.ext4 -d, e2fsprogs ≥ 1.43), through a staging directory.
func buildDisk(ctx context.Context, a *Archive, dst string) error {
	stage := dst + ".tree"
	_ = os.RemoveAll(stage)
	defer os.RemoveAll(stage)
	if err := a.WriteDir(stage); err != nil {
		return err
	}
	tmp := dst + ".tmp"
	_ = os.Remove(tmp)
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	f.Close()
	if err := os.Truncate(tmp, DiskSize); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "envd-root", "-d", stage, tmp).CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("mkfs.ext4: %w: %s", err, out)
	}
	return os.Rename(tmp, dst)
}

// prepareBusybox returns the path of a cached static busybox binary.
func prepareBusybox(ctx context.Context, work string) (string, error) {
	dst := filepath.Join(work, "busybox")
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	deb, err := download(ctx, filepath.Join(work, "debs"), busyboxPackage)
	if err != nil {
		return "", err
	}
	tmp := filepath.Join(work, "busybox.unpack")
	_ = os.RemoveAll(tmp)
	defer os.RemoveAll(tmp)
	if err := extractDeb(ctx, deb, tmp); err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(tmp, "bin", "busybox"))
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(dst+".tmp", b, 0o755); err != nil {
		return "", err
	}
	return dst, os.Rename(dst+".tmp", dst)
}

func populate(ctx context.Context, a *Archive, k *Kernel, busybox string, opts Options) error {
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "etc", "usr/local/bin", "var/tmp", "mnt", "newroot"} {
		a.Dir(d, 0o755, 0, 0)
	}
	a.Dir("tmp", 0o777|os.ModeSticky, 0, 0)
	a.Dir("root", 0o700, 0, 0)
	a.Dir("home/"+GuestUser, 0o755, 1000, 1000)
	// The kernel opens /dev/console for init's stdin/stdout/stderr before
	// any devtmpfs exists; without the node init runs with no descriptors.
	a.CharDev("dev/console", 0o600, 5, 1)
	a.File("init", earlyInit, 0o755)

	a.File("etc/passwd", []byte("root:x:0:0:root:/root:/bin/bash\n"+
		GuestUser+":x:1000:1000:Sandbox user:/home/"+GuestUser+":/bin/bash\n"), 0o644)
	a.File("etc/group", []byte("root:x:0:\ntty:x:5:\nusers:x:100:"+GuestUser+"\n"+GuestUser+":x:1000:\n"), 0o644)
	a.File("etc/hosts", []byte("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"), 0o644)
	a.File("etc/hostname", []byte("envd-vm\n"), 0o644)

	// busybox provides /bin/sh and the usual tools; each applet is a symlink.
	a.HostFile("bin/busybox", busybox, 0o755)
	out, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if p == "linuxrc" || p == "init" || p == "bin/busybox" {
			continue
		}
		a.Symlink(p, "/bin/busybox")
	}

	// bash from this (Debian) host, with its shared libraries: the SDKs and
	// the Wrenn host start commands as /bin/bash -l -c.
	if err := addDynamic(ctx, a, "/bin/bash", "bin/bash"); err != nil {
		return err
	}

	a.HostFile("usr/local/bin/envd", opts.Envd, 0o755)
	for guest, host := range opts.Binaries {
		a.HostFile(guest, host, 0o755)
	}

	var order []string
	for _, m := range k.Modules {
		name := ModuleName(m)
		a.HostFile("lib/modules/"+name+".ko", m, 0o644)
		order = append(order, name)
	}
	a.File("lib/modules/load-order", []byte(strings.Join(order, "\n")+"\n"), 0o644)
	return nil
}

// addDynamic copies a dynamically linked host program and the libraries
// ldd resolves for it, each at its host path.
func addDynamic(ctx context.Context, a *Archive, hostPath, guestPath string) error {
	out, err := exec.CommandContext(ctx, "ldd", hostPath).Output()
	if err != nil {
		return fmt.Errorf("ldd %s: %w", hostPath, err)
	}
	a.HostFile(guestPath, hostPath, 0o755)
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
		// "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
		f := strings.Fields(sc.Text())
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>":
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0]
		}
		if lib == "" || !strings.HasPrefix(lib, "/") {
			continue
		}
		real, err := filepath.EvalSymlinks(lib)
		if err != nil {
			return fmt.Errorf("resolve %s: %w", lib, err)
		}
		a.HostFile(path.Clean(lib), real, 0o755)
	}
	return sc.Err()
}
