package e2e

import (
	"context"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/envd/envd/gen/process"
)

// In Firecracker mode the host-only routes refuse peers inside the guest
// (D18, http.md §1.5 step 2; issue 11 item 10), and guest connections have a
// cap of their own (D19; item 6). envd runs in FC mode in a network
// namespace: the test reaches it from the host end of the veth, a "guest"
// process dials from inside the namespace over loopback or to the
// namespace's own address.

func TestHardening_InGuestPeersCannotPrepareOrInit(t *testing.T) {
	ns, e, _ := fcInNetns(t)
	port := strconv.Itoa(e.Port)

	// A loopback-only service in the guest is forwarded to the outside.
	ln := ns.listen(t, "tcp4", "127.0.0.1:0")
	greet(ln, "hi")
	fwd := net.JoinHostPort(ns.nsIP, lnPort(ln))
	reach(t, fwd, "hi")

	// The host's open stream and its idle keep-alive connection.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := lcStart(t, ctx, e, &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", "i=0; while [ $i -lt 300 ]; do echo tick$i; i=$((i+1)); sleep 0.05; done"}}})
	lines := make(chan string, 1024)
	streamErr := make(chan error, 1)
	go func() {
		for s.Receive() {
			for _, l := range strings.Fields(string(s.Msg().GetEvent().GetData().GetStdout())) {
				lines <- l
			}
		}
		streamErr <- s.Err()
	}()
	waitTick := func(n int) {
		t.Helper()
		want := "tick" + strconv.Itoa(n)
		timeout := time.After(20 * time.Second)
		for {
			select {
			case l := <-lines:
				if l == want {
					return
				}
			case err := <-streamErr:
				t.Fatalf("stream ended (%v) before %s", err, want)
			case <-timeout:
				t.Fatalf("no %s on the stream", want)
			}
		}
	}
	waitTick(2)
	idle := dialRaw(t, e.URL)
	if resp := idle.get("/health"); resp.StatusCode != 200 || resp.Close {
		t.Fatalf("host health: %d close=%v", resp.StatusCode, resp.Close)
	}

	for _, addr := range []string{"127.0.0.1:" + port, net.JoinHostPort(ns.nsIP, port)} {
		for _, path := range []string{"/snapshot/prepare", "/init", "//init", "/snapshot/prepare/"} {
			resp, b := ns.guestDo(t, addr, "POST", path, map[string]string{"Content-Type": "application/json"}, `{"envVars":{"FROM_GUEST":"1"},"accessToken":"guest-token"}`)
			jsonError(t, resp, b, 403, "not allowed from inside the sandbox")
			if resp.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("%s %s: no Cache-Control: no-store", addr, path)
			}
			if path == "/init" && resp.Header.Get("X-Envd-Version") == "" {
				t.Errorf("403 of /init without X-Envd-Version")
			}
		}
		// The guest may use everything else.
		if resp, b := ns.guestDo(t, addr, "GET", "/health", nil, ""); resp.StatusCode != 200 || !strings.Contains(string(b), "version") {
			t.Fatalf("guest health via %s: %d %q", addr, resp.StatusCode, b)
		}
		if resp, b := ns.guestDo(t, addr, "GET", "/envs", nil, ""); resp.StatusCode != 200 || strings.Contains(string(b), "FROM_GUEST") {
			t.Fatalf("guest envs via %s: %d %q", addr, resp.StatusCode, b)
		}
	}

	// Nothing was prepared: a /health (which would run recovery and cut
	// the stream) changes nothing, keep-alives are on, forwarding runs, and
	// nothing of the /init was applied (no token: /envs needs none).
	if resp := idle.get("/health"); resp.StatusCode != 200 || resp.Close {
		t.Fatalf("host keep-alive connection after the guest's attempts: %d close=%v", resp.StatusCode, resp.Close)
	}
	waitTick(40)
	reach(t, fwd, "hi")
	resp, b := do(t, "GET", e.URL+"/envs", nil, nil)
	if resp.StatusCode != 200 || strings.Contains(string(b), "FROM_GUEST") {
		t.Fatalf("envs after the guest's /init: %d %s", resp.StatusCode, b)
	}
	if strings.Contains(e.Log(), "snapshot prepared") {
		t.Fatalf("a prepare ran:\n%s", e.Log())
	}
	if !strings.Contains(e.Log(), "refused a host-only request from inside the sandbox") {
		t.Fatalf("refusal not logged:\n%s", e.Log())
	}

	// The host may: /init applies, prepare answers 204 (and recovery after).
	resp, _ = postJSON(t, e.URL+"/init", map[string]any{"envVars": map[string]string{"FROM_HOST": "1"}}, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("host /init: %d", resp.StatusCode)
	}
	_, b = do(t, "GET", e.URL+"/envs", nil, nil)
	var envs map[string]string
	if json.Unmarshal(b, &envs) != nil || envs["FROM_HOST"] != "1" {
		t.Fatalf("envs after host /init: %s", b)
	}
	prepare(t, e)
	if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("health after prepare")
	}
}

// TestHardening_GuestConnectionFloodKeepsHostServed: 1,100 idle keep-alive
// connections from inside the guest exceed the guest's cap of 1,024. The
// guest's own oldest idle connections make room for its new ones; the
// host's idle connection is never evicted, and the host is served at once.
func TestHardening_GuestConnectionFloodKeepsHostServed(t *testing.T) {
	ns, e, _ := fcInNetns(t)
	loop := "127.0.0.1:" + strconv.Itoa(e.Port)

	hostIdle := dialRaw(t, e.URL)
	if resp := hostIdle.get("/health"); resp.StatusCode != 200 {
		t.Fatal("host health")
	}
	const flood = 1100
	conns := make([]net.Conn, 0, flood)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	ns.inside(t, func() error {
		for i := 0; i < flood; i++ {
			c, err := net.DialTimeout("tcp", loop, 5*time.Second)
			if err != nil {
				return err
			}
			conns = append(conns, c)
			// Each carries one request and stays open, idle.
			if resp, _, err := rawExchange(c, "GET", "/health", nil, nil, 0, false, 10*time.Second); err != nil || resp.StatusCode != 200 {
				// Evicted before it was answered: a new connection may
				// close the oldest idle ones, never a busy one.
				continue
			}
		}
		return nil
	})
	start := time.Now()
	if resp := hostIdle.get("/health"); resp.StatusCode != 200 {
		t.Fatal("host's idle connection evicted by the guest's flood")
	}
	if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("host health")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("host served after %v", took)
	}
	// The guest is served too, on a new connection.
	if resp, _ := ns.guestDo(t, loop, "GET", "/health", nil, ""); resp.StatusCode != 200 {
		t.Fatal("guest health after its flood")
	}
	closed := 0
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			closed++
		}
	}
	t.Logf("guest flood: %d of %d connections closed by envd; envd has %d descriptors", closed, flood, fdCount(e.Pid()))
	if closed < flood-1024 {
		t.Fatalf("only %d of %d guest connections were closed: the guest cap (1024) is not enforced", closed, flood)
	}
	if !strings.Contains(e.Log(), "closed the least recently used idle connection") {
		t.Fatalf("eviction not logged:\n%s", e.Log())
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
