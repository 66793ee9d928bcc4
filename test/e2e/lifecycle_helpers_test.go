package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
	"github.com/envd/envd/internal/mmds/mmdstest"
)

// Helpers for the lifecycle tests (PID 1, cgroups, port forwarding, MMDS,
// snapshot/restore). They build real namespaces with iproute2 and
// util-linux, which CI installs; a missing tool fails the test and says so.

var lcCounter atomic.Int32

// lcRun runs a command and fails the test with its output on error.
func lcRun(t *testing.T, argv ...string) {
	t.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

// lcNetns is a network namespace joined to the host by a veth pair, with a
// default route back to the host side, as a VM's eth0 would be.
type lcNetns struct {
	name   string
	hostIP string // host end of the veth
	nsIP   string // namespace end: the "external address" inside
	hostIf string
}

// newNetns creates a network namespace for one test and removes it at the
// end.
func newNetns(t *testing.T) *lcNetns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("network namespace tests need root (CI runs as root)")
	}
	for _, tool := range []string{"ip", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required for this test (iproute2 / util-linux): %v", tool, err)
		}
	}
	n := int(lcCounter.Add(1))
	id := fmt.Sprintf("%d%03d", os.Getpid()%10000, n%1000)
	ns := &lcNetns{
		name:   "envdlc" + id,
		hostIf: "elh" + id,
		hostIP: fmt.Sprintf("10.%d.%d.1", 200+os.Getpid()%50, n%256),
		nsIP:   fmt.Sprintf("10.%d.%d.2", 200+os.Getpid()%50, n%256),
	}
	peer := "eln" + id
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", ns.name).Run()
		_ = exec.Command("ip", "link", "del", ns.hostIf).Run()
	})
	lcRun(t, "ip", "netns", "add", ns.name)
	lcRun(t, "ip", "link", "add", ns.hostIf, "type", "veth", "peer", "name", peer)
	lcRun(t, "ip", "link", "set", peer, "netns", ns.name)
	lcRun(t, "ip", "addr", "add", ns.hostIP+"/30", "dev", ns.hostIf)
	lcRun(t, "ip", "link", "set", ns.hostIf, "up")
	lcRun(t, "ip", "netns", "exec", ns.name, "ip", "addr", "add", ns.nsIP+"/30", "dev", peer)
	lcRun(t, "ip", "netns", "exec", ns.name, "ip", "link", "set", peer, "up")
	lcRun(t, "ip", "netns", "exec", ns.name, "ip", "link", "set", "lo", "up")
	lcRun(t, "ip", "netns", "exec", ns.name, "ip", "route", "add", "default", "via", ns.hostIP)
	return ns
}

