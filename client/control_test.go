package client_test

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/client"
	"github.com/envd/envd/internal/envdtest"
)

func TestNew_Addresses(t *testing.T) {
	ok := map[string]string{
		"10.0.0.2":                  "http://10.0.0.2:49983",
		"10.0.0.2:8080":             "http://10.0.0.2:8080",
		"http://localhost":          "http://localhost:49983",
		"http://localhost:1/":       "http://localhost:1",
		"[::1]":                     "http://[::1]:49983",
		" https://sb.example.com/e": "https://sb.example.com:49983/e",
	}
	for in, want := range ok {
		c, err := client.New(in)
		if err != nil {
			t.Errorf("New(%q): %v", in, err)
			continue
		}
		if c.URL() != want {
			t.Errorf("New(%q).URL() = %q, want %q", in, c.URL(), want)
		}
	}
	for _, bad := range []string{"", "ftp://x", "http://", "http://h/?a=1", "http://h/#f", "http://[::1"} {
		if _, err := client.New(bad); err == nil {
			t.Errorf("New(%q) succeeded", bad)
		}
	}
	if _, err := client.New("h", client.WithKeepaliveInterval(-time.Second)); err == nil {
		t.Error("negative keepalive accepted")
	}
}

func TestNewTransport_Defaults(t *testing.T) {
	tr := client.NewTransport()
	if tr.ResponseHeaderTimeout != 30*time.Second || tr.MaxIdleConnsPerHost != 10 || tr.IdleConnTimeout != 90*time.Second {
		t.Fatalf("transport %+v", tr)
	}
	if tr.Proxy != nil {
		t.Fatal("the default transport must not use an environment proxy")
	}
}

