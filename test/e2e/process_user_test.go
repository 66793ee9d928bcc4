package e2e

import (
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

const procUser = "envd-proc-user"

func procTestUser(t *testing.T) envdtest.TestUser {
	return envdtest.EnsureUser(t, procUser, "envd-grp-a", "envd-grp-b")
}

func groupID(t *testing.T, name string) string {
	t.Helper()
	g, err := user.LookupGroup(name)
	if err != nil {
		t.Fatal(err)
	}
	return g.Gid
}

func TestProcess_UserCredentialsAndSupplementaryGroups(t *testing.T) {
	u := procTestUser(t)
	e := procEnvd(t, envdtest.Options{})
	for _, codec := range procCodecs {
		t.Run(codec.name, func(t *testing.T) {
			c := e.Process(codec.opts...)
			// As the unprivileged user (Basic auth, as the E2B SDK sends it).
			ev := procRun(t, c, procReq(&pb.StartRequest{Process: procSh(`id -u; id -g; id -G; echo "$HOME|$USER|$LOGNAME"; pwd`)}, "Authorization", basicAuth(procUser)))
			wantEnd(t, ev, 0, true, "exit status 0")
			lines := strings.Split(strings.TrimSpace(ev.stdout()), "\n")
			if len(lines) != 5 {
				t.Fatalf("output %q", ev.stdout())
			}
			if lines[0] != strconv.Itoa(int(u.UID)) || lines[1] != strconv.Itoa(int(u.GID)) {
				t.Fatalf("uid/gid %q/%q, want %d/%d", lines[0], lines[1], u.UID, u.GID)
			}
			groups := strings.Fields(lines[2])
			sort.Strings(groups)
			want := []string{strconv.Itoa(int(u.GID)), groupID(t, "envd-grp-a"), groupID(t, "envd-grp-b")}
			sort.Strings(want)
			if strings.Join(groups, " ") != strings.Join(want, " ") {
				t.Fatalf("groups %v, want exactly %v (none of root's)", groups, want)
			}
			if lines[3] != u.Home+"|"+procUser+"|"+procUser || lines[4] != u.Home {
				t.Fatalf("env/cwd %q %q", lines[3], lines[4])
			}
			// As root (the default user): root's home and groups.
			ev = procRun(t, c, procReq(&pb.StartRequest{Process: procSh(`id -u; id -G; echo "$HOME|$USER|$LOGNAME"; pwd`)}))
			if got := ev.stdout(); got != "0\n0\n/root|root|root\n/root\n" {
				t.Fatalf("root: %q", got)
			}
		})
	}
}

func envMap(t *testing.T, out string) (map[string]string, []string) {
	t.Helper()
	m := map[string]string{}
	var names []string
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Fatalf("env line %q", l)
		}
		if _, dup := m[k]; dup {
			t.Fatalf("%s appears twice in %q", k, out)
		}
		m[k] = v
		names = append(names, k)
	}
	sort.Strings(names)
	return m, names
}

// The environment is exactly PATH, HOME/USER/LOGNAME, the default
// variables and the request's, later ones overriding earlier ones, each
// name once; nothing else of envd's environment leaks (spec rpc.md §4.2).
func TestProcess_Environment(t *testing.T) {
	procTestUser(t)
	e := procEnvd(t, envdtest.Options{Env: []string{"ENVD_TEST_LEAK=secret", "TERM=xterm", "LANG=C"}})
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"envVars": map[string]string{"INIT_ONLY": "i", "SHARED": "from-init", "USER": "init-user"}}, nil); resp.StatusCode != 204 {
		t.Fatal("init")
	}
	for _, codec := range procCodecs {
		t.Run(codec.name, func(t *testing.T) {
			c := e.Process(codec.opts...)
			ev := procRun(t, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "env", Envs: map[string]string{"SHARED": "from-request", "REQ": "r=1", "HOME": "/override"}}}, "Authorization", basicAuth(procUser)))
			wantEnd(t, ev, 0, true, "exit status 0")
			m, names := envMap(t, ev.stdout())
			want := map[string]string{
				"PATH":          os.Getenv("PATH"), // envd's own
				"HOME":          "/override",       // request over user
				"USER":          "init-user",       // default variable over user
				"LOGNAME":       procUser,
				"WRENN_SANDBOX": "false",
				"INIT_ONLY":     "i",
				"SHARED":        "from-request", // request over default
				"REQ":           "r=1",
			}
			for k, v := range want {
				if m[k] != v {
					t.Errorf("%s=%q, want %q", k, m[k], v)
				}
			}
			// The wrapper shell (/bin/sh) adds PWD; nothing else may appear.
			var extra []string
			for _, k := range names {
				if _, ok := want[k]; !ok && k != "PWD" {
					extra = append(extra, k)
				}
			}
			if len(extra) > 0 {
				t.Fatalf("unexpected variables %v in %q", extra, ev.stdout())
			}
		})
	}
}

