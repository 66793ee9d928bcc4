package vmimage

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// cpioEntry is one record read back from a newc archive.
type cpioEntry struct {
	name       string
	mode       uint32
	uid, gid   uint32
	rmaj, rmin uint32
	data       []byte
}

// readNewc parses a newc archive the way the kernel's initramfs unpacker
// does, checking magic, alignment and the trailer.
func readNewc(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+6+8*i+8]), 16, 32)
		if err != nil {
			t.Fatalf("offset %d field %d: %v", off, i, err)
		}
		return uint32(v)
	}
	for {
		if off%4 != 0 {
			t.Fatalf("record at %d not 4-aligned", off)
		}
		if string(b[off:off+6]) != "070701" {
			t.Fatalf("bad magic at %d: %q", off, b[off:off+6])
		}
		e := cpioEntry{mode: field(1), uid: field(2), gid: field(3), rmaj: field(9), rmin: field(10)}
		size, nameSize := int(field(6)), int(field(11))
		nameStart := off + 110
		e.name = string(b[nameStart : nameStart+nameSize-1])
		if b[nameStart+nameSize-1] != 0 {
			t.Fatalf("%s: name not NUL-terminated", e.name)
		}
		dataStart := (nameStart + nameSize + 3) &^ 3
		e.data = b[dataStart : dataStart+size]
		off = (dataStart + size + 3) &^ 3
		if e.name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func TestArchive_WritesNewcTheKernelCanUnpack(t *testing.T) {
	host := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(host, []byte("#!/bin/sh\necho hi\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := NewArchive()
	a.File("etc/passwd", []byte("root:x:0:0::/root:/bin/sh\n"), 0o644)
	a.HostFile("/usr/local/bin/prog", host, 0o755)
	a.Symlink("bin/sh", "/bin/busybox")
	a.CharDev("dev/console", 0o600, 5, 1)
	a.Dir("tmp", 0o777|os.ModeSticky, 0, 0)
	a.Dir("home/user", 0o755, 1000, 1000)
	var buf bytes.Buffer
	if err := a.Write(&buf); err != nil {
		t.Fatal(err)
	}
	entries := readNewc(t, buf.Bytes())
	seen := map[string]cpioEntry{}
	for _, e := range entries {
		// A parent directory must come before what it contains.
		if dir := filepath.Dir(e.name); dir != "." {
			if _, ok := seen[dir]; !ok {
				t.Errorf("%s comes before its directory %s", e.name, dir)
			}
		}
		seen[e.name] = e
	}
	check := func(name string, mode uint32, data string) cpioEntry {
		t.Helper()
		e, ok := seen[name]
		if !ok {
			t.Fatalf("%s missing; have %v", name, seen)
		}
		if e.mode != mode || string(e.data) != data {
			t.Errorf("%s: mode %o data %q, want %o %q", name, e.mode, e.data, mode, data)
		}
		return e
	}
	check("etc", sIFDIR|0o755, "")
	check("etc/passwd", sIFREG|0o644, "root:x:0:0::/root:/bin/sh\n")
	check("usr/local/bin/prog", sIFREG|0o755, "#!/bin/sh\necho hi\n")
	check("bin/sh", sIFLNK|0o777, "/bin/busybox")
	check("tmp", sIFDIR|0o1777, "")
	if e := check("dev/console", sIFCHR|0o600, ""); e.rmaj != 5 || e.rmin != 1 {
		t.Errorf("dev/console is %d:%d, want 5:1", e.rmaj, e.rmin)
	}
	if e := check("home/user", sIFDIR|0o755, ""); e.uid != 1000 || e.gid != 1000 {
		t.Errorf("home/user owned by %d:%d", e.uid, e.gid)
	}
}

func TestArchive_MissingHostFileFailsWithoutLeavingOutput(t *testing.T) {
	dir := t.TempDir()
	a := NewArchive()
	a.HostFile("bin/x", filepath.Join(dir, "absent"), 0o755)
	dst := filepath.Join(dir, "initramfs.cpio")
	if err := a.WriteFile(dst); err == nil {
		t.Fatal("no error for a missing host file")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "initramfs*")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

// minimalELF is a 64-bit little-endian ELF header with no sections or
// program headers, which debug/elf accepts.
func minimalELF() []byte {
	h := make([]byte, 64)
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = 2, 1, 1                // 64-bit, little-endian, version 1
	binary.LittleEndian.PutUint16(h[16:], 2)  // ET_EXEC
	binary.LittleEndian.PutUint16(h[18:], 62) // EM_X86_64
	binary.LittleEndian.PutUint32(h[20:], 1)
	binary.LittleEndian.PutUint16(h[52:], 64) // e_ehsize
	return append(h, bytes.Repeat([]byte("kernel"), 100)...)
}

// bzImage wraps payload like the x86 boot image does: setup sectors, the
// boot-protocol header, then the protected-mode code holding the payload
// at payloadOffset, followed by the 4-byte size the build appends.
func bzImage(payload []byte, uncompressedSize int) []byte {
	const setupSects = 3
	const payloadOffset = 0x40
	img := make([]byte, (setupSects+1)*512+payloadOffset)
	img[0x1f1] = setupSects
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x206:], 0x20f)
	binary.LittleEndian.PutUint32(img[0x248:], payloadOffset)
	binary.LittleEndian.PutUint32(img[0x24c:], uint32(len(payload)+4))
	img = append(img, payload...)
	img = binary.LittleEndian.AppendUint32(img, uint32(uncompressedSize))
	return append(img, make([]byte, 512)...) // trailing code and padding
}

func TestExtractVmlinux_Gzip(t *testing.T) {
	elf := minimalELF()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(elf)
	zw.Close()
	out, err := ExtractVmlinux(context.Background(), bzImage(gz.Bytes(), len(elf)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, elf) {
		t.Fatalf("got %d bytes, want the %d-byte ELF", len(out), len(elf))
	}
}

func TestExtractVmlinux_XZ(t *testing.T) {
	elf := minimalELF()
	cmd := exec.Command("xz", "--check=crc32", "-c")
	cmd.Stdin = bytes.NewReader(elf)
	xz, err := cmd.Output()
	if err != nil {
		t.Fatalf("xz (Debian package xz-utils) is needed: %v", err)
	}
	out, err := ExtractVmlinux(context.Background(), bzImage(xz, len(elf)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, elf) {
		t.Fatalf("got %d bytes, want the %d-byte ELF", len(out), len(elf))
	}
}

func TestExtractVmlinux_RejectsWhatItCannotBoot(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("not an ELF file at all"))
	zw.Close()
	outside := bzImage(gz.Bytes(), 22)
	binary.LittleEndian.PutUint32(outside[0x24c:], 1<<30)
	cases := map[string]struct {
		image []byte
		want  string
	}{
		"no header":        {make([]byte, 4096), "HdrS"},
		"payload outside":  {outside, "outside"},
		"unknown codec":    {bzImage([]byte("BZh91AY&SY"), 10), "unsupported payload compression"},
		"payload not ELF":  {bzImage(gz.Bytes(), 22), "not ELF"},
		"old boot version": {func() []byte { b := bzImage(gz.Bytes(), 22); b[0x206] = 0x02; b[0x207] = 0x02; return b }(), "too old"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ExtractVmlinux(context.Background(), c.image)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one mentioning %q", err, c.want)
			}
		})
	}
}

// fakeModule is a minimal ELF relocatable file with a .modinfo section,
// which is all ModuleDepends reads.
func fakeModule(modinfo string) []byte {
	shstrtab := []byte("\x00.modinfo\x00.shstrtab\x00")
	info := []byte(modinfo)
	const ehsize, shentsize = 64, 64
	infoOff := ehsize
	strOff := infoOff + len(info)
	shOff := (strOff + len(shstrtab) + 7) &^ 7
	b := make([]byte, shOff+3*shentsize)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], 1) // ET_REL
	le.PutUint16(b[18:], 62)
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[40:], uint64(shOff))
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[58:], shentsize)
	le.PutUint16(b[60:], 3) // section count
	le.PutUint16(b[62:], 2) // .shstrtab index
	copy(b[infoOff:], info)
	copy(b[strOff:], shstrtab)
	sh := func(i int, name, typ uint32, off, size int) {
		s := b[shOff+i*shentsize:]
		le.PutUint32(s[0:], name)
		le.PutUint32(s[4:], typ)
		le.PutUint64(s[24:], uint64(off))
		le.PutUint64(s[32:], uint64(size))
		le.PutUint64(s[48:], 1)
	}
	sh(1, 1, 1, infoOff, len(info))     // .modinfo, SHT_PROGBITS
	sh(2, 10, 3, strOff, len(shstrtab)) // .shstrtab, SHT_STRTAB
	return b
}

