package mmds

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/handover/handoverpb"
	"github.com/envd/envd/internal/logging"
	"github.com/envd/envd/internal/mmds/mmdstest"
)

func TestFetch_TokenFlowAndFields(t *testing.T) {
	fake := mmdstest.New(map[string]any{"instanceID": "sb-1", "envID": "tpl-2", "accessTokenHash": "abc", "address": 7, "extra": true})
	defer fake.Close()
	md, err := NewClient(fake.HostPort()).Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if *md != (Metadata{InstanceID: "sb-1", EnvID: "tpl-2", AccessTokenHash: "abc"}) {
		t.Fatalf("got %+v", md)
	}
	if fake.TokenPuts.Load() != 1 || fake.BadTokenHit.Load() != 0 {
		t.Fatal("token flow not followed")
	}
}

func TestFetch_Errors(t *testing.T) {
	if _, err := NewClient("127.0.0.1:1").Fetch(context.Background()); err == nil {
		t.Fatal("closed port must fail")
	}
	fake := mmdstest.New(nil)
	defer fake.Close()
	md, err := NewClient(fake.HostPort()).Fetch(context.Background())
	if err != nil || md.InstanceID != "" {
		t.Fatalf("empty document: %+v %v", md, err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPoller_PublishesWhenInstanceAppears(t *testing.T) {
	fake := mmdstest.New(map[string]any{})
	defer fake.Close()
	dir := t.TempDir()
	env := defaults.New("root")
	p := NewPoller(NewClient(fake.HostPort()), env, dir, logging.Discard())
	p.Start(context.Background())
	defer p.Stop()
	waitFor(t, "several attempts", func() bool { return fake.Gets.Load() >= 3 })
	if env.Vars()[defaults.SandboxIDVar] != "" {
		t.Fatal("empty document must not be taken as final")
	}
	fake.Set(map[string]any{"instanceID": "sb-9", "envID": "tpl-9"})
	waitFor(t, "publish", func() bool { return !p.Running() })
	if v := env.Vars(); v[defaults.SandboxIDVar] != "sb-9" || v[defaults.TemplateIDVar] != "tpl-9" {
		t.Fatalf("vars %v", v)
	}
	for name, want := range map[string]string{".WRENN_SANDBOX_ID": "sb-9", ".WRENN_TEMPLATE_ID": "tpl-9"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(b) != want {
			t.Fatalf("%s: %q %v", name, b, err)
		}
		st, _ := os.Stat(filepath.Join(dir, name))
		if st.Mode().Perm() != 0o644 {
			t.Fatalf("%s mode %v", name, st.Mode())
		}
	}
	// A re-poll after /init picks up new ids.
	fake.Set(map[string]any{"instanceID": "sb-10", "envID": "tpl-10"})
	p.Repoll()
	waitFor(t, "repoll", func() bool { return env.Vars()[defaults.SandboxIDVar] == "sb-10" })
}

func TestPoller_PauseStopsAttempts(t *testing.T) {
	fake := mmdstest.New(map[string]any{})
	defer fake.Close()
	p := NewPoller(NewClient(fake.HostPort()), defaults.New("root"), t.TempDir(), logging.Discard())
	p.Start(context.Background())
	defer p.Stop()
	waitFor(t, "attempts", func() bool { return fake.Gets.Load() >= 2 })
	p.Pause()
	time.Sleep(60 * time.Millisecond)
	before := fake.TokenPuts.Load()
	time.Sleep(300 * time.Millisecond)
	if after := fake.TokenPuts.Load(); after != before {
		t.Fatalf("%d attempts while paused", after-before)
	}
	p.Resume()
	waitFor(t, "attempts after resume", func() bool { return fake.TokenPuts.Load() > before+2 })
}

// The poll state a live upgrade carries: none, the boot poll, or a
// re-poll with its remaining deadline; the next image's Start resumes it.
func TestHandoverPart_PollState(t *testing.T) {
	fake := mmdstest.New(map[string]any{})
	defer fake.Close()
	p := NewPoller(NewClient(fake.HostPort()), defaults.New("root"), t.TempDir(), logging.Discard())
	part := HandoverPart{P: p}
	rec := &handoverpb.Record{}
	if err := part.Export(rec, nil); err != nil || rec.GetMmds().GetPoll() != handoverpb.MmdsPoll_MMDS_POLL_NONE {
		t.Fatalf("before Start: %v %v", rec.GetMmds(), err)
	}
	p.Start(context.Background())
	defer p.Stop()
	if err := part.Quiesce(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := fake.Gets.Load()
	time.Sleep(200 * time.Millisecond)
	if fake.Gets.Load() > before+1 {
		t.Fatal("the poller kept polling while quiesced")
	}
	if err := part.Export(rec, nil); err != nil || rec.GetMmds().GetPoll() != handoverpb.MmdsPoll_MMDS_POLL_BOOT {
		t.Fatalf("during the boot poll: %v %v", rec.GetMmds(), err)
	}
	part.Resume()

	for _, c := range []struct {
		rec     *handoverpb.Mmds
		running bool
	}{
		{&handoverpb.Mmds{Poll: handoverpb.MmdsPoll_MMDS_POLL_NONE}, false},
		{&handoverpb.Mmds{Poll: handoverpb.MmdsPoll_MMDS_POLL_BOOT}, true},
		{&handoverpb.Mmds{Poll: handoverpb.MmdsPoll_MMDS_POLL_REPOLL, RemainingMs: 30000}, true},
	} {
		next := NewPoller(NewClient(fake.HostPort()), defaults.New("root"), t.TempDir(), logging.Discard())
		if _, err := (HandoverPart{P: next}).Import(&handoverpb.Record{Mmds: c.rec}, nil); err != nil {
			t.Fatal(err)
		}
		next.Start(context.Background())
		st := next.State()
		next.Stop()
		if next.Running() {
			t.Fatal("still running after Stop")
		}
		switch {
		case !c.running && st.Kind != PollNone:
			t.Errorf("%v: the next image polls (%+v)", c.rec, st)
		case c.running && c.rec.Poll == handoverpb.MmdsPoll_MMDS_POLL_REPOLL && (st.Kind != PollRepoll || st.Remaining > 30*time.Second || st.Remaining < 25*time.Second):
			t.Errorf("%v: resumed as %+v", c.rec, st)
		case c.running && c.rec.Poll == handoverpb.MmdsPoll_MMDS_POLL_BOOT && st.Kind != PollBoot:
			t.Errorf("%v: resumed as %+v", c.rec, st)
		}
	}
}
