package e2e

import (
	"bytes"
	"context"
	"crypto/sha512"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/process"
	"github.com/envd/envd/gen/process/processconnect"
	"github.com/envd/envd/internal/envdtest"
)

func TestHealth_VersionAndHeaders(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	resp, body := do(t, "GET", e.URL+"/health", nil, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	var h struct{ Version string }
	if err := json.Unmarshal(body, &h); err != nil || h.Version != envdtest.Version(t) {
		t.Fatalf("body %q, want version %s", body, envdtest.Version(t))
	}
	if !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(h.Version) {
		t.Fatalf("version %q is not MAJOR.MINOR.PATCH", h.Version)
	}
	resp, body = do(t, "HEAD", e.URL+"/health", nil, nil)
	if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("Cache-Control") != "no-store" || resp.ContentLength != int64(len(`{"version":""}`+"\n")+len(h.Version)) {
		t.Fatalf("HEAD %d len %d body %q", resp.StatusCode, resp.ContentLength, body)
	}
}

func TestRouting_UnknownAndWrongMethod(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	for _, p := range []string{"/nope", "/health/"} {
		resp, body := do(t, "GET", e.URL+p, nil, nil)
		if resp.StatusCode != 404 || string(body) != "404 page not found\n" || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf("%s: %d %q", p, resp.StatusCode, body)
		}
	}
	// The control plane (control-plane.md §1.1) is POST only.
	for _, p := range []string{"/freeze", "/unfreeze", "/collapse", "/fsfreeze", "/fsthaw", "/upgrade"} {
		resp, body := do(t, "GET", e.URL+p, nil, nil)
		if resp.StatusCode != 405 || string(body) != "Method Not Allowed\n" || resp.Header.Get("Allow") != "POST" {
			t.Errorf("GET %s: %d %q Allow %q", p, resp.StatusCode, body, resp.Header.Get("Allow"))
		}
	}
	resp, body := do(t, "POST", e.URL+"/health", nil, nil)
	if resp.StatusCode != 405 || string(body) != "Method Not Allowed\n" || !strings.Contains(resp.Header.Get("Allow"), "GET") {
		t.Fatalf("405: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	resp, _ = do(t, "GET", e.URL+"/init", nil, nil)
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET /init: %d %v", resp.StatusCode, resp.Header)
	}
}

func TestMetrics_AllFields(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	resp, body := do(t, "GET", e.URL+"/metrics", nil, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	var m map[string]json.Number
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ts", "cpu_count", "cpu_used_pct", "mem_total", "mem_used", "mem_cache", "mem_total_mib", "mem_used_mib", "disk_used", "disk_total"} {
		if _, ok := m[k]; !ok {
			t.Errorf("field %s missing from %s", k, body)
		}
	}
	for _, k := range []string{"ts", "cpu_count", "mem_total", "mem_used", "mem_cache", "mem_total_mib", "mem_used_mib", "disk_used", "disk_total"} {
		if _, err := m[k].Int64(); err != nil {
			t.Errorf("%s is not an integer: %s", k, m[k])
		}
	}
	ts, _ := m["ts"].Int64()
	if d := time.Since(time.Unix(ts, 0)); d < -5*time.Second || d > 5*time.Second {
		t.Errorf("ts %d is not now", ts)
	}
	total, _ := m["mem_total"].Int64()
	mib, _ := m["mem_total_mib"].Int64()
	used, _ := m["mem_used"].Int64()
	if total <= 0 || mib != total/1048576 || used <= 0 || used > total {
		t.Errorf("memory figures inconsistent: %s", body)
	}
	pct, _ := m["cpu_used_pct"].Float64()
	if pct < 0 || pct > 100 {
		t.Errorf("cpu_used_pct %v", pct)
	}
}

func TestInit_EnvReplaceAndInternalVarsProtected(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	envs := func() map[string]string {
		resp, body := do(t, "GET", e.URL+"/envs", nil, nil)
		if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "no-store" {
			t.Fatalf("/envs %d", resp.StatusCode)
		}
		var m map[string]string
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	if got := envs(); len(got) != 1 || got["WRENN_SANDBOX"] != "false" {
		t.Fatalf("initial /envs %v", got)
	}
	resp, body := postJSON(t, e.URL+"/init", map[string]any{"envVars": map[string]string{"A": "1", "B": "2", "WRENN_SANDBOX": "true", "WRENN_SANDBOX_ID": "evil"}}, nil)
	if resp.StatusCode != 204 || len(body) != 0 || resp.Header.Get("X-Envd-Version") != envdtest.Version(t) || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("/init %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if got := envs(); len(got) != 3 || got["A"] != "1" || got["B"] != "2" || got["WRENN_SANDBOX"] != "false" {
		t.Fatalf("after init %v", got)
	}
	postJSON(t, e.URL+"/init", map[string]any{"envVars": map[string]string{"C": "3"}}, nil)
	if got := envs(); len(got) != 2 || got["C"] != "3" {
		t.Fatalf("envVars must replace: %v", got)
	}
	postJSON(t, e.URL+"/init", map[string]any{"defaultUser": "root"}, nil)
	if got := envs(); got["C"] != "3" {
		t.Fatalf("absent envVars must keep: %v", got)
	}
	// The Wrenn host's bare /init: no body, no Content-Type.
	resp, _ = do(t, "POST", e.URL+"/init", nil, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("empty /init %d", resp.StatusCode)
	}
}

func TestInit_StaleTimestampIgnored(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	send := func(ts string, v string) {
		resp, _ := postJSON(t, e.URL+"/init", map[string]any{"timestamp": ts, "envVars": map[string]string{"V": v}}, nil)
		if resp.StatusCode != 204 {
			t.Fatalf("init %s: %d", ts, resp.StatusCode)
		}
	}
	send("2026-01-01T00:00:10.5Z", "new")
	send("2026-01-01T00:00:10.4Z", "stale")
	_, body := do(t, "GET", e.URL+"/envs", nil, nil)
	if !strings.Contains(string(body), `"V":"new"`) {
		t.Fatalf("stale request applied: %s", body)
	}
	send("2026-01-01T00:00:10.5Z", "equal")
	_, body = do(t, "GET", e.URL+"/envs", nil, nil)
	if !strings.Contains(string(body), `"V":"equal"`) {
		t.Fatalf("equal timestamp must apply: %s", body)
	}
}

func TestInit_MalformedBodies(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	for _, b := range []string{`{`, `[]`, `"x"`, `{"envVars":{"A":1}}`, `{"timestamp":"soon"}`, `{"accessToken":""}`, `{"accessToken":"a\\u0062"}`, `{"defaultUser":5}`} {
		resp, body := do(t, "POST", e.URL+"/init", strings.NewReader(b), map[string]string{"Content-Type": "application/json"})
		if resp.StatusCode != 400 || len(body) != 0 || resp.Header.Get("X-Envd-Version") == "" || resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: %d %q %v", b, resp.StatusCode, body, resp.Header)
		}
	}
	resp, body := do(t, "POST", e.URL+"/init", strings.NewReader(`{"volumeMounts":[{"path":"/mnt/x"}]}`), nil)
	if resp.StatusCode != 400 || string(body) != "failed to setup NFS volumes: volumeMounts[0]: nfs_target and path are required" ||
		resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("volume validation: %d %q", resp.StatusCode, body)
	}
	// The daemon keeps serving.
	if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("envd stopped serving after bad input")
	}
}

