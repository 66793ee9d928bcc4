package ports

import (
	"bufio"
	"bytes"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
)

// rtfUp is RTF_UP in the Flags column of /proc/net/route.
const rtfUp = 0x1

// ExternalAddr is the IPv4 address of the interface carrying the default
// route (lowest metric first), read from procNet/route, or FallbackAddr.
func ExternalAddr(procNet string) netip.Addr {
	data, err := os.ReadFile(filepath.Join(procNet, "route"))
	if err != nil {
		return FallbackAddr
	}
	iface := DefaultRouteInterface(data)
	if iface == "" {
		return FallbackAddr
	}
	if a, ok := interfaceIPv4(iface); ok {
		return a
	}
	return FallbackAddr
}

// DefaultRouteInterface returns the interface of the best default route in
// the contents of /proc/net/route ("" when there is none). Columns: Iface
// Destination Gateway Flags RefCnt Use Metric Mask ...
func DefaultRouteInterface(data []byte) string {
	best, bestMetric := "", uint64(0)
	sc := bufio.NewScanner(bytes.NewReader(data))
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		f := bytes.Fields(sc.Bytes())
		if len(f) < 8 {
			continue
		}
		dst, err1 := strconv.ParseUint(string(f[1]), 16, 32)
		flags, err2 := strconv.ParseUint(string(f[3]), 16, 32)
		metric, err3 := strconv.ParseUint(string(f[6]), 10, 32)
		mask, err4 := strconv.ParseUint(string(f[7]), 16, 32)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
			continue
		}
		if dst != 0 || mask != 0 || flags&rtfUp == 0 {
			continue
		}
		if best == "" || metric < bestMetric {
			best, bestMetric = string(f[0]), metric
		}
	}
	return best
}

func interfaceIPv4(name string) (netip.Addr, bool) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Addr{}, false
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return netip.Addr{}, false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip4 := n.IP.To4(); ip4 != nil {
				if addr, ok := netip.AddrFromSlice(ip4); ok {
					return addr, true
				}
			}
		}
	}
	return netip.Addr{}, false
}
