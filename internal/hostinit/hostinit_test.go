package hostinit

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envd/envd/internal/auth"
	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/logging"
)

func TestParseRequest(t *testing.T) {
	ok := []struct {
		body  string
		check func(*Request) bool
	}{
		{"", func(r *Request) bool { return r.AccessToken == nil && !r.HasEnvVars }},
		{"  {}  ", func(r *Request) bool { return r.AccessToken == nil }},
		{`{"accessToken":"abc","envVars":{"A":"1"},"defaultUser":"u","defaultWorkdir":"/w","lifecycleID":"L","caBundle":"pem"}`, func(r *Request) bool {
			return *r.AccessToken == "abc" && r.EnvVars["A"] == "1" && r.DefaultUser == "u" && r.DefaultWorkdir == "/w" && r.LifecycleID == "L" && r.CABundle == "pem"
		}},
		{`{"envVars":{}}`, func(r *Request) bool { return r.HasEnvVars && len(r.EnvVars) == 0 }},
		{`{"envVars":null,"accessToken":null}`, func(r *Request) bool { return !r.HasEnvVars && r.AccessToken == nil }},
		{`{"ACCESSTOKEN":"x","unknown":[1,2]}`, func(r *Request) bool { return r.AccessToken == nil }},
		{`{"timestamp":"2026-05-02T22:56:00.123456789Z"}`, func(r *Request) bool {
			return r.Timestamp.UnixNano() == time.Date(2026, 5, 2, 22, 56, 0, 123456789, time.UTC).UnixNano()
		}},
		{`{"hyperloopIp":"10.0.0.2"}`, func(r *Request) bool { return *r.HyperloopIP == "10.0.0.2" }},
		{`{"hyperloopIp":"10.0.0.2","hyperloopIP":"10.0.0.3"}`, func(r *Request) bool { return *r.HyperloopIP == "10.0.0.3" }},
		{`{"volumeMounts":[{"nfs_target":"h:/x","path":"/mnt/x"}]}`, func(r *Request) bool {
			return r.HasVolumes && r.VolumeMounts[0] == VolumeMount{"h:/x", "/mnt/x"}
		}},
	}
	for _, c := range ok {
		r, err := ParseRequest([]byte(c.body))
		if err != nil || !c.check(r) {
			t.Errorf("%s: %+v %v", c.body, r, err)
		}
	}
	bad := []string{`[]`, `"x"`, `{`, `null`, `{"accessToken":""}`, `{"accessToken":"a\u0062"}`, `{"accessToken":5}`,
		`{"envVars":{"A":1}}`, `{"envVars":[]}`, `{"timestamp":"yesterday"}`, `{"timestamp":1700000000}`, `{"defaultUser":true}`,
		`{"volumeMounts":{}}`}
	for _, b := range bad {
		if _, err := ParseRequest([]byte(b)); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%s: want ErrBadRequest, got %v", b, err)
		}
	}
}

func hashOf(s string) string { h := sha512.Sum512([]byte(s)); return hex.EncodeToString(h[:]) }

func TestValidateToken(t *testing.T) {
	str := func(s string) *string { return &s }
	hash := func(h string) HashReader { return func(context.Context) string { return h } }
	eq := func(tok string) func([]byte) bool { return func(b []byte) bool { return string(b) == tok } }
	cases := []struct {
		name     string
		existing string
		request  *string
		mmds     HashReader
		want     error
	}{
		{"first setup, no mmds", "", str("new"), nil, nil},
		{"first setup, mmds without hash", "", str("new"), hash(""), nil},
		{"same token again", "old", str("old"), nil, nil},
		{"different token, no mmds", "old", str("new"), nil, ErrTokenValidation},
		{"clear without authorisation", "old", nil, nil, ErrResetNotAuthorized},
		{"mmds authorises new token", "old", str("new"), hash(hashOf("new")), nil},
		{"mmds refuses other token", "old", str("new"), hash(hashOf("other")), ErrTokenValidation},
		{"mmds refuses on first setup", "", str("new"), hash(hashOf("other")), ErrTokenValidation},
		{"mmds authorises reset", "old", nil, hash(emptyTokenHash), nil},
		{"mmds without reset hash", "old", nil, hash(hashOf("x")), ErrResetNotAuthorized},
		{"no token, none requested", "", nil, nil, nil},
	}
	for _, c := range cases {
		err := validateToken(context.Background(), c.existing != "", eq(c.existing), c.request, c.mmds)
		if !errors.Is(err, c.want) || (c.want == nil && err != nil) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
	if hashOf("") != emptyTokenHash {
		t.Fatal("empty hash constant")
	}
}

func TestClockNeedsSet(t *testing.T) {
	ts := time.Unix(1_800_000_000, 0)
	for d, want := range map[time.Duration]bool{
		0: false, -49 * time.Millisecond: false, -51 * time.Millisecond: true,
		4 * time.Second: false, 5*time.Second + time.Millisecond: true, -time.Hour: true,
	} {
		if got := clockNeedsSet(ts.Add(d), ts); got != want {
			t.Errorf("skew %v: %v", d, got)
		}
	}
}

func TestRewriteHosts(t *testing.T) {
	in := "127.0.0.1\tlocalhost\n10.0.0.1\tevents.wrenn.local other # note\n10.0.0.9 events.wrenn.local\n::1 localhost\n"
	out, changed := rewriteHosts(in, "10.1.1.1")
	want := "127.0.0.1\tlocalhost\n10.0.0.1\tother # note\n::1 localhost\n10.1.1.1\tevents.wrenn.local\n"
	if !changed || out != want {
		t.Fatalf("got %q", out)
	}
	if _, changed := rewriteHosts(out, "10.1.1.1"); changed {
		t.Fatal("already mapped must be a no-op")
	}
	if out, _ := rewriteHosts("", "fd00::1"); out != "fd00::1\tevents.wrenn.local\n" {
		t.Fatalf("empty file: %q", out)
	}
}

func TestHyperloop_SetsHostsAndVariable(t *testing.T) {
	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644)
	env := defaults.New("root")
	h := NewHyperloop(hosts, env, logging.Discard())
	ctx, cancel := context.WithCancel(context.Background())
	go h.Run(ctx)
	h.Set("not-an-ip")
	h.Set("fd00::7")
	deadline := time.Now().Add(5 * time.Second)
	for env.Vars()[defaults.EventsAddressVar] == "" && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	h.Wait()
	if got := env.Vars()[defaults.EventsAddressVar]; got != "http://[fd00::7]" {
		t.Fatalf("events address %q", got)
	}
	b, _ := os.ReadFile(hosts)
	if string(b) != "127.0.0.1 localhost\nfd00::7\tevents.wrenn.local\n" {
		t.Fatalf("hosts %q", b)
	}
}

