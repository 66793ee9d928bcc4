package e2e

import (
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/envd/envd/internal/envdtest"
	"github.com/envd/envd/internal/mmds/mmdstest"
)

// MMDS against a fake metadata service on the loopback of envd's network
// namespace, in Firecracker mode (spec lifecycle.md §4). No test sends a
// timestamp: in FC mode that would set the machine's clock.

func mmdsInNetns(t *testing.T, doc map[string]any) (*lcNetns, *envdtest.Envd, *mmdstest.Server) {
	t.Helper()
	ns := newNetns(t)
	fake := mmdstest.NewOn(ns.listen(t, "tcp4", "127.0.0.1:0"), doc)
	t.Cleanup(fake.Close)
	e := ns.startFC(t, envdtest.Options{Env: []string{"ENVD_MMDS_ADDRESS=" + fake.HostPort()}})
	return ns, e, fake
}

func envs(t *testing.T, e *envdtest.Envd) map[string]string {
	t.Helper()
	resp, body := do(t, "GET", e.URL+"/envs", nil, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("/envs %d", resp.StatusCode)
	}
	var m map[string]string
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func waitIDs(t *testing.T, e *envdtest.Envd, sandbox, template string) {
	t.Helper()
	lcWait(t, "ids "+sandbox+"/"+template+" in /envs", func() bool {
		m := envs(t, e)
		return m["WRENN_SANDBOX_ID"] == sandbox && m["WRENN_TEMPLATE_ID"] == template
	})
}

func checkRunFiles(t *testing.T, e *envdtest.Envd, sandbox, template string) {
	t.Helper()
	for name, want := range map[string]struct {
		content string
		mode    uint32
	}{
		".WRENN_SANDBOX":     {"true", 0o444},
		".WRENN_SANDBOX_ID":  {sandbox, 0o644},
		".WRENN_TEMPLATE_ID": {template, 0o644},
	} {
		content, mode := runFile(t, e.Pid(), name)
		if content != want.content || uint32(mode) != want.mode {
			t.Errorf("/run/wrenn/%s = %q mode %v, want %q mode %o", name, content, mode, want.content, want.mode)
		}
	}
}

// TestMMDS_BootPollWaitsForInstanceID: MMDS answers an empty document until
// the host has written its data; envd keeps polling (token flow each time)
// and publishes the ids once they are there.
func TestMMDS_BootPollWaitsForInstanceID(t *testing.T) {
	_, e, fake := mmdsInNetns(t, map[string]any{})
	lcWait(t, "several polls of the empty document", func() bool { return fake.Gets.Load() >= 3 })
	if m := envs(t, e); m["WRENN_SANDBOX_ID"] != "" {
		t.Fatalf("an empty document was taken as the answer: %v", m)
	}
	fake.Set(map[string]any{"instanceID": "sb-boot", "envID": "tpl-boot", "address": "ignored", "extra": 5})
	waitIDs(t, e, "sb-boot", "tpl-boot")
	checkRunFiles(t, e, "sb-boot", "tpl-boot")
	if m := envs(t, e); m["WRENN_SANDBOX"] != "true" {
		t.Fatalf("WRENN_SANDBOX %q", m["WRENN_SANDBOX"])
	}
	// Every GET carried a valid session token from a PUT; polling stopped
	// after the success.
	if fake.BadTokenHit.Load() != 0 || fake.TokenPuts.Load() < fake.Gets.Load() {
		t.Fatalf("token flow: %d puts, %d gets, %d without a valid token", fake.TokenPuts.Load(), fake.Gets.Load(), fake.BadTokenHit.Load())
	}
	gets := fake.Gets.Load()
	time.Sleep(300 * time.Millisecond) // six attempt intervals
	if fake.Gets.Load() != gets {
		t.Fatal("still polling after a successful read")
	}
	if strings.Contains(e.Log(), `"level":"info","message":"mmds poll attempt failed"`) {
		t.Fatal("failed attempts logged at info")
	}
}

// TestMMDS_RepollAfterInitPicksUpNewIDs: after a restore the host writes
// new ids and calls /init; envd re-reads MMDS.
func TestMMDS_RepollAfterInitPicksUpNewIDs(t *testing.T) {
	_, e, fake := mmdsInNetns(t, map[string]any{"instanceID": "sb-1", "envID": "tpl-1"})
	waitIDs(t, e, "sb-1", "tpl-1")
	checkRunFiles(t, e, "sb-1", "tpl-1")

	fake.Set(map[string]any{"instanceID": "sb-2", "envID": "tpl-2"})
	prepare(t, e)
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"envVars": map[string]string{"A": "1"}}, nil); resp.StatusCode != 204 {
		t.Fatal("init")
	}
	waitIDs(t, e, "sb-2", "tpl-2")
	checkRunFiles(t, e, "sb-2", "tpl-2")
	if m := envs(t, e); m["A"] != "1" {
		t.Fatalf("envVars not applied: %v", m)
	}
	// A process started now sees the new ids.
	r := lcExec(t, e, `printf '%s %s' "$WRENN_SANDBOX_ID" "$WRENN_TEMPLATE_ID"`)
	if r.stdout.String() != "sb-2 tpl-2" {
		t.Fatalf("process environment %q", r.stdout.String())
	}
	if strings.Contains(r.stdout.String(), "ENVD_MMDS_ADDRESS") {
		t.Fatal("test-only variable leaked")
	}
	if r := lcExec(t, e, `echo "${ENVD_MMDS_ADDRESS-unset}"`); strings.TrimSpace(r.stdout.String()) != "unset" {
		t.Fatalf("ENVD_MMDS_ADDRESS passed to processes: %q", r.stdout.String())
	}
}

