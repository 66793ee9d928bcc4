package e2e

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/envd/envd/internal/envdtest"
	"github.com/envd/envd/internal/mmds/mmdstest"
)

// Port forwarding across network namespaces (spec lifecycle.md §5, D12):
// envd runs in Firecracker mode inside a namespace whose eth0 stand-in is a
// veth with a default route; services listen on the namespace's loopback
// and the test reaches them from the host at the namespace's address.

// fcInNetns starts envd in FC mode in a fresh namespace, with a fake MMDS
// on the namespace's loopback.
func fcInNetns(t *testing.T, args ...string) (*lcNetns, *envdtest.Envd, *mmdstest.Server) {
	t.Helper()
	ns := newNetns(t)
	fake := mmdstest.NewOn(ns.listen(t, "tcp4", "127.0.0.1:0"), map[string]any{"instanceID": "sb-ports", "envID": "tpl-ports"})
	t.Cleanup(fake.Close)
	e := ns.startFC(t, envdtest.Options{Args: args, Env: []string{"ENVD_MMDS_ADDRESS=" + fake.HostPort()}})
	return ns, e, fake
}

// greet answers every connection with greeting, then echoes what it reads
// and half-closes after the client did.
func greet(ln net.Listener, greeting string) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte(greeting))
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
				if tc, ok := c.(interface{ CloseWrite() error }); ok {
					tc.CloseWrite()
				}
			}()
		}
	}()
}

func lnPort(ln net.Listener) string { return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port) }

// reach waits until host:port answers with greeting through the forwarder.
func reach(t *testing.T, addr, greeting string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, len(greeting))
			_, err = io.ReadFull(c, buf)
			c.Close()
			if err == nil {
				if string(buf) != greeting {
					t.Fatalf("%s answered %q, want %q", addr, buf, greeting)
				}
				return
			}
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not forwarded within 10 s: %v", addr, last)
}

// refused waits until connecting to addr is refused.
func refused(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if errors.Is(err, syscall.ECONNREFUSED) {
			return
		}
		if err == nil {
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still accepts connections (%v)", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPorts_LoopbackListenerReachableFromOutside(t *testing.T) {
	ns, e, _ := fcInNetns(t)
	ln := ns.listen(t, "tcp4", "127.0.0.1:0")
	greet(ln, "hello from inside")
	addr := net.JoinHostPort(ns.nsIP, lnPort(ln))
	reach(t, addr, "hello from inside")

	// Half-close: the service sees EOF after our shutdown(SHUT_WR), and
	// its answer still reaches us.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("ping"))
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello from insideping" {
		t.Fatalf("after half-close: %q %v", got, err)
	}
	port, _ := strconv.Atoi(lnPort(ln))
	if !logRecord(e.Log(), "forwarding port", map[string]any{"logger": "port-forwarder", "port": float64(port), "target": "127.0.0.1:" + lnPort(ln)}) {
		t.Fatalf("forwarder start not logged:\n%s", e.Log())
	}
	if !logRecord(e.Log(), "port forwarding started", map[string]any{"address": ns.nsIP}) {
		t.Fatalf("external address is not the default-route interface's:\n%s", e.Log())
	}
}