func TestCAInstaller(t *testing.T) {
	dir := t.TempDir()
	bundle := filepath.Join(dir, "certs", "ca-certificates.crt")
	local := filepath.Join(dir, "local", "wrenn-ca.crt")
	os.MkdirAll(filepath.Dir(bundle), 0o755)
	os.WriteFile(bundle, []byte("SYSTEM\n"), 0o644)
	c := NewCAInstaller(bundle, local, logging.Discard())
	ctx := context.Background()
	if err := c.Install(ctx, "PEM-A\n\n\n"); err != nil {
		t.Fatal(err)
	}
	c.Wait()
	if err := c.Install(ctx, "PEM-A"); err != nil { // same bundle: nothing to do
		t.Fatal(err)
	}
	c.Wait()
	if b, _ := os.ReadFile(bundle); string(b) != "SYSTEM\nPEM-A\n" {
		t.Fatalf("bundle %q", b)
	}
	if err := c.Install(ctx, "PEM-B"); err != nil {
		t.Fatal(err)
	}
	c.Wait()
	if b, _ := os.ReadFile(bundle); string(b) != "SYSTEM\nPEM-B\n" {
		t.Fatalf("previous bundle not removed: %q", b)
	}
	if b, _ := os.ReadFile(local); string(b) != "PEM-B\n" {
		t.Fatalf("local copy %q", b)
	}
	// A missing directory is created; an unwritable bundle path fails.
	bad := NewCAInstaller(filepath.Join(bundle, "not-a-dir", "x.crt"), local, logging.Discard())
	if err := bad.Install(ctx, "PEM"); err == nil || !strings.HasPrefix(err.Error(), "failed to install CA bundle: ") {
		t.Fatalf("got %v", err)
	}
	// Busy lock and a request that gives up.
	c.lock <- struct{}{}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := c.Install(cctx, "PEM-C"); !errors.Is(err, ErrCABusy) {
		t.Fatalf("got %v", err)
	}
	<-c.lock
}

func TestVolumes_LedgerAndErrors(t *testing.T) {
	var mu sync.Mutex
	var calls [][]string
	fail := false
	run := func(ctx context.Context, argv []string) (int, []byte, error) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, argv)
		if fail {
			return 32, []byte("mount.nfs: Connection refused\n"), nil
		}
		return 0, nil, nil
	}
	dir := t.TempDir()
	v := NewVolumes(run, "/proc/self/mountinfo")
	vols := []VolumeMount{{"h:/a", filepath.Join(dir, "a")}, {"h:/b", filepath.Join(dir, "b")}}
	if err := v.Setup(vols, "L1"); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 2 || calls[0][0] != "mount" || calls[0][5] != nfsOptions {
		t.Fatalf("calls %v", calls)
	}
	if st, err := os.Stat(vols[0].Path); err != nil || !st.IsDir() {
		t.Fatal("mount point not created")
	}
	if err := v.Setup(vols, "L1"); err != nil || len(calls) != 2 {
		t.Fatalf("same lifecycle must not remount: %d calls, %v", len(calls), err)
	}
	if err := v.Setup(vols[:1], "L2"); err != nil || len(calls) != 3 {
		t.Fatalf("new lifecycle must remount: %d calls, %v", len(calls), err)
	}
	fail = true
	err := v.Setup([]VolumeMount{{"h:/c", filepath.Join(dir, "c")}}, "L2")
	if err == nil || !strings.HasPrefix(err.Error(), "failed to setup NFS volumes: mount h:/c on") || !strings.Contains(err.Error(), "Connection refused") {
		t.Fatalf("got %v", err)
	}
	err = v.Setup([]VolumeMount{{"h:/c", ""}}, "")
	if err == nil || err.Error() != "failed to setup NFS volumes: volumeMounts[0]: nfs_target and path are required" {
		t.Fatalf("got %v", err)
	}
}