// inside runs fn on a thread that has joined the namespace; sockets fn
// creates stay in the namespace. The thread returns to its own namespace
// afterwards. It must not simply die with its goroutine: envd instances
// are started with Pdeathsig, which fires when the thread that forked them
// exits, and any thread may have been that one.
func (ns *lcNetns) inside(t *testing.T, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer own.Close()
		target, err := os.Open("/run/netns/" + ns.name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread ends with the goroutine rather than
			// serve others in the wrong namespace.
			errc <- fmt.Errorf("return to the host namespace: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// listen makes a TCP listener inside the namespace.
func (ns *lcNetns) listen(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	ns.inside(t, func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	return ln
}

// listenMapped listens on ::ffff:127.0.0.1 inside the namespace with an
// AF_INET6 socket that accepts IPv4.
func (ns *lcNetns) listenMapped(t *testing.T) net.Listener {
	t.Helper()
	var ln net.Listener
	ns.inside(t, func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
		if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: netip.MustParseAddr("::ffff:127.0.0.1").As16()}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind ::ffff:127.0.0.1: %w", err)
		}
		if err := unix.Listen(fd, 64); err != nil {
			unix.Close(fd)
			return err
		}
		file := os.NewFile(uintptr(fd), "mapped")
		defer file.Close()
		ln, err = net.FileListener(file)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	return ln
}

// startFC runs envd in Firecracker mode inside the namespace, with a
// private tmpfs on /run so that /run/wrenn is the test's own (read through
// /proc/<pid>/root).
func (ns *lcNetns) startFC(t *testing.T, opts envdtest.Options) *envdtest.Envd {
	t.Helper()
	opts.FC = true
	return ns.start(t, opts)
}

// start runs envd inside the namespace (mode as opts.FC says), with a
// private /run.
func (ns *lcNetns) start(t *testing.T, opts envdtest.Options) *envdtest.Envd {
	t.Helper()
	opts.Host = ns.nsIP
	opts.Wrap = append([]string{"ip", "netns", "exec", ns.name, "sh", "-c", `mount -t tmpfs -o mode=0755 tmpfs /run && exec "$@"`, "sh"}, opts.Wrap...)
	return envdtest.Start(t, opts)
}

// runFile reads a file under envd's /run/wrenn through its mount namespace.
func runFile(t *testing.T, pid int, name string) (string, os.FileMode) {
	t.Helper()
	p := fmt.Sprintf("/proc/%d/root/run/wrenn/%s", pid, name)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), st.Mode().Perm()
}

// nsChild returns the pid of the first child of pid (the namespace's init
// when pid is `unshare --fork`).
func nsChild(t *testing.T, pid int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			child, err := strconv.Atoi(f[0])
			if err == nil {
				return child
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d has no child", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procStat is the state and parent of a process, from /proc/<pid>/stat.
type procStat struct {
	pid, ppid int
	state     byte
	comm      string
}

func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, false
	}
	s := string(b)
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < 0 || close+4 > len(s) {
		return procStat{}, false
	}
	rest := strings.Fields(s[close+2:])
	if len(rest) < 2 {
		return procStat{}, false
	}
	ppid, _ := strconv.Atoi(rest[1])
	return procStat{pid: pid, ppid: ppid, state: rest[0][0], comm: s[open+1 : close]}, true
}

// children lists the processes whose parent is pid.
func children(pid int) []procStat {
	entries, _ := os.ReadDir("/proc")
	var out []procStat
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := readStat(p); ok && st.ppid == pid {
			out = append(out, st)
		}
	}
	return out
}

func zombies(pid int) []procStat {
	var out []procStat
	for _, c := range children(pid) {
		if c.state == 'Z' {
			out = append(out, c)
		}
	}
	return out
}

// lcWait polls cond until it holds (10 s at most).
func lcWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lcScratch is a scratch directory outside /tmp and /run, which envd as
// PID 1 of a new mount namespace covers with its own tmpfs.
func lcScratch(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/var/tmp", "envd-e2e-lc-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// lcStart starts a process through the RPC API and returns the stream.
func lcStart(t *testing.T, ctx context.Context, e *envdtest.Envd, req *pb.StartRequest, hdr ...string) *connect.ServerStreamForClient[pb.StartResponse] {
	t.Helper()
	r := connect.NewRequest(req)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header().Set(hdr[i], hdr[i+1])
	}
	s, err := e.Process().Start(ctx, r)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	return s
}

// lcResult is what a Start stream delivered.
type lcResult struct {
	pid    uint32
	stdout bytes.Buffer
	pty    bytes.Buffer
	end    *pb.ProcessEvent_EndEvent
	err    error
}

// lcDrain reads a Start stream to its end.
func lcDrain(s *connect.ServerStreamForClient[pb.StartResponse]) *lcResult {
	r := &lcResult{}
	for s.Receive() {
		ev := s.Msg().GetEvent()
		switch {
		case ev.GetStart() != nil:
			r.pid = ev.GetStart().GetPid()
		case ev.GetData() != nil:
			r.stdout.Write(ev.GetData().GetStdout())
			r.pty.Write(ev.GetData().GetPty())
		case ev.GetEnd() != nil:
			r.end = ev.GetEnd()
		}
	}
	r.err = s.Err()
	return r
}

// lcExec runs a shell script through the RPC API and returns its result.
func lcExec(t *testing.T, e *envdtest.Envd, script string) *lcResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := lcDrain(lcStart(t, ctx, e, &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}}))
	if r.end == nil {
		t.Fatalf("%q: no end event (%v)", script, r.err)
	}
	return r
}