func TestModuleClosure_OrdersDependenciesFirst(t *testing.T) {
	dir := t.TempDir()
	mods := map[string]string{
		"kernel/drivers/net/virtio_net.ko":            "license=GPL\x00depends=net_failover,virtio,virtio_ring\x00name=virtio_net\x00",
		"kernel/drivers/net/net_failover.ko":          "depends=failover\x00",
		"kernel/net/core/failover.ko":                 "depends=\x00",
		"kernel/drivers/virtio/virtio.ko":             "depends=\x00",
		"kernel/drivers/virtio/virtio_ring.ko":        "depends=virtio\x00",
		"kernel/drivers/char/hw_random/virtio-rng.ko": "depends=virtio_ring,virtio\x00",
		"kernel/drivers/unused/other.ko":              "depends=virtio\x00",
	}
	for p, info := range mods {
		full := filepath.Join(dir, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, fakeModule(info), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	order, err := ModuleClosure(dir, []string{"virtio_net", "virtio-rng"})
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	var names []string
	for i, m := range order {
		pos[m.Name] = i
		names = append(names, m.Name)
	}
	if len(order) != 6 {
		t.Fatalf("closure %v, want the 6 needed modules (not other)", names)
	}
	for _, dep := range [][2]string{{"virtio", "virtio_ring"}, {"virtio_ring", "virtio_net"}, {"failover", "net_failover"}, {"net_failover", "virtio_net"}, {"virtio_ring", "virtio_rng"}} {
		if pos[dep[0]] >= pos[dep[1]] {
			t.Errorf("%s must load before %s: %v", dep[0], dep[1], names)
		}
	}
}

func TestModuleClosure_Errors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.ko"), fakeModule("depends=b\x00"), 0o644)
	os.WriteFile(filepath.Join(dir, "b.ko"), fakeModule("depends=a\x00"), 0o644)
	os.WriteFile(filepath.Join(dir, "c.ko"), fakeModule("depends=missing\x00"), 0o644)
	if _, err := ModuleClosure(dir, []string{"a"}); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: %v", err)
	}
	if _, err := ModuleClosure(dir, []string{"c"}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing dependency: %v", err)
	}
	if _, err := ModuleClosure(dir, []string{"builtin_only"}); err == nil {
		t.Error("a wanted module that is not a file must be an error")
	}
}

// FuzzExtractVmlinux: whatever the image, ExtractVmlinux returns an ELF
// kernel or an error; it never panics or reads outside the image.
func FuzzExtractVmlinux(f *testing.F) {
	elf := minimalELF()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(elf)
	zw.Close()
	f.Add(bzImage(gz.Bytes(), len(elf)))
	f.Add(bzImage([]byte("BZh91AY&SY"), 10))
	f.Add(make([]byte, 0x250))
	f.Fuzz(func(t *testing.T, image []byte) {
		out, err := ExtractVmlinux(context.Background(), image)
		if err == nil && !bytes.HasPrefix(out, []byte("\x7fELF")) {
			t.Fatalf("no error but the output is not ELF: % x", out[:min(16, len(out))])
		}
	})
}
