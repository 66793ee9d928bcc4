// Package ports forwards TCP services that listen only on loopback inside
// the VM to the VM's external address at the same port (spec lifecycle.md
// §5, decision D12), so that the host's proxy can reach them. One
// goroutine scans /proc/net/tcp and /proc/net/tcp6 every second; each
// selected listener gets an in-process TCP proxy (no socat, no child
// processes) that is torn down, with every connection it carries, when the
// listener goes away or is replaced.
package ports

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// Defaults from the spec.
const (
	// ScanInterval is the time between two scans; the first is immediate.
	ScanInterval = time.Second
	// DialTimeout bounds the connection to the loopback service.
	DialTimeout = 5 * time.Second
	// maxTableSize bounds what one scan reads of a /proc/net table.
	// Listening sockets are printed before established ones, so a machine
	// with an enormous number of connections still has its listeners in
	// the first part.
	maxTableSize = 8 << 20
)

// FallbackAddr is the external address when no interface carries a default
// route: the guest address of Wrenn VMs.
var FallbackAddr = netip.AddrFrom4([4]byte{169, 254, 0, 21})

// Options configure a Forwarder. Zero values take the defaults.
type Options struct {
	// ProcNet is the directory holding tcp, tcp6 and route (/proc/net).
	ProcNet string
	// Interval is the scan interval (ScanInterval).
	Interval time.Duration
	// External returns the address to listen on; it is called at every
	// Start (default: the IPv4 address of the default-route interface, else
	// FallbackAddr).
	External func() netip.Addr
	// Disabled makes Start a no-op: forwarding is off with --isnotfc,
	// where the "external address" may be a developer machine's LAN
	// address (spec lifecycle.md §2.3).
	Disabled bool
}

// Forwarder scans for loopback listeners and proxies them. Start and Stop
// may be called from any goroutine; Start is idempotent and Stop is
// synchronous.
type Forwarder struct {
	log  *slog.Logger
	opts Options

	runMu sync.Mutex // serialises Start and Stop
	stop  chan struct{}
	done  chan struct{}

	// scan is the scanner's state; only the running scan goroutine touches
	// it, and Stop waits for that goroutine before another can start.
	scan scanState

	portsMu sync.Mutex
	ports   []uint16 // forwarded ports after the last scan, sorted
}

// New returns a stopped forwarder.
func New(opts Options, log *slog.Logger) *Forwarder {
	if opts.Disabled {
		log.Info("port forwarding disabled (not in Firecracker mode)")
	}
	if opts.ProcNet == "" {
		opts.ProcNet = "/proc/net"
	}
	if opts.Interval <= 0 {
		opts.Interval = ScanInterval
	}
	if opts.External == nil {
		procNet := opts.ProcNet
		opts.External = func() netip.Addr { return ExternalAddr(procNet) }
	}
	return &Forwarder{log: log, opts: opts, scan: scanState{
		buf:    make([]byte, 0, 16<<10),
		want:   map[uint16]Listener{},
		active: map[uint16]*proxy{},
		failed: map[uint16]uint64{},
	}}
}

// Start begins scanning and forwarding on the current external address. It
// is a no-op when already running (never a restart: a restart would drop
// proxied connections and race with itself for the ports).
func (f *Forwarder) Start() {
	f.runMu.Lock()
	defer f.runMu.Unlock()
	if f.stop != nil || f.opts.Disabled {
		return
	}
	ext := f.opts.External()
	f.stop, f.done = make(chan struct{}), make(chan struct{})
	f.log.Info("port forwarding started", "address", ext.String())
	go f.run(ext, f.stop, f.done)
}

// Stop ends scanning and closes every forwarder listener and every proxied
// connection before it returns. It is a no-op when not running.
func (f *Forwarder) Stop() {
	f.runMu.Lock()
	defer f.runMu.Unlock()
	if f.stop == nil {
		return
	}
	close(f.stop)
	<-f.done
	f.stop, f.done = nil, nil
	f.log.Info("port forwarding stopped")
}

// Running reports whether the scanner runs.
func (f *Forwarder) Running() bool {
	f.runMu.Lock()
	defer f.runMu.Unlock()
	return f.stop != nil
}

// Ports lists the ports forwarded after the last scan.
func (f *Forwarder) Ports() []uint16 {
	f.portsMu.Lock()
	defer f.portsMu.Unlock()
	return slices.Clone(f.ports)
}

func (f *Forwarder) run(ext netip.Addr, stop, done chan struct{}) {
	defer close(done)
	defer func() {
		if p := recover(); p != nil {
			f.log.Error("port forwarder panicked", "panic", fmt.Sprint(p))
		}
	}()
	defer f.closeAll("forwarding stopped")
	ticker := time.NewTicker(f.opts.Interval)
	defer ticker.Stop()
	for {
		f.scanOnce(ext, stop)
		select {
		case <-stop:
			return
		case <-ticker.C:
		}
	}
}