func TestAuth_TokenMatrix(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{Args: []string{"--verbose"}})
	proc := e.Process(connect.WithProtoJSON())
	// No token: everything open.
	if resp, _ := do(t, "GET", e.URL+"/envs", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("open /envs %d", resp.StatusCode)
	}
	const tok = "0123456789abcdef0123456789abcdef"
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"accessToken": tok}, nil); resp.StatusCode != 204 {
		t.Fatalf("set token %d", resp.StatusCode)
	}
	hdr := map[string]string{"X-Access-Token": tok}
	bad := map[string]string{"X-Access-Token": "wrong"}
	for _, c := range []struct{ method, path string }{
		{"GET", "/envs"}, {"GET", "/metrics"}, {"HEAD", "/envs"}, {"POST", "/files/compose"},
		{"POST", "/process.Process/List"}, {"POST", "/filesystem.Filesystem/Stat"}, {"GET", "/nope"},
	} {
		for _, h := range []map[string]string{nil, bad} {
			resp, body := do(t, c.method, e.URL+c.path, strings.NewReader("{}"), mergeHdr(h, map[string]string{"Content-Type": "application/json"}))
			if c.method == "HEAD" {
				if resp.StatusCode != 401 {
					t.Errorf("HEAD %s: %d", c.path, resp.StatusCode)
				}
				continue
			}
			jsonError(t, resp, body, 401, "unauthorized access, please provide a valid access token or method signing if supported")
		}
	}
	if resp, _ := do(t, "GET", e.URL+"/envs", nil, hdr); resp.StatusCode != 200 {
		t.Fatalf("/envs with token %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", e.URL+"/metrics", nil, hdr); resp.StatusCode != 200 {
		t.Fatalf("/metrics with token %d", resp.StatusCode)
	}
	// Exempt routes.
	if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("/health must be exempt")
	}
	if resp, _ := do(t, "HEAD", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("HEAD /health must be exempt")
	}
	// RPC with the token reaches the service (any code but unauthenticated).
	req := connect.NewRequest(&process.ListRequest{})
	req.Header().Set("X-Access-Token", tok)
	if _, err := proc.List(context.Background(), req); connect.CodeOf(err) == connect.CodeUnauthenticated {
		t.Fatalf("RPC with token refused: %v", err)
	}
	if _, err := proc.List(context.Background(), connect.NewRequest(&process.ListRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("RPC without token: %v", err)
	}
	// /init rules: a different token without MMDS → 401; clearing without
	// authorisation → 401; the same token again → 204.
	resp, body := postJSON(t, e.URL+"/init", map[string]any{"accessToken": "another"}, nil)
	if resp.StatusCode != 401 || string(body) != "access token validation failed" || resp.Header.Get("X-Envd-Version") == "" {
		t.Fatalf("wrong token on /init: %d %q", resp.StatusCode, body)
	}
	resp, body = postJSON(t, e.URL+"/init", map[string]any{}, nil)
	if resp.StatusCode != 401 || string(body) != "access token reset not authorized" {
		t.Fatalf("reset on /init: %d %q", resp.StatusCode, body)
	}
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"accessToken": tok, "envVars": map[string]string{"K": "v"}}, nil); resp.StatusCode != 204 {
		t.Fatalf("same token %d", resp.StatusCode)
	}
	if strings.Contains(e.Log(), tok) || strings.Contains(e.Log(), "another") {
		t.Fatal("token written to the log")
	}
}

