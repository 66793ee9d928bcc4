// Package peer tells whether the other end of a connection is inside the
// guest (spec decision D18): its address is a loopback address or an
// address of one of the guest's own interfaces. The host reaches envd from
// outside the guest, so such a peer is a guest process. In Firecracker mode
// envd refuses the host-only routes to these peers (Guard) and gives them a
// smaller share of the connection cap (internal/server).
//
// A process in a network namespace of its own inside the guest (a container
// with its own address) is not recognised: its address belongs to no
// interface of the guest's.
package peer

import (
	"fmt"
	"net"
	"net/netip"
)

// Classifier decides whether a peer is inside the guest. The zero value
// reads the interface addresses from the kernel on every question that the
// cheap checks (loopback, the connection's own local address) leave open,
// so an address added at run time counts at once.
type Classifier struct {
	// Addrs lists the guest's interface addresses; nil means the kernel's
	// (net.InterfaceAddrs). Tests replace it.
	Addrs func() ([]netip.Addr, error)
}

// Inside reports whether remote, seen on a connection whose local end is
// local (the zero Addr when unknown), is inside the guest. When the
// interface addresses cannot be read it answers true with the error: the
// rule protects the host-only routes, so it fails closed.
func (c *Classifier) Inside(remote, local netip.Addr) (bool, error) {
	remote = remote.Unmap().WithZone("")
	if !remote.IsValid() {
		return true, fmt.Errorf("no peer address")
	}
	if remote.IsLoopback() || remote.IsUnspecified() {
		return true, nil
	}
	// A connection to one of our own addresses normally comes from that
	// same address.
	if local.IsValid() && remote == local.Unmap().WithZone("") {
		return true, nil
	}
	addrs, err := c.addrs()
	if err != nil {
		return true, fmt.Errorf("read interface addresses: %w", err)
	}
	for _, a := range addrs {
		if a.Unmap().WithZone("") == remote {
			return true, nil
		}
	}
	return false, nil
}

// InsideConn is Inside for an accepted connection.
func (c *Classifier) InsideConn(conn net.Conn) (bool, error) {
	return c.Inside(AddrOf(conn.RemoteAddr()), AddrOf(conn.LocalAddr()))
}

func (c *Classifier) addrs() ([]netip.Addr, error) {
	if c.Addrs != nil {
		return c.Addrs()
	}
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(ifas))
	for _, a := range ifas {
		var ip net.IP
		switch v := a.(type) {
		case *net.IPNet:
			ip = v.IP
		case *net.IPAddr:
			ip = v.IP
		}
		if addr, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, addr)
		}
	}
	return out, nil
}

// AddrOf is the IP address of a TCP address (or of a "host:port" string
// address); the zero Addr if it has none.
func AddrOf(a net.Addr) netip.Addr {
	switch v := a.(type) {
	case nil:
		return netip.Addr{}
	case *net.TCPAddr:
		return v.AddrPort().Addr()
	default:
		return ParseAddr(a.String())
	}
}

// ParseAddr is the IP address of "host:port" (as in http.Request.RemoteAddr);
// the zero Addr if it has none.
func ParseAddr(hostport string) netip.Addr {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return ap.Addr()
	}
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	a, _ := netip.ParseAddr(host)
	return a
}