// scanState is reused from scan to scan so that a scan allocates next to
// nothing.
type scanState struct {
	buf    []byte
	found  []Listener
	want   map[uint16]Listener
	active map[uint16]*proxy
	// failed remembers, per port, the inode whose external listen failed,
	// so that the failure is logged once and retried quietly.
	failed map[uint16]uint64
	// unreadable remembers tables that could not be read (logged once).
	unreadable [2]bool
}

// scanOnce reads both tables and reconciles the forwarders with them. A
// panic is contained: the next scan starts from the same state.
func (f *Forwarder) scanOnce(ext netip.Addr, stop chan struct{}) {
	defer func() {
		if p := recover(); p != nil {
			f.log.Error("port scan panicked", "panic", fmt.Sprint(p))
		}
	}()
	s := &f.scan
	s.found = s.found[:0]
	for i, v6 := range [2]bool{false, true} {
		name := "tcp"
		if v6 {
			name = "tcp6"
		}
		var err error
		s.buf, err = readTable(filepath.Join(f.opts.ProcNet, name), s.buf)
		if err != nil {
			// With IPv6 disabled there is no tcp6: use what there is.
			if !s.unreadable[i] {
				s.unreadable[i] = true
				f.log.Debug("cannot read socket table", "error", err.Error())
			}
			continue
		}
		s.unreadable[i] = false
		s.found = ParseTable(s.buf, v6, s.found)
	}

	clear(s.want)
	for _, l := range s.found {
		if cur, ok := s.want[l.Port]; !ok || preferred(l, cur) {
			s.want[l.Port] = l
		}
	}
	for port, p := range s.active {
		w, ok := s.want[port]
		switch {
		case !ok:
			f.stopProxy(port, p, "listener closed")
		case w.Inode != p.listener.Inode:
			f.stopProxy(port, p, "listener replaced")
		}
	}
	for port, inode := range s.failed {
		if w, ok := s.want[port]; !ok || w.Inode != inode {
			delete(s.failed, port)
		}
	}
	for port, l := range s.want {
		if _, ok := s.active[port]; ok {
			continue
		}
		select {
		case <-stop:
			return // Stop is waiting: do not open new listeners
		default:
		}
		p, err := startProxy(ext, l, f.log)
		if err != nil {
			// Typically EADDRINUSE: another socket holds the external or
			// wildcard address for this port. Retried at every scan.
			if s.failed[port] != l.Inode {
				s.failed[port] = l.Inode
				f.log.Debug("cannot forward port", "port", port, "error", err.Error())
			}
			continue
		}
		delete(s.failed, port)
		s.active[port] = p
		f.log.Info("forwarding port", "port", port, "target", l.Target().String())
	}
	f.publishPorts()
}

// preferred reports whether a should serve a port rather than b: IPv4
// (and IPv4-mapped) listeners win over ::1; among equals the lower inode,
// so the choice is stable from scan to scan.
func preferred(a, b Listener) bool {
	if a.IPv4() != b.IPv4() {
		return a.IPv4()
	}
	return a.Inode < b.Inode
}

func (f *Forwarder) stopProxy(port uint16, p *proxy, reason string) {
	p.close()
	delete(f.scan.active, port)
	f.log.Info("stopped forwarding port", "port", port, "reason", reason)
}

func (f *Forwarder) closeAll(reason string) {
	for port, p := range f.scan.active {
		f.stopProxy(port, p, reason)
	}
	clear(f.scan.failed)
	f.publishPorts()
}

func (f *Forwarder) publishPorts() {
	f.portsMu.Lock()
	defer f.portsMu.Unlock()
	f.ports = f.ports[:0]
	for port := range f.scan.active {
		f.ports = append(f.ports, port)
	}
	slices.Sort(f.ports)
}

// readTable reads a /proc/net table into buf (reused), up to maxTableSize;
// a longer table is cut at its last complete line.
func readTable(path string, buf []byte) ([]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return buf[:0], err
	}
	defer file.Close()
	buf = buf[:0]
	for {
		if len(buf) >= maxTableSize {
			if i := lastNewline(buf); i >= 0 {
				buf = buf[:i+1]
			}
			return buf, nil
		}
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, max(4096, min(cap(buf), maxTableSize-cap(buf))))
		}
		n, err := file.Read(buf[len(buf):min(cap(buf), maxTableSize)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return buf[:0], err
		}
	}
}

func lastNewline(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			return i
		}
	}
	return -1
}