func mergeHdr(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

func TestAuth_MMDSHashAuthorisesInit(t *testing.T) {
	hash := func(s string) string { h := sha512.Sum512([]byte(s)); return hex.EncodeToString(h[:]) }
	e, fake := fcWithMMDS(t, map[string]any{"instanceID": "sb-auth", "envID": "tpl", "accessTokenHash": hash("first")}, envdtest.Options{})
	if resp, body := postJSON(t, e.URL+"/init", map[string]any{"accessToken": "wrong"}, nil); resp.StatusCode != 401 || string(body) != "access token validation failed" {
		t.Fatalf("MMDS hash must refuse other tokens on first setup: %d %q", resp.StatusCode, body)
	}
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"accessToken": "first"}, nil); resp.StatusCode != 204 {
		t.Fatalf("hash-matching token %d", resp.StatusCode)
	}
	fake.Set(map[string]any{"instanceID": "sb-auth", "accessTokenHash": hash("second")})
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"accessToken": "second"}, nil); resp.StatusCode != 204 {
		t.Fatalf("rotation authorised by MMDS %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", e.URL+"/envs", nil, map[string]string{"X-Access-Token": "second"}); resp.StatusCode != 200 {
		t.Fatal("rotated token not in force")
	}
	if resp, body := postJSON(t, e.URL+"/init", map[string]any{}, nil); resp.StatusCode != 401 || string(body) != "access token reset not authorized" {
		t.Fatalf("reset without MMDS authorisation: %d %q", resp.StatusCode, body)
	}
	fake.Set(map[string]any{"instanceID": "sb-auth", "accessTokenHash": hash("")})
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{}, nil); resp.StatusCode != 204 {
		t.Fatalf("authorised reset %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", e.URL+"/envs", nil, nil); resp.StatusCode != 200 {
		t.Fatal("token not cleared")
	}
	// FC mode logs JSON lines with the spec's fields.
	for _, line := range strings.Split(strings.TrimSpace(e.Log()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("FC-mode log line is not JSON: %q", line)
		}
		for _, k := range []string{"timestamp", "level", "logger", "message"} {
			if _, ok := rec[k]; !ok {
				t.Fatalf("log line without %s: %q", k, line)
			}
		}
	}
}

