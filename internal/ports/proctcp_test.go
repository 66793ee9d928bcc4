package ports

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const tcpHeader = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"

// line4 renders one /proc/net/tcp line the way the kernel does.
func line4(addr string, port uint16, state string, inode uint64) string {
	a := netip.MustParseAddr(addr).As4()
	return fmt.Sprintf("   0: %08X:%04X 00000000:0000 %s 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000000000000 100 0 0 10 0\n",
		binary.NativeEndian.Uint32(a[:]), port, state, inode)
}

// line6 renders one /proc/net/tcp6 line.
func line6(addr string, port uint16, state string, inode uint64) string {
	a := netip.MustParseAddr(addr).As16()
	var hex strings.Builder
	for i := 0; i < 4; i++ {
		fmt.Fprintf(&hex, "%08X", binary.NativeEndian.Uint32(a[i*4:]))
	}
	return fmt.Sprintf("   0: %s:%04X 00000000000000000000000000000000:0000 %s 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000000000000 100 0 0 10 0\n",
		hex.String(), port, state, inode)
}

func TestParseTable_SpecExamples(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Fatal("the spec's literal examples are for little-endian hosts (amd64, arm64)")
	}
	v4 := tcpHeader +
		"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n"
	got := ParseTable([]byte(v4), false, nil)
	want := []Listener{{Addr: netip.MustParseAddr("127.0.0.1"), Port: 8080, Inode: 4242}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("v4: %v, want %v", got, want)
	}
	v6 := "  sl  local_address                         remote_address                        st tx_queue\n" +
		"   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0\n" +
		"   1: 0000000000000000FFFF00000100007F:0BB9 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 78 1 0000000000000000 100 0 0 10 0\n"
	got = ParseTable([]byte(v6), true, nil)
	want = []Listener{
		{Addr: netip.MustParseAddr("::1"), Port: 3000, Inode: 77},
		{Addr: netip.MustParseAddr("::ffff:127.0.0.1"), Port: 3001, Inode: 78},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("v6: %v, want %v", got, want)
	}
	if !got[1].IPv4() || got[0].IPv4() {
		t.Fatal("IPv4-mapped loopback is an IPv4 target, ::1 is not")
	}
	if got[1].Target().String() != "127.0.0.1:3001" || got[0].Target().String() != "[::1]:3000" {
		t.Fatalf("targets %v %v", got[1].Target(), got[0].Target())
	}
}