// rawConn is a raw HTTP/1.1 client connection, so tests can see exactly
// when envd closes it.
type rawConn struct {
	net.Conn
	t  *testing.T
	br *bufio.Reader
}

func dialRaw(t *testing.T, url string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{Conn: c, t: t, br: bufio.NewReader(c)}
}

// get sends a GET on the connection and reads the response.
func (c *rawConn) get(path string) *http.Response {
	c.t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: envd\r\n\r\n", path)
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.t.Fatalf("GET %s on kept-alive connection: %v", path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// closedByPeer reports whether the peer has closed the connection (EOF or
// reset) within d; false if it is still open.
func (c *rawConn) closedByPeer(d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := c.br.ReadByte()
	if err == nil {
		c.t.Fatal("unexpected data on an idle connection")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return true
}

// lcCgroup2Mount finds a mounted cgroup2 hierarchy.
func lcCgroup2Mount(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1]
		}
	}
	t.Fatal("no cgroup2 hierarchy is mounted (needed: /sys/fs/cgroup or /sys/fs/cgroup/unified)")
	return ""
}

// lcCgroupRoot creates a directory in the cgroup2 hierarchy to serve as
// --cgroup-root and removes it with its groups at the end (after envd and
// its processes are gone: cleanups run last-registered first).
func lcCgroupRoot(t *testing.T) (abs, rel string) {
	t.Helper()
	mount := lcCgroup2Mount(t)
	rel = fmt.Sprintf("/envd-e2e-%d-%d", os.Getpid(), lcCounter.Add(1))
	abs = filepath.Join(mount, rel)
	if err := os.Mkdir(abs, 0o755); err != nil {
		t.Fatalf("create test cgroup: %v", err)
	}
	t.Cleanup(func() {
		for _, dir := range []string{filepath.Join(abs, "user"), filepath.Join(abs, "ptys"), abs} {
			deadline := time.Now().Add(10 * time.Second)
			for {
				err := unix.Rmdir(dir)
				if err == nil || errors.Is(err, unix.ENOENT) {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("remove %s: %v", dir, err)
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	return abs, rel
}

// waitExit waits for envd (or its wrapper) to exit and returns the wait
// error.
func waitExit(t *testing.T, e *envdtest.Envd, within time.Duration) {
	t.Helper()
	select {
	case <-e.Done():
	case <-time.After(within):
		t.Fatalf("envd did not exit within %v:\n%s", within, e.Log())
	}
}

// logRecord reports whether envd's JSON log has a line with message msg
// and every field in fields (numbers compare as float64).
func logRecord(log, msg string, fields map[string]any) bool {
	for _, line := range strings.Split(log, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["message"] != msg {
			continue
		}
		ok := true
		for k, v := range fields {
			if rec[k] != v {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// fcWithMMDS runs envd in Firecracker mode inside a fresh network namespace
// (so port forwarding never exposes the test machine's loopback services)
// against a fake MMDS served on the host end of the veth.
func fcWithMMDS(t *testing.T, doc map[string]any, opts envdtest.Options) (*envdtest.Envd, *mmdstest.Server) {
	t.Helper()
	ns := newNetns(t)
	ln, err := net.Listen("tcp", ns.hostIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	fake := mmdstest.NewOn(ln, doc)
	t.Cleanup(fake.Close)
	opts.Env = append(opts.Env, "ENVD_MMDS_ADDRESS="+fake.HostPort())
	return ns.startFC(t, opts), fake
}

// acceptedBy reports whether process pid holds the server end of the TCP
// connection c (i.e. has accepted it): the socket whose remote port is c's
// local port is found in /proc/net/tcp{,6} and its inode among pid's fds.
func (c *rawConn) acceptedBy(pid int) bool {
	port := c.LocalAddr().(*net.TCPAddr).Port
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fl := strings.Fields(line)
			if len(fl) < 10 {
				continue
			}
			_, rport, ok := strings.Cut(fl[2], ":")
			if p, err := strconv.ParseUint(rport, 16, 16); ok && err == nil && int(p) == port {
				inodes["socket:["+fl[9]+"]"] = true
			}
		}
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && inodes[target] {
			return true
		}
	}
	return false
}