func TestBasicAuth_UnknownUser(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	auth := map[string]string{"Authorization": "Basic bm9ib2R5LWhlcmUtMTIzOg==", "Content-Type": "application/json"} // "nobody-here-123:"
	resp, body := do(t, "POST", e.URL+"/process.Process/List", strings.NewReader("{}"), auth)
	if resp.StatusCode != 401 || string(body) != `{"code":"unauthenticated","message":"invalid username: 'nobody-here-123'"}` {
		t.Fatalf("unary: %d %q", resp.StatusCode, body)
	}
	auth["Content-Type"] = "application/connect+json"
	resp, body = do(t, "POST", e.URL+"/process.Process/Start", bytes.NewReader([]byte{0, 0, 0, 0, 2, '{', '}'}), auth)
	if resp.StatusCode != 200 || len(body) < 5 || body[0] != 2 || !strings.Contains(string(body[5:]), `"code":"unauthenticated"`) {
		t.Fatalf("stream: %d %q", resp.StatusCode, body)
	}
	resp, body = do(t, "GET", e.URL+"/files?path=/etc/hostname", nil, map[string]string{"Authorization": "Basic bm9ib2R5LWhlcmUtMTIzOg=="})
	if resp.StatusCode != 401 || !strings.Contains(string(body), `"code":"unauthenticated"`) {
		t.Fatalf("plain route: %d %q", resp.StatusCode, body)
	}
}

func TestCORS_PreflightAndActual(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"accessToken": "tok-cors"}, nil); resp.StatusCode != 204 {
		t.Fatal("set token")
	}
	resp, _ := do(t, "OPTIONS", e.URL+"/process.Process/Start", nil, map[string]string{
		"Origin": "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "connect-protocol-version,content-type,x-access-token",
	})
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "*" || resp.Header.Get("Access-Control-Allow-Methods") != "POST" ||
		resp.Header.Get("Access-Control-Allow-Headers") != "connect-protocol-version,content-type,x-access-token" || resp.Header.Get("Access-Control-Max-Age") != "7200" {
		t.Fatalf("preflight (must not need the token) %d %v", resp.StatusCode, resp.Header)
	}
	resp, _ = do(t, "GET", e.URL+"/health", nil, map[string]string{"Origin": "https://app.example"})
	if resp.Header.Get("Access-Control-Allow-Origin") != "*" || !strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), "Connect-Protocol-Version") {
		t.Fatalf("actual %v", resp.Header)
	}
}

func TestH2C_PriorKnowledgeAndGRPC(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: validated(&http.Transport{Protocols: protocols, TLSClientConfig: &tls.Config{}})}
	resp, err := h2.Get(e.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Fatalf("h2c: proto %s status %d", resp.Proto, resp.StatusCode)
	}
	// gRPC (requires HTTP/2) reaches the process service.
	client := processconnect.NewProcessClient(h2, e.URL, connect.WithGRPC())
	_, err = client.List(context.Background(), connect.NewRequest(&process.ListRequest{}))
	if code := connect.CodeOf(err); err != nil && (code == connect.CodeUnavailable || code == connect.CodeUnknown) {
		t.Fatalf("gRPC over h2c: %v", err)
	}
}

func TestDeadlineHeader(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	for _, c := range []struct {
		v    string
		want int
	}{{"0", 0}, {"", 0}, {"000", 0}, {"abc", 400}, {"12345678901", 400}, {"-5", 400}} {
		resp, body := do(t, "POST", e.URL+"/process.Process/List", strings.NewReader("{}"), map[string]string{"Content-Type": "application/json", "Connect-Timeout-Ms": c.v})
		if c.want == 400 {
			if resp.StatusCode != 400 || !strings.Contains(string(body), "invalid_argument") {
				t.Errorf("%q: %d %q", c.v, resp.StatusCode, body)
			}
			continue
		}
		if strings.Contains(string(body), "deadline_exceeded") || strings.Contains(string(body), "invalid_argument") {
			t.Errorf("%q must mean no deadline: %d %q", c.v, resp.StatusCode, body)
		}
	}
}

