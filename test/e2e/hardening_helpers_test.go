package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Helpers of the hardening tests (issue 11): raw requests whose body the
// test controls byte by byte, requests from inside a network namespace (a
// guest process), and envd's resource use read from /proc.

// rawExchange sends one HTTP/1.1 request on c and reads the response. The
// head is written first, then body (a Content-Length body unless chunked)
// from a goroutine, so that a server answering before it has read the body
// (413) is heard; write errors after that are expected and ignored. The
// response body is read in full. It returns the response or the read error.
func rawExchange(c net.Conn, method, path string, hdr map[string]string, body io.Reader, length int64, chunked bool, timeout time.Duration) (*http.Response, []byte, error) {
	var head strings.Builder
	fmt.Fprintf(&head, "%s %s HTTP/1.1\r\nHost: envd\r\n", method, path)
	for k, v := range hdr {
		fmt.Fprintf(&head, "%s: %s\r\n", k, v)
	}
	switch {
	case chunked:
		head.WriteString("Transfer-Encoding: chunked\r\n")
	case body != nil:
		fmt.Fprintf(&head, "Content-Length: %d\r\n", length)
	}
	head.WriteString("\r\n")
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, head.String()); err != nil {
		return nil, nil, err
	}
	if body != nil {
		go func() {
			w := io.Writer(c)
			buf := make([]byte, 64<<10)
			for {
				n, err := body.Read(buf)
				if n > 0 {
					if chunked {
						if _, werr := fmt.Fprintf(w, "%x\r\n%s\r\n", n, buf[:n]); werr != nil {
							return
						}
					} else if _, werr := w.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					if chunked && err == io.EOF {
						io.WriteString(w, "0\r\n\r\n")
					}
					return
				}
			}
		}()
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, nil, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b, err
}

// slowReader yields the bytes of s one chunk every interval.
type slowReader struct {
	s        []byte
	chunk    int
	interval time.Duration
}

func (r *slowReader) Read(p []byte) (int, error) {
	if len(r.s) == 0 {
		return 0, io.EOF
	}
	time.Sleep(r.interval)
	n := copy(p[:min(len(p), r.chunk)], r.s)
	r.s = r.s[n:]
	return n, nil
}

// hostPort is envd's address without the scheme.
func hostPort(url string) string { return strings.TrimPrefix(url, "http://") }

// procStatusKB reads a "Name:   123 kB" field of /proc/<pid>/status.
func procStatusKB(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read status of %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// rssPeak records the peak VmRSS of a process until stopped.
type rssPeak struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	peak int // kB
}

func watchRSS(t *testing.T, pid int) *rssPeak {
	s := &rssPeak{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
				for _, line := range strings.Split(string(b), "\n") {
					if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
						n, _ := strconv.Atoi(strings.Fields(v)[0])
						s.mu.Lock()
						s.peak = max(s.peak, n)
						s.mu.Unlock()
					}
				}
			}
			select {
			case <-s.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { s.Stop() })
	return s
}

// Stop ends sampling and returns the peak in MiB.
func (s *rssPeak) Stop() int {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak / 1024
}

// fdCount is the number of descriptors pid has open.
func fdCount(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// dialIn opens a TCP connection from inside the namespace (as a guest
// process would).
func (ns *lcNetns) dialIn(t *testing.T, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	ns.inside(t, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 10*time.Second)
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// guestDo sends one request from inside the namespace to addr (host:port)
// on a fresh connection and returns the response with its body.
func (ns *lcNetns) guestDo(t *testing.T, addr, method, path string, hdr map[string]string, body string) (*http.Response, []byte) {
	t.Helper()
	c := ns.dialIn(t, addr)
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	resp, b, err := rawExchange(c, method, path, hdr, r, int64(len(body)), false, 10*time.Second)
	if err != nil {
		t.Fatalf("%s %s from inside: %v", method, path, err)
	}
	return resp, b
}