func TestParseTable_Selection(t *testing.T) {
	v4 := tcpHeader +
		line4("127.0.0.1", 80, "0A", 1) + // selected
		line4("127.0.0.53", 53, "0A", 2) + // other loopback address
		line4("0.0.0.0", 22, "0A", 3) + // wildcard: already reachable
		line4("10.0.0.5", 9000, "0A", 4) + // external address
		line4("127.0.0.1", 81, "01", 5) + // established, not listening
		line4("127.0.0.1", 0, "0A", 6) + // port 0 cannot be forwarded
		"\n" + // blank line
		"   7: 0100007F:0050 00000000:0000 0A 00000000:00000000\n" + // too few fields
		"   8: 0100007G:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 9\n" + // bad hex
		"   9: 0100007F0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 9\n" + // no colon
		"  10: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 x9\n" + // bad inode
		line4("127.0.0.1", 65535, "0A", 18446744073709551615)
	got := ParseTable([]byte(v4), false, nil)
	want := []Listener{
		{Addr: netip.MustParseAddr("127.0.0.1"), Port: 80, Inode: 1},
		{Addr: netip.MustParseAddr("127.0.0.1"), Port: 65535, Inode: 18446744073709551615},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	v6 := tcpHeader +
		line6("::1", 80, "0A", 11) +
		line6("::ffff:127.0.0.1", 81, "0A", 12) +
		line6("::", 82, "0A", 13) + // wildcard
		line6("::ffff:127.0.0.53", 83, "0A", 14) +
		line6("fe80::1", 84, "0A", 15) +
		line6("::1", 85, "06", 16) // TIME_WAIT
	got = ParseTable([]byte(v6), true, nil)
	want = []Listener{
		{Addr: netip.MustParseAddr("::1"), Port: 80, Inode: 11},
		{Addr: netip.MustParseAddr("::ffff:127.0.0.1"), Port: 81, Inode: 12},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("v6: got %v, want %v", got, want)
	}
	// A v4 line in the v6 table (or the reverse) has the wrong width.
	if got := ParseTable([]byte(tcpHeader+line4("127.0.0.1", 80, "0A", 1)), true, nil); len(got) != 0 {
		t.Fatalf("v4 line accepted as v6: %v", got)
	}
	if got := ParseTable([]byte(tcpHeader+line6("::1", 80, "0A", 1)), false, nil); len(got) != 0 {
		t.Fatalf("v6 line accepted as v4: %v", got)
	}
	// The header line is never parsed, even if it looks like data; no
	// trailing newline is needed.
	if got := ParseTable([]byte(strings.TrimSuffix(line4("127.0.0.1", 1, "0A", 1)+line4("127.0.0.1", 2, "0A", 2), "\n")), false, nil); len(got) != 1 || got[0].Port != 2 {
		t.Fatalf("header handling: %v", got)
	}
}

func TestParseTable_RealTables(t *testing.T) {
	// The machine's own tables must parse without surprises.
	for _, name := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile("/proc/net/" + name)
		if err != nil {
			continue // IPv6 may be disabled
		}
		for _, l := range ParseTable(data, name == "tcp6", nil) {
			if l.Port == 0 || !(l.Addr == loopback4 || l.Addr == loopback6 || l.Addr == loopback4Mapped) {
				t.Fatalf("%s: bad listener %v", name, l)
			}
		}
	}
}

func TestParseTable_NoAllocations(t *testing.T) {
	data := []byte(tcpHeader + line4("127.0.0.1", 80, "0A", 1) + line4("0.0.0.0", 22, "0A", 3) + line4("127.0.0.1", 81, "0A", 2))
	out := make([]Listener, 0, 8)
	allocs := testing.AllocsPerRun(100, func() { out = ParseTable(data, false, out[:0]) })
	if allocs != 0 {
		t.Fatalf("ParseTable allocates %.1f times per run", allocs)
	}
}

// referenceParse is a straightforward second implementation used to check
// ParseTable on fuzzed input.
func referenceParse(data string, v6 bool) []Listener {
	var out []Listener
	lines := strings.Split(data, "\n")
	for i, line := range lines {
		if i == 0 {
			continue
		}
		f := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' || r == '\r' })
		if len(f) < 10 {
			continue
		}
		if len(f[3]) != 2 || !isHexString(f[3]) {
			continue
		}
		if st, _ := strconv.ParseUint(f[3], 16, 8); st != 0x0A {
			continue
		}
		hexAddr, hexPort, ok := strings.Cut(f[1], ":")
		if !ok || len(hexPort) != 4 || !isHexString(hexPort) {
			continue
		}
		var addr netip.Addr
		words := 1
		if v6 {
			words = 4
		}
		if len(hexAddr) != 8*words || !isHexString(hexAddr) {
			continue
		}
		b := make([]byte, 4*words)
		for w := 0; w < words; w++ {
			v, _ := strconv.ParseUint(hexAddr[w*8:w*8+8], 16, 32)
			binary.NativeEndian.PutUint32(b[w*4:], uint32(v))
		}
		addr, _ = netip.AddrFromSlice(b)
		if addr != loopback4 && addr != loopback6 && addr != loopback4Mapped {
			continue
		}
		port, _ := strconv.ParseUint(hexPort, 16, 16)
		if port == 0 {
			continue
		}
		if len(f[9]) == 0 || strings.IndexFunc(f[9], func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
			continue
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			continue
		}
		out = append(out, Listener{Addr: addr, Port: uint16(port), Inode: inode})
	}
	return out
}