func TestSnapshotPrepare_RespondsAndRecoversOnHealth(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	resp, body := do(t, "POST", e.URL+"/snapshot/prepare", nil, nil)
	if resp.StatusCode != 204 || len(body) != 0 || resp.Header.Get("Cache-Control") != "no-store" || !resp.Close {
		t.Fatalf("prepare %d close=%v %v", resp.StatusCode, resp.Close, resp.Header)
	}
	// Idempotent while prepared; /metrics still answers.
	if resp, _ := do(t, "POST", e.URL+"/snapshot/prepare", nil, nil); resp.StatusCode != 204 {
		t.Fatal("second prepare")
	}
	if resp, _ := do(t, "GET", e.URL+"/metrics", nil, nil); resp.StatusCode != 200 {
		t.Fatal("metrics while prepared")
	}
	if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("health")
	}
	do(t, "GET", e.URL+"/health", nil, nil)
	if n := strings.Count(e.Log(), "recovered after restore"); n != 1 {
		t.Fatalf("recovery ran %d times:\n%s", n, e.Log())
	}
	if !regexp.MustCompile(`recovered after restore rss_kib=\d+ goroutines=\d+`).MatchString(e.Log()) {
		t.Fatalf("recovery line lacks rss_kib/goroutines:\n%s", e.Log())
	}
}

func TestSIGTERM_ExitsZero(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	if err := e.Stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, e.Log())
	}
	if !strings.Contains(e.Log(), "shutting down") {
		t.Fatal("no shutdown log line")
	}
	// The port is free again.
	ln, err := net.Listen("tcp", e.URL[len("http://"):])
	if err != nil {
		t.Fatalf("port still held: %v", err)
	}
	ln.Close()
}

func TestSignals_IgnoredOnesKeepServing(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	for _, s := range []syscall.Signal{syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGQUIT} {
		e.Signal(s)
	}
	time.Sleep(100 * time.Millisecond)
	if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("envd died on an ignored signal")
	}
}