func TestInitializer_StaleGuardAndEnv(t *testing.T) {
	tok := &auth.Token{}
	env := defaults.New("root")
	recovered := 0
	in := New(Deps{Token: tok, Env: env, Log: logging.Discard(), Recover: func() { recovered++ }})
	ctx := context.Background()
	ts := func(s string) *time.Time { t, _ := time.Parse(time.RFC3339, s); return &t }
	apply := func(req *Request, wantStale bool) {
		t.Helper()
		out, err := in.Apply(ctx, Loaded(req))
		if err != nil {
			t.Fatal(err)
		}
		if out.Stale != wantStale {
			t.Fatalf("stale %v, want %v", out.Stale, wantStale)
		}
	}
	apply(&Request{HasEnvVars: true, EnvVars: map[string]string{"A": "1"}, Timestamp: ts("2026-01-01T00:00:10Z")}, false)
	apply(&Request{HasEnvVars: true, EnvVars: map[string]string{"B": "2"}, Timestamp: ts("2026-01-01T00:00:05Z")}, true)
	if v := env.Vars(); v["A"] != "1" || v["B"] != "" {
		t.Fatalf("stale request applied: %v", v)
	}
	apply(&Request{HasEnvVars: true, EnvVars: map[string]string{"C": "3"}, Timestamp: ts("2026-01-01T00:00:10Z")}, false)
	apply(&Request{DefaultUser: "user"}, false)
	if v := env.Vars(); v["C"] != "3" || v["A"] != "" || env.DefaultUser() != "user" {
		t.Fatalf("equal timestamp must apply: %v", v)
	}
	if recovered != 4 {
		t.Fatalf("recovery hook ran %d times, want every request", recovered)
	}
	// A loader error is returned as it is, and nothing runs.
	errLoad := errors.New("unreadable")
	if _, err := in.Apply(ctx, func() (*Request, error) { return nil, errLoad }); err != errLoad || recovered != 4 {
		t.Fatalf("got %v, recovered %d", err, recovered)
	}
	// Lock busy and the client gone → ErrBusy, and the body is not read.
	in.lock <- struct{}{}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	loaded := false
	if _, err := in.Apply(cctx, func() (*Request, error) { loaded = true; return &Request{}, nil }); !errors.Is(err, ErrBusy) || loaded {
		t.Fatalf("got %v, loaded %v", err, loaded)
	}
}

// The freeze audit runs after token validation and before anything is
// applied; the thaw runs last, also for a stale request, never for a refused
// one (control-plane.md §5.1).
func TestInitializer_AuditThawAndInitialized(t *testing.T) {
	tok := &auth.Token{}
	env := defaults.New("root")
	var steps []string
	in := New(Deps{Token: tok, Env: env, Log: logging.Discard(),
		Audit: func() (string, bool) {
			steps = append(steps, "audit:"+env.DefaultUser())
			return `{"visited":1}`, true
		},
		Recover: func() { steps = append(steps, "recover") },
		Thaw:    func() { steps = append(steps, "thaw:"+env.DefaultUser()) },
	})
	ctx := context.Background()
	if in.Initialized() {
		t.Fatal("initialized at start")
	}
	out, err := in.Apply(ctx, Loaded(&Request{DefaultUser: "user", AccessToken: ptr("t1")}))
	if err != nil || out.FreezeAudit != `{"visited":1}` {
		t.Fatalf("%v %+v", err, out)
	}
	if want := "audit:root recover thaw:user"; strings.Join(steps, " ") != want {
		t.Fatalf("steps %q, want %q", steps, want)
	}
	if !in.Initialized() {
		t.Fatal("not initialized after a successful /init")
	}
	steps = nil
	if _, err := in.Apply(ctx, Loaded(&Request{AccessToken: ptr("wrong")})); err == nil {
		t.Fatal("wrong token accepted")
	}
	if len(steps) != 0 {
		t.Fatalf("a refused /init ran %v", steps)
	}
	ts := func(s string) *time.Time { t, _ := time.Parse(time.RFC3339, s); return &t }
	in.Apply(ctx, Loaded(&Request{AccessToken: ptr("t1"), Timestamp: ts("2026-01-01T00:00:10Z")}))
	steps = nil
	if _, err := in.Apply(ctx, Loaded(&Request{AccessToken: ptr("t1"), Timestamp: ts("2026-01-01T00:00:05Z")})); err != nil {
		t.Fatal(err)
	}
	if len(steps) != 3 || steps[2] != "thaw:user" {
		t.Fatalf("stale /init: %v", steps)
	}
}
func ptr(s string) *string { return &s }