func TestHealthMetricsEnvs(t *testing.T) {
	_, c := start(t)
	ver, err := c.Health(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if ver != envdtest.Version(t) {
		t.Fatalf("version %q, want %q", ver, envdtest.Version(t))
	}
	m, err := c.Metrics(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if m.CPUCount < 1 || m.MemTotal <= 0 || m.MemUsed <= 0 || m.DiskTotal <= 0 || m.MemTotalMiB != m.MemTotal>>20 {
		t.Fatalf("implausible metrics %+v", m)
	}
	if d := time.Since(m.Time()); d < -time.Minute || d > time.Minute {
		t.Fatalf("metrics timestamp %v is off by %v", m.Time(), d)
	}
	envs, err := c.Envs(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if envs["WRENN_SANDBOX"] != "false" {
		t.Fatalf("envs %v: want WRENN_SANDBOX=false with --isnotfc", envs)
	}
}

func TestInit_EnvVarsReplaceAndClear(t *testing.T) {
	_, c := start(t)
	ver, err := c.Init(ctx(t), &client.InitRequest{EnvVars: map[string]string{"A": "1", "B": "2"}, Timestamp: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if ver != envdtest.Version(t) {
		t.Fatalf("X-Envd-Version %q", ver)
	}
	envs, _ := c.Envs(ctx(t))
	if envs["A"] != "1" || envs["B"] != "2" {
		t.Fatalf("envs after init: %v", envs)
	}
	// The new variables reach new processes.
	res, err := c.Run(ctx(t), "/bin/sh", []string{"-c", "echo $A$B"})
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "12\n" {
		t.Fatalf("process saw %q", res.Stdout)
	}
	// nil EnvVars: unchanged; empty non-nil: cleared.
	if _, err := c.Init(ctx(t), &client.InitRequest{DefaultWorkdir: "/tmp"}); err != nil {
		t.Fatal(err)
	}
	if envs, _ := c.Envs(ctx(t)); envs["A"] != "1" {
		t.Fatalf("envs changed by an init without envVars: %v", envs)
	}
	if _, err := c.Init(ctx(t), &client.InitRequest{EnvVars: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	if envs, _ := c.Envs(ctx(t)); envs["A"] != "" || envs["B"] != "" {
		t.Fatalf("envs not cleared: %v", envs)
	}
	// The default workdir applies to processes without a cwd.
	res, err = c.Run(ctx(t), "pwd", nil)
	if err != nil || string(res.Stdout) != "/tmp\n" {
		t.Fatalf("pwd with default workdir: %q %v", res.Stdout, err)
	}
	// No body at all, like the host after a restore.
	if _, err := c.Init(ctx(t), nil); err != nil {
		t.Fatal(err)
	}
}

func TestInit_AccessToken(t *testing.T) {
	e, c := start(t)
	const tok = "0123456789abcdef"
	if _, err := c.Init(ctx(t), &client.InitRequest{AccessToken: tok}); err != nil {
		t.Fatal(err)
	}
	// Without the token: the protected endpoints and RPCs refuse.
	_, err := c.Envs(ctx(t))
	wantError(t, err, connect.CodeUnauthenticated, 401, "unauthorized access, please provide a valid access token or method signing if supported")
	if !client.IsUnauthenticated(err) {
		t.Fatal("IsUnauthenticated false")
	}
	_, err = c.Metrics(ctx(t))
	wantError(t, err, connect.CodeUnauthenticated, 401, "")
	_, err = c.List(ctx(t))
	wantError(t, err, connect.CodeUnauthenticated, 401, "unauthorized access, please provide a valid access token or method signing if supported")
	_, err = c.Start(ctx(t), "true", nil)
	wantError(t, err, connect.CodeUnauthenticated, 401, "unauthorized access, please provide a valid access token or method signing if supported")
	_, err = c.WatchDir(ctx(t), "/tmp", nil)
	wantError(t, err, connect.CodeUnauthenticated, 401, "unauthorized access, please provide a valid access token or method signing if supported")
	_, err = c.Stat(ctx(t), "/")
	wantError(t, err, connect.CodeUnauthenticated, 401, "unauthorized access, please provide a valid access token or method signing if supported")
	_, err = c.ReadFile(ctx(t), "/etc/hostname")
	wantError(t, err, connect.CodeUnauthenticated, 401, "missing signature query parameter")
	// Health needs no token.
	if _, err := c.Health(ctx(t)); err != nil {
		t.Fatal(err)
	}
	// Clearing the token without MMDS authorisation is refused.
	_, err = c.Init(ctx(t), &client.InitRequest{})
	wantError(t, err, connect.CodeUnauthenticated, 401, "access token reset not authorized")

	authed, err := client.New(e.URL, client.WithAccessToken(tok))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := authed.Envs(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := authed.List(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := authed.WriteFile(ctx(t), "/tmp/envd-client-token.txt", []byte("x")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = authed.Remove(t.Context(), "/tmp/envd-client-token.txt") })
	wrong, _ := client.New(e.URL, client.WithAccessToken("wrong"))
	_, err = wrong.ReadFile(ctx(t), "/tmp/envd-client-token.txt")
	wantError(t, err, connect.CodeUnauthenticated, 401, "access token present in header but does not match")
	// Re-sending the same token keeps it.
	if _, err := authed.Init(ctx(t), &client.InitRequest{AccessToken: tok}); err != nil {
		t.Fatal(err)
	}
}

func TestPrepareSnapshot_ThenHealthRecovers(t *testing.T) {
	e, c := start(t)
	if err := c.PrepareSnapshot(ctx(t)); err != nil {
		t.Fatal(err)
	}
	// Idempotent.
	if err := c.PrepareSnapshot(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Health(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := e.WaitLog(ctx(t), "recovered after restore"); err != nil {
		t.Fatal(err)
	}
	res, err := c.Run(ctx(t), "true", nil)
	if err != nil || !res.Success() {
		t.Fatalf("run after recovery: %+v %v", res, err)
	}
}

func TestError_Unreachable(t *testing.T) {
	port := envdtest.FreePort(t)
	c, err := client.New("127.0.0.1:" + strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Health(ctx(t))
	e := wantError(t, err, connect.CodeUnavailable, 503, "")
	if !strings.Contains(e.Error(), "connection refused") {
		t.Fatalf("error %q does not say why", e.Error())
	}
	_, err = c.Stat(ctx(t), "/")
	wantError(t, err, connect.CodeUnavailable, 503, "")
}

func TestError_BasicAuthUnknownUser(t *testing.T) {
	_, c := start(t)
	nobody := c.As("no-such-user-here")
	_, err := nobody.Stat(ctx(t), "/")
	wantError(t, err, connect.CodeUnauthenticated, 401, "invalid username: 'no-such-user-here'")
	_, err = nobody.Start(ctx(t), "true", nil)
	wantError(t, err, connect.CodeUnauthenticated, 401, "invalid username: 'no-such-user-here'")
	// File endpoints take the user from the query: lookup failure is 401.
	_, err = nobody.ReadFile(ctx(t), "/etc/hostname")
	e := wantError(t, err, connect.CodeUnauthenticated, 401, "")
	if !strings.Contains(e.Message, "no-such-user-here") {
		t.Fatalf("message %q", e.Message)
	}
}

func TestWithHTTPClient_IsUsed(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	var seen []string
	hc := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		seen = append(seen, r.Method+" "+r.URL.Path)
		return client.NewTransport().RoundTrip(r)
	})}
	c, err := client.New(e.URL, client.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Health(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.List(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if strings.Join(seen, ",") != "GET /health,POST /process.Process/List" {
		t.Fatalf("requests through the custom client: %v", seen)
	}
	var ce *client.Error
	if errors.As(nil, &ce) {
		t.Fatal("unreachable")
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
