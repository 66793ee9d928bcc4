package ports

import (
	"bytes"
	"encoding/binary"
	"net/netip"
)

// Listener is a TCP socket listening only on loopback, as read from
// /proc/net/tcp or /proc/net/tcp6. A listener is identified by (Port, Inode):
// a service that restarts gets a new socket inode.
type Listener struct {
	Addr  netip.Addr // 127.0.0.1, ::1 or ::ffff:127.0.0.1
	Port  uint16
	Inode uint64
}

// IPv4 reports whether the listener accepts IPv4 connections to 127.0.0.1
// (an IPv4 or IPv4-mapped socket); such a listener is the preferred target.
func (l Listener) IPv4() bool { return l.Addr.Unmap().Is4() }

// Target is the loopback address the forwarder dials for this listener.
func (l Listener) Target() netip.AddrPort {
	return netip.AddrPortFrom(l.Addr.Unmap(), l.Port)
}

var (
	loopback4       = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	loopback6       = netip.IPv6Loopback()
	loopback4Mapped = netip.AddrFrom16(loopback4.As16())
)

// tcpListen is the kernel's TCP_LISTEN state as written in the st column.
const tcpListen = 0x0A

// ParseTable appends to out every loopback-only listener in the contents of
// /proc/net/tcp (v6 false) or /proc/net/tcp6 (v6 true). The header line,
// blank lines and malformed lines are skipped. It does not allocate beyond
// growing out.
func ParseTable(data []byte, v6 bool, out []Listener) []Listener {
	first := true
	for len(data) > 0 {
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		if first {
			first = false
			continue // header: "sl local_address rem_address st ..."
		}
		if l, ok := parseLine(line, v6); ok {
			out = append(out, l)
		}
	}
	return out
}

// parseLine reads one socket line: field 1 is HEXADDR:HEXPORT, field 3 the
// state, field 9 the inode; at least 10 fields are required. It reports
// whether the line is a selected loopback listener.
func parseLine(line []byte, v6 bool) (Listener, bool) {
	var fields [10][]byte
	n := 0
	for i := 0; i < len(line) && n < len(fields); {
		for i < len(line) && isSpace(line[i]) {
			i++
		}
		start := i
		for i < len(line) && !isSpace(line[i]) {
			i++
		}
		if i > start {
			fields[n] = line[start:i]
			n++
		}
	}
	if n < len(fields) {
		return Listener{}, false
	}
	state, ok := parseHex(fields[3], 2)
	if !ok || state != tcpListen {
		return Listener{}, false
	}
	local := fields[1]
	colon := bytes.IndexByte(local, ':')
	if colon < 0 {
		return Listener{}, false
	}
	addr, ok := parseAddr(local[:colon], v6)
	if !ok || !(addr == loopback4 || addr == loopback6 || addr == loopback4Mapped) {
		return Listener{}, false
	}
	port, ok := parseHex(local[colon+1:], 4)
	if !ok || port == 0 {
		return Listener{}, false
	}
	inode, ok := parseDec(fields[9])
	if !ok {
		return Listener{}, false
	}
	return Listener{Addr: addr, Port: uint16(port), Inode: inode}, true
}

// parseAddr decodes the kernel's hex address: one (IPv4) or four (IPv6)
// 32-bit words, each printed as a number in host byte order.
func parseAddr(hex []byte, v6 bool) (netip.Addr, bool) {
	if !v6 {
		if len(hex) != 8 {
			return netip.Addr{}, false
		}
		w, ok := parseHex(hex, 8)
		if !ok {
			return netip.Addr{}, false
		}
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], uint32(w))
		return netip.AddrFrom4(b), true
	}
	if len(hex) != 32 {
		return netip.Addr{}, false
	}
	var b [16]byte
	for i := 0; i < 4; i++ {
		w, ok := parseHex(hex[i*8:i*8+8], 8)
		if !ok {
			return netip.Addr{}, false
		}
		binary.NativeEndian.PutUint32(b[i*4:], uint32(w))
	}
	return netip.AddrFrom16(b), true
}

// parseHex parses exactly width hex digits.
func parseHex(s []byte, width int) (uint64, bool) {
	if len(s) != width {
		return 0, false
	}
	var v uint64
	for _, c := range s {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		default:
			return 0, false
		}
		v = v<<4 | uint64(d)
	}
	return v, true
}

// parseDec parses a decimal inode number, rejecting overflow.
func parseDec(s []byte) (uint64, bool) {
	if len(s) == 0 {
		return 0, false
	}
	var v uint64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (^uint64(0)-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' }
