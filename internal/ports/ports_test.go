package ports

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The in-process tests forward the machine's loopback listeners to
// 127.0.0.2, another loopback address that the scanner never selects, so
// nothing becomes reachable from outside the machine. The end-to-end tests
// in test/e2e do the real thing across network namespaces.
var testExternal = netip.MustParseAddr("127.0.0.2")

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newForwarder(t *testing.T) (*Forwarder, *lockedBuffer) {
	t.Helper()
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f := New(Options{Interval: 50 * time.Millisecond, External: func() netip.Addr { return testExternal }}, log)
	t.Cleanup(f.Stop)
	return f, logs
}

// serveEcho answers every connection with prefix followed by what it
// reads, and half-closes its side once the client has.
func serveEcho(ln net.Listener, prefix string) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte(prefix))
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						c.Write(buf[:n])
					}
					if err != nil {
						break
					}
				}
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
}

func portOf(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

func extAddr(port int) string {
	return net.JoinHostPort(testExternal.String(), strconv.Itoa(port))
}

// waitForwarded waits until a connection to the external address at port
// gets the expected greeting.
func waitForwarded(t *testing.T, port int, greeting string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", extAddr(port), time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, len(greeting))
			_, err = io.ReadFull(c, buf)
			c.Close()
			if err == nil && string(buf) == greeting {
				return
			}
			if err == nil {
				t.Fatalf("port %d: greeting %q, want %q", port, buf, greeting)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("port %d never forwarded: %v", port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitRefused waits until connecting to the external address at port is
// refused.
func waitRefused(t *testing.T, port int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", extAddr(port), time.Second)
		if errors.Is(err, syscall.ECONNREFUSED) {
			return
		}
		if err == nil {
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("port %d still forwarded (%v)", port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestForwarder_ProxiesByteExactWithHalfClose(t *testing.T) {
	f, _ := newForwarder(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The service hashes everything it receives until EOF, then answers
	// with the hash: that only works if the client's half-close is passed on.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h := sha256.New()
				io.Copy(h, c)
				c.Write(h.Sum(nil))
			}()
		}
	}()
	f.Start()
	f.Start() // idempotent
	port := portOf(ln)
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(f.Ports(), uint16(port)) {
		if time.Now().After(deadline) {
			t.Fatalf("port %d not forwarded; forwarded: %v", port, f.Ports())
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := net.Dial("tcp", extAddr(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, 32<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>11)
	}
	want := sha256.Sum256(data)
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, want[:]) {
		t.Fatalf("hash through proxy %x (%v), want %x", got, err, want)
	}
}

func TestForwarder_StopsWhenListenerGoesAwayAndClosesConnections(t *testing.T) {
	f, logs := newForwarder(t)
	f.Start()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := portOf(ln)
	serveEcho(ln, "first")
	waitForwarded(t, port, "first")

	// An open proxied connection, then the service's listener goes away
	// (the accepted connection on the service side stays open).
	c, err := net.Dial("tcp", extAddr(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	ln.Close()
	waitRefused(t, port)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("proxied connection still open after the listener went away (read %d bytes)", n)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("proxied connection not closed when the listener went away")
	}

	// A new listener on the same port (new inode) gets a new forwarder.
	ln2, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	serveEcho(ln2, "second")
	waitForwarded(t, port, "second")
	if !bytes.Contains([]byte(logs.String()), []byte("stopped forwarding port")) {
		t.Fatalf("stop not logged:\n%s", logs)
	}
}

func TestForwarder_ReplacedListenerGetsNewForwarder(t *testing.T) {
	f, logs := newForwarder(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := portOf(ln)
	serveEcho(ln, "old")
	f.Start()
	waitForwarded(t, port, "old")
	c, err := net.Dial("tcp", extAddr(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.ReadFull(c, make([]byte, 3)); err != nil {
		t.Fatal(err)
	}
	// The service restarts: same port, new socket inode, normally between
	// two scans.
	ln.Close()
	ln2, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	serveEcho(ln2, "new")
	waitForwarded(t, port, "new")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection of the replaced forwarder still open")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("connection of the replaced forwarder still open")
	}
	// The old forwarder logs its end once all its connections are closed.
	deadline := time.Now().Add(5 * time.Second)
	for !bytes.Contains([]byte(logs.String()), []byte("stopped forwarding port")) {
		if time.Now().After(deadline) {
			t.Fatalf("replacement not logged:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitForwarded(t, port, "new")
}

func TestForwarder_IPv6AndMappedLoopback(t *testing.T) {
	f, _ := newForwarder(t)
	v6, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatalf("IPv6 loopback unavailable on this machine: %v", err)
	}
	defer v6.Close()
	serveEcho(v6, "six")
	mapped := listenMapped(t, 0)
	defer mapped.Close()
	serveEcho(mapped, "mapped")
	// Both families on one port: the IPv4 listener is the target.
	both4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer both4.Close()
	both6, err := net.Listen("tcp6", "[::1]:"+strconv.Itoa(portOf(both4)))
	if err != nil {
		t.Fatalf("second listener on port %d: %v", portOf(both4), err)
	}
	defer both6.Close()
	serveEcho(both4, "four")
	serveEcho(both6, "six")
	f.Start()
	waitForwarded(t, portOf(v6), "six")
	waitForwarded(t, portOf(mapped), "mapped")
	waitForwarded(t, portOf(both4), "four")
}

// listenMapped listens on ::ffff:127.0.0.1 with an AF_INET6 socket that
// accepts IPv4 (Go's "tcp6" would set IPV6_V6ONLY and refuse the address).
func listenMapped(t *testing.T, port int) net.Listener {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	sa := &unix.SockaddrInet6{Port: port, Addr: netip.MustParseAddr("::ffff:127.0.0.1").As16()}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		t.Fatalf("bind ::ffff:127.0.0.1: %v", err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	file := os.NewFile(uintptr(fd), "mapped")
	defer file.Close()
	ln, err := net.FileListener(file)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func TestForwarder_IgnoresOtherAddresses(t *testing.T) {
	f, _ := newForwarder(t)
	other, err := net.Listen("tcp4", "127.0.0.53:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	serveEcho(other, "other")
	// A forwarded port proves a scan happened after both listeners existed.
	control, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	serveEcho(control, "control")
	f.Start()
	waitForwarded(t, portOf(control), "control")
	if slices.Contains(f.Ports(), uint16(portOf(other))) {
		t.Fatal("127.0.0.53 listener forwarded")
	}
	if c, err := net.DialTimeout("tcp", extAddr(portOf(other)), time.Second); err == nil {
		c.Close()
		t.Fatal("127.0.0.53 listener reachable on the external address")
	}
}

func TestForwarder_StopIsSynchronousAndLeakFree(t *testing.T) {
	before := runtime.NumGoroutine()
	f, _ := newForwarder(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serveEcho(ln, "hi")
	port := portOf(ln)
	for round := 0; round < 3; round++ {
		f.Start()
		waitForwarded(t, port, "hi")
		var conns []net.Conn
		for i := 0; i < 5; i++ {
			c, err := net.Dial("tcp", extAddr(port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.ReadFull(c, make([]byte, 2))
			conns = append(conns, c)
		}
		f.Stop()
		if f.Running() || len(f.Ports()) != 0 {
			t.Fatalf("still running after Stop: %v", f.Ports())
		}
		// No wait: Stop has already closed the listener and every
		// proxied connection.
		if c, err := net.Dial("tcp", extAddr(port)); err == nil {
			c.Close()
			t.Fatal("listener open after Stop returned")
		}
		for _, c := range conns {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatal("proxied connection open after Stop returned")
			} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("proxied connection open after Stop returned")
			}
		}
	}
	f.Stop() // idempotent
	// serveEcho's goroutines for the closed connections end shortly.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestForwarder_ExternalListenFailureIsRetried(t *testing.T) {
	f, logs := newForwarder(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serveEcho(ln, "svc")
	port := portOf(ln)
	// Something else already holds the external address for this port.
	squatter, err := net.Listen("tcp4", extAddr(port))
	if err != nil {
		t.Fatal(err)
	}
	f.Start()
	deadline := time.Now().Add(10 * time.Second)
	for !bytes.Contains([]byte(logs.String()), []byte(`"cannot forward port" port=`+strconv.Itoa(port))) {
		if time.Now().After(deadline) {
			t.Fatalf("listen failure not logged:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // several more scans
	if n := bytes.Count([]byte(logs.String()), []byte(`"cannot forward port" port=`+strconv.Itoa(port))); n != 1 {
		t.Fatalf("failure logged %d times, want once", n)
	}
	squatter.Close()
	waitForwarded(t, port, "svc")
}

func TestForwarder_DeadTargetClosesClient(t *testing.T) {
	// A listener that never accepts and is then closed mid-dial: the
	// accepted client connection must be closed, not left hanging.
	f, _ := newForwarder(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(ln, "x")
	port := portOf(ln)
	f.Start()
	waitForwarded(t, port, "x")
	f.Stop()
	ln.Close()
	// Forward a port whose service is gone between scan and dial by
	// pointing a proxy straight at a closed port.
	p, err := startProxy(testExternal, Listener{Addr: loopback4, Port: uint16(port), Inode: 1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	c, err := net.Dial("tcp", extAddr(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read succeeded from a proxy without a target")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("client not closed after the dial failed")
	}
}

func TestForwarder_DisabledNeverStarts(t *testing.T) {
	logs := &lockedBuffer{}
	f := New(Options{Disabled: true, Interval: 10 * time.Millisecond, External: func() netip.Addr { return testExternal }},
		slog.New(slog.NewTextHandler(logs, nil)))
	defer f.Stop()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f.Start()
	if f.Running() {
		t.Fatal("a disabled forwarder started")
	}
	f.Stop()
	if !bytes.Contains([]byte(logs.String()), []byte("port forwarding disabled")) {
		t.Fatalf("no log line:\n%s", logs)
	}
}

// TestForwarder_MissingTCP6StillForwardsIPv4: with IPv6 disabled there is
// no /proc/net/tcp6; the IPv4 table is still used.
func TestForwarder_MissingTCP6StillForwardsIPv4(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink("/proc/net/tcp", dir+"/tcp"); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	f := New(Options{ProcNet: dir, Interval: 50 * time.Millisecond, External: func() netip.Addr { return testExternal }},
		slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(f.Stop)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serveEcho(ln, "v4")
	f.Start()
	waitForwarded(t, portOf(ln), "v4")
	if n := bytes.Count([]byte(logs.String()), []byte("cannot read socket table")); n != 1 {
		t.Fatalf("missing tcp6 logged %d times, want once:\n%s", n, logs)
	}
}
