package hostinit

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/envd/envd/internal/auth"
	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/handover/handoverpb"
	"github.com/envd/envd/internal/logging"
)

func handoverDeps(t *testing.T) (Deps, string) {
	t.Helper()
	dir := t.TempDir()
	env := defaults.New("root")
	hosts := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1\tlocalhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := NewHyperloop(hosts, env, logging.Discard())
	ctx, cancel := context.WithCancel(context.Background())
	go h.Run(ctx)
	t.Cleanup(func() { cancel(); h.Wait() })
	return Deps{
		Token: &auth.Token{}, Env: env, Log: logging.Discard(), Hyperloop: h,
		CA:      NewCAInstaller(filepath.Join(dir, "bundle.crt"), filepath.Join(dir, "local", "ca.crt"), logging.Discard()),
		Volumes: NewVolumes(func(context.Context, []string) (int, []byte, error) { return 0, nil, nil }, filepath.Join(dir, "mountinfo")),
	}, dir
}

// Everything /init configured survives the record: the next image's
// Initializer behaves as the old one would have.
func TestHandoverPart_RoundTrip(t *testing.T) {
	d, dir := handoverDeps(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "mountinfo"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	old := New(d)
	ts := time.Date(2026, 5, 2, 22, 56, 0, 0, time.UTC)
	tok := "tok-1"
	_, err := old.Apply(context.Background(), Loaded(&Request{
		AccessToken: &tok, EnvVars: map[string]string{"A": "1"}, HasEnvVars: true,
		DefaultUser: "u", DefaultWorkdir: "/w", Timestamp: &ts, HyperloopIP: ptrTo("10.1.2.3"),
		CABundle: "PEM\n\n", VolumeMounts: []VolumeMount{{"h:/x", filepath.Join(dir, "vol")}}, HasVolumes: true, LifecycleID: "L",
	}))
	must(err)
	d.CA.Wait()
	d.Env.SetInternal(defaults.SandboxIDVar, "sb")
	deadline := time.Now().Add(5 * time.Second)
	for d.Hyperloop.Address() != "10.1.2.3" || d.Env.Vars()[defaults.EventsAddressVar] == "" {
		if time.Now().After(deadline) {
			t.Fatal("hyperloop never applied")
		}
		time.Sleep(5 * time.Millisecond)
	}
	rec := &handoverpb.Record{}
	must(HandoverPart{In: old}.Export(rec, nil))
	st := rec.GetInit()
	if string(st.AccessToken) != tok || st.DefaultUser != "u" || st.DefaultWorkdir != "/w" || st.UserEnvVars["A"] != "1" ||
		st.GetSandboxId() != "sb" || st.TemplateId != nil || st.GetEventsAddress() != "http://10.1.2.3" ||
		st.NewestTimestampNs != ts.UnixNano() || st.CaBundle != "PEM\n" || st.HyperloopAddress != "10.1.2.3" ||
		len(rec.NfsVolumes) != 1 || rec.NfsVolumes[0].LifecycleId != "L" {
		t.Fatalf("exported %v", rec)
	}

	d2, _ := handoverDeps(t)
	next := New(d2)
	if _, err := (HandoverPart{In: next}).Import(rec, nil); err != nil {
		t.Fatal(err)
	}
	for i := range st.AccessToken {
		if st.AccessToken[i] != 0 {
			t.Fatal("the carried token was not wiped after it was restored")
		}
	}
	if !d2.Token.Equal([]byte(tok)) || d2.Env.DefaultUser() != "u" || d2.Env.DefaultWorkdir() != "/w" {
		t.Fatal("token or defaults not restored")
	}
	if v := d2.Env.Vars(); v["A"] != "1" || v[defaults.SandboxIDVar] != "sb" || v[defaults.EventsAddressVar] != "http://10.1.2.3" {
		t.Fatalf("variables %v", v)
	}
	if _, ok := d2.Env.Internal(defaults.TemplateIDVar); ok {
		t.Fatal("an internal variable that was not set is set")
	}
	if d2.CA.Last() != "PEM\n" || d2.Volumes.Ledger()[filepath.Join(dir, "vol")] != "L" {
		t.Fatal("CA record or ledger not restored")
	}
	// The guard: an older /init is stale; the same bundle is not appended.
	older := ts.Add(-time.Second)
	out, err := next.Apply(context.Background(), Loaded(&Request{AccessToken: &tok, Timestamp: &older}))
	if err != nil || !out.Stale {
		t.Fatalf("an older /init after the restore: %+v %v", out, err)
	}
	if err := d2.CA.Install(context.Background(), "PEM"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(d2.CA.bundle); len(b) != 0 {
		t.Fatalf("the carried bundle was appended again: %q", b)
	}
}

func ptrTo(s string) *string { return &s }