// TestPorts_OneGiBByteExact pushes 1 GiB each way through the forwarder at
// once and compares SHA-256 digests; the upload ends with a half-close.
func TestPorts_OneGiBByteExact(t *testing.T) {
	ns, _, _ := fcInNetns(t)
	const size = 1 << 30
	ln := ns.listen(t, "tcp4", "127.0.0.1:0")
	type result struct {
		sum, sentSum [32]byte
		n            int64
		err          error
	}
	served := make(chan result, 1)
	go func() {
		// Skip the reachability probes (they send nothing).
		for {
			c, err := ln.Accept()
			if err != nil {
				served <- result{err: err}
				return
			}
			c.Write([]byte("R"))
			var hdr [1]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil || hdr[0] != 'G' {
				c.Close()
				continue
			}
			// Send 1 GiB while receiving 1 GiB.
			sentSum := make(chan []byte, 1)
			go func() {
				h := sha256.New()
				io.Copy(c, io.TeeReader(io.LimitReader(stream(2), size), h))
				c.(*net.TCPConn).CloseWrite()
				sentSum <- h.Sum(nil)
			}()
			h := sha256.New()
			n, err := io.Copy(h, c)
			var r result
			copy(r.sum[:], h.Sum(nil))
			copy(r.sentSum[:], <-sentSum)
			r.n, r.err = n, err
			served <- r
			c.Close()
			return
		}
	}()
	addr := net.JoinHostPort(ns.nsIP, lnPort(ln))
	reach(t, addr, "R")

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sent := make(chan error, 1)
	upSum := sha256.New()
	go func() {
		_, err := c.Write([]byte("G"))
		if err == nil {
			_, err = io.Copy(c, io.TeeReader(io.LimitReader(stream(1), size), upSum))
		}
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		sent <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil || n != size {
		t.Fatalf("download: %d bytes, %v", n, err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("upload: %v", err)
	}
	r := <-served
	elapsed := time.Since(start)
	if r.err != nil || r.n != size {
		t.Fatalf("service received %d bytes: %v", r.n, r.err)
	}
	if !bytes.Equal(r.sum[:], upSum.Sum(nil)) {
		t.Fatal("upload corrupted by the forwarder")
	}
	if !bytes.Equal(h.Sum(nil), r.sentSum[:]) {
		t.Fatal("download corrupted by the forwarder")
	}
	t.Logf("1 GiB each way in %v (%.0f MiB/s per direction)", elapsed.Round(time.Millisecond), float64(size>>20)/elapsed.Seconds())
}

// stream is a deterministic pseudo-random byte stream (AES-CTR keyed by
// seed); fast even under the race detector.
func stream(seed byte) io.Reader {
	block, _ := aes.NewCipher(bytes.Repeat([]byte{seed}, 16))
	return &cipher.StreamReader{S: cipher.NewCTR(block, make([]byte, 16)), R: zeroReader{}}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestPorts_ClosingListenerStopsForwarding(t *testing.T) {
	ns, e, _ := fcInNetns(t)
	ln := ns.listen(t, "tcp4", "127.0.0.1:0")
	greet(ln, "up")
	addr := net.JoinHostPort(ns.nsIP, lnPort(ln))
	reach(t, addr, "up")
	// A proxied connection that is open when the listener goes away.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	ln.Close()
	refused(t, addr)
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("proxied connection still open after its listener went away")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("proxied connection not closed when its listener went away")
	}
	port, _ := strconv.Atoi(lnPort(ln))
	if !logRecord(e.Log(), "stopped forwarding port", map[string]any{"port": float64(port), "reason": "listener closed"}) {
		t.Fatalf("stop not logged:\n%s", e.Log())
	}
	// The service comes back on the same port: forwarded again.
	ln2 := ns.listen(t, "tcp4", "127.0.0.1:"+lnPort(ln))
	greet(ln2, "back")
	reach(t, addr, "back")
}

func TestPorts_IPv6AndMappedLoopbackListeners(t *testing.T) {
	ns, _, _ := fcInNetns(t)
	v6 := ns.listen(t, "tcp6", "[::1]:0")
	greet(v6, "via ::1")
	mapped := ns.listenMapped(t)
	greet(mapped, "via mapped")
	// Not forwarded: another loopback address, and the wildcard (already
	// reachable directly).
	other := ns.listen(t, "tcp4", "127.0.0.2:0")
	greet(other, "other")
	wild := ns.listen(t, "tcp4", "0.0.0.0:0")
	greet(wild, "wildcard")

	reach(t, net.JoinHostPort(ns.nsIP, lnPort(v6)), "via ::1")
	reach(t, net.JoinHostPort(ns.nsIP, lnPort(mapped)), "via mapped")
	// Both scans that forwarded the others also saw 127.0.0.2.
	refused(t, net.JoinHostPort(ns.nsIP, lnPort(other)))
	reach(t, net.JoinHostPort(ns.nsIP, lnPort(wild)), "wildcard") // directly, not proxied
}

func TestPorts_SnapshotStopsAndRecoveryRestarts(t *testing.T) {
	ns, e, _ := fcInNetns(t)
	ln := ns.listen(t, "tcp4", "127.0.0.1:0")
	greet(ln, "hi")
	addr := net.JoinHostPort(ns.nsIP, lnPort(ln))
	reach(t, addr, "hi")
	held, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	held.SetDeadline(time.Now().Add(10 * time.Second))
	io.ReadFull(held, make([]byte, 2))

	// An /init never restarts forwarding: the proxied connection lives on.
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{}, nil); resp.StatusCode != 204 {
		t.Fatal("init")
	}
	held.Write([]byte("still?"))
	buf := make([]byte, 6)
	if _, err := io.ReadFull(held, buf); err != nil || string(buf) != "still?" {
		t.Fatalf("proxied connection broken by /init: %q %v", buf, err)
	}

	// Prepare stops forwarding synchronously: refused as soon as it
	// answered, the proxied connection closed.
	prepare(t, e)
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("port still forwarded after prepare answered")
	}
	if _, err := held.Read(make([]byte, 1)); err == nil {
		t.Fatal("proxied connection open after prepare")
	}
	time.Sleep(1500 * time.Millisecond) // no scan may bring it back while prepared
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("port forwarded again while prepared")
	}
	if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("health")
	}
	reach(t, addr, "hi")
}

// TestPorts_DisabledWithIsNotFC: a developer machine's loopback services
// must not appear on its LAN address.
func TestPorts_DisabledWithIsNotFC(t *testing.T) {
	ns := newNetns(t)
	ln := ns.listen(t, "tcp4", "127.0.0.1:0")
	greet(ln, "secret")
	e := ns.start(t, envdtest.Options{})
	if !strings.Contains(e.Log(), "port forwarding disabled") {
		t.Fatalf("no log line:\n%s", e.Log())
	}
	time.Sleep(2500 * time.Millisecond) // more than two scan intervals
	if c, err := net.DialTimeout("tcp", net.JoinHostPort(ns.nsIP, lnPort(ln)), time.Second); err == nil {
		c.Close()
		t.Fatal("loopback service reachable from outside with --isnotfc")
	}
}
