package process

import (
	"errors"
	"reflect"
	"testing"

	"github.com/envd/envd/internal/identity"
)

func TestWrapperScript(t *testing.T) {
	look := func(found ...string) func(string) (string, error) {
		return func(name string) (string, error) {
			for _, f := range found {
				if f == name {
					return "/usr/bin/" + name, nil
				}
			}
			return "", errors.New("not found")
		}
	}
	cases := []struct {
		look func(string) (string, error)
		nice int
		want string
	}{
		{look("ionice", "nice"), 0, `echo 100 > /proc/$$/oom_score_adj && exec /usr/bin/ionice -c 2 -n 4 /usr/bin/nice -n 0 "${@}"`},
		{look("nice"), -5, `echo 100 > /proc/$$/oom_score_adj && exec /usr/bin/nice -n 5 "${@}"`},
		{look("ionice"), 3, `echo 100 > /proc/$$/oom_score_adj && exec /usr/bin/ionice -c 2 -n 4 "${@}"`},
		{look(), 0, `echo 100 > /proc/$$/oom_score_adj && exec "${@}"`},
	}
	for _, c := range cases {
		if got := wrapperScript(c.look, c.nice); got != c.want {
			t.Errorf("got  %s\nwant %s", got, c.want)
		}
	}
	if got := shellWord("/opt/my tools/nice"); got != `'/opt/my tools/nice'` {
		t.Errorf("quoting: %s", got)
	}
	argv := wrapperArgv("S", Config{Cmd: "ls", Args: []string{"-l", "a b"}})
	if !reflect.DeepEqual(argv, []string{"/bin/sh", "-c", "S", "--", "ls", "-l", "a b"}) {
		t.Errorf("argv %q", argv)
	}
}

func TestBuildEnv_EachNameOnceLaterWins(t *testing.T) {
	u := &identity.User{Name: "alice", Home: "/home/alice"}
	got := buildEnv("/bin:/usr/bin", u,
		map[string]string{"WRENN_SANDBOX": "false", "A": "default", "HOME": "/elsewhere"},
		map[string]string{"A": "request", "PATH": "/custom", "Z": "z"})
	want := []string{"PATH=/custom", "HOME=/elsewhere", "USER=alice", "LOGNAME=alice", "A=request", "WRENN_SANDBOX=false", "Z=z"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
}
