package peer

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/envd/envd/internal/logging"
)

func TestInside(t *testing.T) {
	c := &Classifier{Addrs: func() ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fe80::1%eth0"), netip.MustParseAddr("fd00::2")}, nil
	}}
	cases := []struct {
		remote, local string
		inside        bool
	}{
		{"127.0.0.1", "127.0.0.1", true},
		{"127.9.8.7", "10.0.0.2", true}, // all of 127/8
		{"::1", "::1", true},
		{"::ffff:127.0.0.1", "::ffff:127.0.0.1", true}, // mapped loopback
		{"10.0.0.2", "10.0.0.2", true},
		{"10.0.0.2", "", true},             // an interface address, local unknown
		{"fe80::1%eth1", "", true},         // zones do not matter
		{"::ffff:10.0.0.2", "", true},      // mapped
		{"172.17.0.5", "172.17.0.5", true}, // same as the local end
		{"fd00::2", "fd00::1", true},
		{"10.0.0.1", "10.0.0.2", false}, // the host end of the link
		{"169.254.0.22", "169.254.0.21", false},
		{"::ffff:10.0.0.1", "::ffff:10.0.0.2", false},
	}
	for _, cs := range cases {
		var local netip.Addr
		if cs.local != "" {
			local = netip.MustParseAddr(cs.local)
		}
		got, err := c.Inside(netip.MustParseAddr(cs.remote), local)
		if err != nil || got != cs.inside {
			t.Errorf("Inside(%s, %s) = %v, %v; want %v", cs.remote, cs.local, got, err, cs.inside)
		}
	}
	// Unreadable interface addresses: fail closed.
	broken := &Classifier{Addrs: func() ([]netip.Addr, error) { return nil, errors.New("netlink") }}
	if got, err := broken.Inside(netip.MustParseAddr("10.0.0.1"), netip.Addr{}); !got || err == nil {
		t.Fatalf("broken: %v %v", got, err)
	}
	if got, _ := broken.Inside(netip.Addr{}, netip.Addr{}); !got {
		t.Fatal("no address must count as inside")
	}
	// The kernel's own addresses: loopback is always one.
	var real Classifier
	if got, err := real.Inside(netip.MustParseAddr("127.0.0.1"), netip.Addr{}); !got || err != nil {
		t.Fatalf("kernel: %v %v", got, err)
	}
}

func TestParseAddr(t *testing.T) {
	for in, want := range map[string]string{"10.1.2.3:80": "10.1.2.3", "[::1]:5": "::1", "[fe80::1%eth0]:5": "fe80::1%eth0", "garbage": "invalid IP", "1.2.3.4": "1.2.3.4"} {
		if got := ParseAddr(in).String(); got != want {
			t.Errorf("ParseAddr(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestGuard(t *testing.T) {
	c := &Classifier{Addrs: func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("10.0.0.2")}, nil }}
	h := c.Guard([]string{"/init", "/snapshot/prepare"}, logging.Discard(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(299)
	}))
	do := func(method, path, remote string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, nil)
		r.RemoteAddr = remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	for _, path := range []string{"/init", "/snapshot/prepare", "//init", "/init/", "/x/../init"} {
		for _, remote := range []string{"127.0.0.1:5555", "10.0.0.2:5555", "[::1]:1"} {
			w := do("POST", path, remote)
			if w.Code != 403 || !strings.Contains(w.Body.String(), `"message":"not allowed from inside the sandbox"`) || w.Header().Get("Cache-Control") != "no-store" {
				t.Errorf("%s from %s: %d %q", path, remote, w.Code, w.Body.String())
			}
		}
		if w := do("POST", path, "10.0.0.1:5555"); w.Code != 299 {
			t.Errorf("%s from the host: %d", path, w.Code)
		}
	}
	for _, path := range []string{"/health", "/files", "/process.Process/Start", "/initx"} {
		if w := do("POST", path, "127.0.0.1:1"); w.Code != 299 {
			t.Errorf("%s from inside: %d", path, w.Code)
		}
	}
}