// TestMMDS_InitTokenValidatedByHash: /init accepts a token only when its
// SHA-512 matches MMDS's accessTokenHash, read fresh each time.
func TestMMDS_InitTokenValidatedByHash(t *testing.T) {
	hash := func(s string) string { h := sha512.Sum512([]byte(s)); return hex.EncodeToString(h[:]) }
	_, e, fake := mmdsInNetns(t, map[string]any{"instanceID": "sb-tok", "accessTokenHash": hash("tok-1")})
	if resp, body := postJSON(t, e.URL+"/init", map[string]any{"accessToken": "guess"}, nil); resp.StatusCode != 401 || string(body) != "access token validation failed" {
		t.Fatalf("wrong token: %d %q", resp.StatusCode, body)
	}
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"accessToken": "tok-1"}, nil); resp.StatusCode != 204 {
		t.Fatalf("matching token refused: %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", e.URL+"/envs", nil, nil); resp.StatusCode != 401 {
		t.Fatalf("token not in force: %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", e.URL+"/envs", nil, map[string]string{"X-Access-Token": "tok-1"}); resp.StatusCode != 200 {
		t.Fatalf("token refused: %d", resp.StatusCode)
	}
	fake.Set(map[string]any{"instanceID": "sb-tok", "accessTokenHash": hash("tok-2")})
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"accessToken": "tok-2"}, nil); resp.StatusCode != 204 {
		t.Fatalf("rotation authorised by a fresh MMDS read refused: %d", resp.StatusCode)
	}
	if strings.Contains(e.Log(), "tok-1") || strings.Contains(e.Log(), "tok-2") || strings.Contains(e.Log(), hash("tok-2")) {
		t.Fatal("token or hash logged")
	}
}

// TestMMDS_PollerQuietWhilePrepared: a poll that is still waiting for data
// makes no attempt while the VM is prepared and resumes at recovery.
func TestMMDS_PollerQuietWhilePrepared(t *testing.T) {
	_, e, fake := mmdsInNetns(t, map[string]any{})
	lcWait(t, "polling", func() bool { return fake.TokenPuts.Load() >= 2 })
	prepare(t, e)
	// An attempt in flight when prepare answered may still land.
	time.Sleep(100 * time.Millisecond)
	puts, gets := fake.TokenPuts.Load(), fake.Gets.Load()
	time.Sleep(600 * time.Millisecond) // twelve attempt intervals
	if p, g := fake.TokenPuts.Load(), fake.Gets.Load(); p != puts || g != gets {
		t.Fatalf("MMDS polled while prepared: puts %d→%d, gets %d→%d", puts, p, gets, g)
	}
	fake.Set(map[string]any{"instanceID": "sb-late", "envID": "tpl-late"})
	if resp, _ := do(t, "GET", e.URL+"/health", nil, nil); resp.StatusCode != 200 {
		t.Fatal("health")
	}
	waitIDs(t, e, "sb-late", "tpl-late")
}