func isHexString(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func FuzzParseTable(f *testing.F) {
	f.Add(tcpHeader+line4("127.0.0.1", 80, "0A", 1)+line4("0.0.0.0", 22, "0A", 3), false)
	f.Add(tcpHeader+line6("::1", 80, "0A", 11)+line6("::ffff:127.0.0.1", 81, "0A", 12), true)
	f.Add(tcpHeader+"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1", false)
	f.Add("", false)
	f.Add("\n\n\n", true)
	f.Add(tcpHeader+"0: 0100007F:1F90 0 0A 0 0 0 0 0 99999999999999999999999", false)
	f.Fuzz(func(t *testing.T, data string, v6 bool) {
		got := ParseTable([]byte(data), v6, nil)
		want := referenceParse(data, v6)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("ParseTable %v, reference %v", got, want)
		}
		for _, l := range got {
			if l.Port == 0 || (l.Addr != loopback4 && l.Addr != loopback6 && l.Addr != loopback4Mapped) {
				t.Fatalf("selected a non-loopback listener %v", l)
			}
		}
	})
}

func TestDefaultRouteInterface(t *testing.T) {
	table := "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
		"eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" +
		"eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n" +
		"wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n" +
		"down0\t00000000\t0101A8C0\t0002\t0\t0\t1\t00000000\t0\t0\t0\n"
	if got := DefaultRouteInterface([]byte(table)); got != "eth0" {
		t.Fatalf("got %q, want eth0 (lowest metric among up default routes)", got)
	}
	if got := DefaultRouteInterface([]byte("Iface\tDestination\n" + "eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n")); got != "" {
		t.Fatalf("no default route: got %q", got)
	}
	if got := DefaultRouteInterface(nil); got != "" {
		t.Fatalf("empty: %q", got)
	}
}

func TestExternalAddr_Fallback(t *testing.T) {
	dir := t.TempDir()
	if got := ExternalAddr(dir); got != FallbackAddr {
		t.Fatalf("no route file: %v", got)
	}
	os.WriteFile(filepath.Join(dir, "route"), []byte("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\nnope0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\n"), 0o644)
	if got := ExternalAddr(dir); got != FallbackAddr {
		t.Fatalf("default route via a missing interface: %v", got)
	}
	os.WriteFile(filepath.Join(dir, "route"), []byte("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\nlo\t00000000\t00000000\t0001\t0\t0\t0\t00000000\n"), 0o644)
	if got := ExternalAddr(dir); got != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("default route via lo: %v", got)
	}
}

func TestReadTable_BoundedAndReused(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	os.WriteFile(small, []byte(tcpHeader+line4("127.0.0.1", 80, "0A", 1)), 0o644)
	buf := make([]byte, 0, 16)
	buf, err := readTable(small, buf)
	if err != nil || string(buf) != tcpHeader+line4("127.0.0.1", 80, "0A", 1) {
		t.Fatalf("read %q %v", buf, err)
	}
	c := cap(buf)
	buf, _ = readTable(small, buf)
	if cap(buf) != c {
		t.Fatal("buffer not reused")
	}
	if _, err := readTable(filepath.Join(dir, "absent"), nil); err == nil {
		t.Fatal("absent table: no error")
	}
	big := filepath.Join(dir, "big")
	line := line4("127.0.0.1", 80, "0A", 1)
	content := tcpHeader + strings.Repeat(line, maxTableSize/len(line)+100)
	os.WriteFile(big, []byte(content), 0o644)
	buf, err = readTable(big, nil)
	if err != nil || len(buf) > maxTableSize || len(buf) < maxTableSize-len(line) || buf[len(buf)-1] != '\n' {
		t.Fatalf("big table: len %d err %v", len(buf), err)
	}
}