func TestProcess_Cwd(t *testing.T) {
	u := procTestUser(t)
	e := procEnvd(t, envdtest.Options{})
	sub := filepath.Join(u.Home, "proj")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	c := e.Process()
	pwd := func(cwd *string, hdr ...string) string {
		t.Helper()
		ev := procRun(t, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "pwd", Cwd: cwd}}, hdr...))
		wantEnd(t, ev, 0, true, "exit status 0")
		return strings.TrimSpace(ev.stdout())
	}
	auth := []string{"Authorization", basicAuth(procUser)}
	for _, tc := range []struct {
		cwd  *string
		want string
	}{
		{nil, u.Home},
		{ptr(""), u.Home},
		{ptr("proj"), sub},
		{ptr("~/proj"), sub},
		{ptr("~"), u.Home},
		{ptr("/tmp"), "/tmp"},
		{ptr("proj/../proj"), sub},
	} {
		if got := pwd(tc.cwd, auth...); got != tc.want {
			t.Errorf("cwd %v: %q, want %q", tc.cwd, got, tc.want)
		}
	}
	// The default workdir applies when the request has no cwd.
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"defaultWorkdir": "/tmp"}, nil); resp.StatusCode != 204 {
		t.Fatal("init")
	}
	if got := pwd(nil, auth...); got != "/tmp" {
		t.Errorf("default workdir: %q", got)
	}
	if got := pwd(ptr("proj"), auth...); got != sub {
		t.Errorf("relative cwd resolves against home, not the workdir: %q", got)
	}
	s, err := c.Start(procCtx(t), procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "pwd", Cwd: ptr("missing")}}, auth...))
	if err == nil {
		err = newProcReader[pb.StartResponse, *pb.StartResponse](s).drain().err
	}
	wantCode(t, err, connect.CodeInvalidArgument, "cwd '"+filepath.Join(u.Home, "missing")+"' does not exist")
}

func TestProcess_OOMScoreAndPriority(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	for _, pty := range []*pb.PTY{nil, {Size: &pb.PTY_Size{Cols: 80, Rows: 24}}} {
		ev := procRun(t, e.Process(), procReq(&pb.StartRequest{Process: procSh("cat /proc/self/oom_score_adj; nice; ionice"), Pty: pty}))
		wantEnd(t, ev, 0, true, "exit status 0")
		out := strings.ReplaceAll(ev.stdout()+ev.pty(), "\r", "")
		if out != "100\n0\nbest-effort: prio 4\n" {
			t.Fatalf("pty %v: %q", pty != nil, out)
		}
	}
}

// envd running as an ordinary user: its own user works without a
// credential switch; any other user is refused (spec lifecycle.md §2.4).
func TestProcess_UnprivilegedEnvd(t *testing.T) {
	u := procTestUser(t)
	e := procEnvd(t, envdtest.Options{Credential: u.Credential(), Dir: u.Home})
	c := e.Process()
	for _, hdr := range [][]string{nil, {"Authorization", basicAuth(procUser)}} {
		ev := procRun(t, c, procReq(&pb.StartRequest{Process: procSh("id -u; echo $HOME; pwd")}, hdr...))
		wantEnd(t, ev, 0, true, "exit status 0")
		if want := strconv.Itoa(int(u.UID)) + "\n" + u.Home + "\n" + u.Home + "\n"; ev.stdout() != want {
			t.Fatalf("auth %v: %q, want %q", hdr, ev.stdout(), want)
		}
	}
	s, err := c.Start(procCtx(t), procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "id"}}, "Authorization", basicAuth("root")))
	if err == nil {
		err = newProcReader[pb.StartResponse, *pb.StartResponse](s).drain().err
	}
	var ce *connect.Error
	if !asConnect(err, &ce) || ce.Code() != connect.CodePermissionDenied || !strings.Contains(ce.Message(), "'root'") {
		t.Fatalf("other user: %v", err)
	}
}