func TestCLI_VersionCommitAndFlags(t *testing.T) {
	bin := envdtest.Binary(t)
	run := func(args ...string) (string, string, int) {
		cmd := exec.Command(bin, args...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), code
	}
	out, _, code := run("--version")
	if code != 0 || out != envdtest.Version(t)+"\n" {
		t.Fatalf("--version: %d %q", code, out)
	}
	out, _, code = run("-version", "--commit")
	if code != 0 || out != envdtest.Version(t)+"\n" {
		t.Fatalf("--version wins over --commit: %q", out)
	}
	out, _, code = run("--commit")
	commit := strings.TrimSpace(out)
	if code != 0 || !regexp.MustCompile(`^([0-9a-f]{7,40}|e2etest)$`).MatchString(commit) {
		t.Fatalf("--commit: %d %q (stamped commit expected)", code, out)
	}
	_, errOut, code := run("--no-such-flag")
	if code != 2 || !strings.Contains(errOut, "-cgroup-root") {
		t.Fatalf("unknown flag: %d %q", code, errOut)
	}
	_, errOut, code = run("-h")
	if code != 0 || !strings.Contains(errOut, "-isnotfc") {
		t.Fatalf("-h: %d %q", code, errOut)
	}
	for _, args := range [][]string{{"--port", "0"}, {"--port=70000"}, {"-port", "x"}} {
		if _, _, code := run(args...); code != 2 {
			t.Fatalf("%v: exit %d, want 2", args, code)
		}
	}
	// Single-dash and = forms with a positional argument after the flags.
	port := envdtest.FreePort(t)
	cmd := exec.Command(bin, "-isnotfc=true", "-port="+itoa(port), "stray")
	var logBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://127.0.0.1:" + itoa(port) + "/health")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("single-dash flags: envd not serving: %s", logBuf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if !strings.Contains(logBuf.String(), "ignoring positional arguments") {
		t.Fatalf("positional argument not logged: %s", logBuf.String())
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

// TestInit_HostsAndCABundle runs envd in a private mount namespace where
// /etc/hosts and the trust store are test files, so the machine's own files
// are never touched; /etc/hosts being a bind mount also exercises the
// in-place fallback for a file that cannot be renamed over.
func TestInit_HostsAndCABundle(t *testing.T) {
	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	certs := filepath.Join(dir, "certs")
	local := filepath.Join(dir, "local")
	must(t, os.WriteFile(hosts, []byte("127.0.0.1\tlocalhost\n10.9.9.9\tevents.wrenn.local\n"), 0o644))
	must(t, os.MkdirAll(certs, 0o755))
	must(t, os.MkdirAll(local, 0o755))
	must(t, os.WriteFile(filepath.Join(certs, "ca-certificates.crt"), []byte("SYSTEM-CA\n"), 0o644))
	script := "set -e; mount --bind " + hosts + " /etc/hosts; mkdir -p /etc/ssl/certs /usr/local/share/ca-certificates; " +
		"mount --bind " + certs + " /etc/ssl/certs; mount --bind " + local + " /usr/local/share/ca-certificates; exec \"$@\""
	e := envdtest.Start(t, envdtest.Options{Wrap: []string{"unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"}})
	resp, _ := postJSON(t, e.URL+"/init", map[string]any{"hyperloopIP": "10.1.2.3", "caBundle": "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\n"}, nil)
	if resp.StatusCode != 204 {
		t.Fatalf("init %d", resp.StatusCode)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, body := do(t, "GET", e.URL+"/envs", nil, nil)
		if strings.Contains(string(body), `"WRENN_EVENTS_ADDRESS":"http://10.1.2.3"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events address never set: %s", body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(hosts)
	if string(b) != "127.0.0.1\tlocalhost\n10.1.2.3\tevents.wrenn.local\n" {
		t.Fatalf("hosts %q", b)
	}
	b, _ = os.ReadFile(filepath.Join(certs, "ca-certificates.crt"))
	if string(b) != "SYSTEM-CA\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n" {
		t.Fatalf("bundle %q", b)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		b, _ = os.ReadFile(filepath.Join(local, "wrenn-ca.crt"))
		if string(b) == "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("local CA copy %q", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// hyperloopIp alias and an invalid address (ignored).
	postJSON(t, e.URL+"/init", map[string]any{"hyperloopIp": "not-an-ip"}, nil)
	postJSON(t, e.URL+"/init", map[string]any{"hyperloopIp": "fd00::5"}, nil)
	deadline = time.Now().Add(5 * time.Second)
	for {
		_, body := do(t, "GET", e.URL+"/envs", nil, nil)
		if strings.Contains(string(body), `"WRENN_EVENTS_ADDRESS":"http://[fd00::5]"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("IPv6 events address never set: %s", body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestInit_VolumesLedger uses a fake mount program on envd's PATH: the
// ledger must skip a volume already mounted by the same lifecycle.
func TestInit_VolumesLedger(t *testing.T) {
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	must(t, os.WriteFile(filepath.Join(dir, "mount"), []byte("#!/bin/sh\necho \"$@\" >> "+calls+"\ncase \"$*\" in *fail*) echo 'mount.nfs: access denied' >&2; exit 32;; esac\nexit 0\n"), 0o755))
	e := envdtest.Start(t, envdtest.Options{Env: []string{"PATH=" + dir + ":" + os.Getenv("PATH")}})
	vol := map[string]any{"volumeMounts": []map[string]string{{"nfs_target": "10.0.0.1:/export/v", "path": filepath.Join(dir, "mnt", "v")}}, "lifecycleID": "L1"}
	for i := 0; i < 2; i++ {
		if resp, body := postJSON(t, e.URL+"/init", vol, nil); resp.StatusCode != 204 {
			t.Fatalf("init %d %q", resp.StatusCode, body)
		}
	}
	b, _ := os.ReadFile(calls)
	if n := strings.Count(string(b), "\n"); n != 1 || !strings.Contains(string(b), "-t nfs -o fg,hard,sync,") || !strings.Contains(string(b), "10.0.0.1:/export/v "+filepath.Join(dir, "mnt", "v")) {
		t.Fatalf("mount calls %q", b)
	}
	if st, err := os.Stat(filepath.Join(dir, "mnt", "v")); err != nil || !st.IsDir() {
		t.Fatal("mount point not created")
	}
	vol["lifecycleID"] = "L2"
	postJSON(t, e.URL+"/init", vol, nil)
	b, _ = os.ReadFile(calls)
	if strings.Count(string(b), "\n") != 2 {
		t.Fatalf("new lifecycle must remount: %q", b)
	}
	resp, body := postJSON(t, e.URL+"/init", map[string]any{"volumeMounts": []map[string]string{{"nfs_target": "h:/fail", "path": filepath.Join(dir, "f")}}}, nil)
	if resp.StatusCode != 400 || !strings.HasPrefix(string(body), "failed to setup NFS volumes: ") || !strings.Contains(string(body), "access denied") {
		t.Fatalf("failing mount: %d %q", resp.StatusCode, body)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
