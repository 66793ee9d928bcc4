package process

import (
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"

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

func TestLookPath_AsExecvp(t *testing.T) {
	dir := t.TempDir()
	mk := func(rel string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	mk("a/tool", 0o644)                                                      // not executable: skipped
	mk("b/tool", 0o755)                                                      // found
	mk("c/tool", 0o755)                                                      // later: never reached
	mk("cwd/tool", 0o755)                                                    // found through an empty or relative element
	if err := os.MkdirAll(filepath.Join(dir, "d/tool"), 0o755); err != nil { // a directory: skipped
		t.Fatal(err)
	}
	cwd := filepath.Join(dir, "cwd")
	cases := []struct {
		cmd, path string
		want      string
		ok        bool
	}{
		{"tool", dir + "/missing:" + dir + "/a:" + dir + "/d:" + dir + "/b:" + dir + "/c", dir + "/b/tool", true},
		{"tool", dir + "/b/", dir + "/b//tool", true}, // built as execvp builds it
		{"tool", "/nonexistent::" + dir + "/b", "tool", true},
		{"tool", "", "tool", true}, // an empty PATH is one empty element: the cwd
		{"tool", ".", "./tool", true},
		{"tool", dir + "/a:" + dir + "/d", "", false}, // left to the wrapper (126)
		{"missing", "/usr/bin:/bin", "", false},       // left to the wrapper (127)
		{"", "/usr/bin", "", false},
		{"./rel/x", "", "./rel/x", true}, // a slash: as given, exec decides
		{"/abs/x", "", "/abs/x", true},
	}
	for _, c := range cases {
		got, ok := lookPath(c.cmd, c.path, cwd, os.Stat)
		if got != c.want || ok != c.ok {
			t.Errorf("lookPath(%q, %q) = %q, %v; want %q, %v", c.cmd, c.path, got, ok, c.want, c.ok)
		}
	}
	// An error execvp would stop at (not "not there") leaves it to the wrapper.
	eloop := func(string) (fs.FileInfo, error) {
		return nil, &fs.PathError{Op: "stat", Path: "x", Err: syscall.ELOOP}
	}
	if got, ok := lookPath("tool", dir+"/b", cwd, eloop); ok {
		t.Errorf("ELOOP: picked %q", got)
	}
}

// The command must see the environment the wrapper shell (/bin/sh)
// passed on: the same command started both ways (the wrapper forced on
// one manager) prints the same variables.
func TestShellEnviron_AsTheShellExportsIt(t *testing.T) {
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	direct, wrapped := newManager(t, nil), newManager(t, nil)
	wrapped.fx.off.Store(true)
	run := func(m *Manager, envs map[string]string) []string {
		t.Helper()
		_, s := start(t, m, StartOptions{Config: Config{Cmd: "/usr/bin/env", Args: []string{"-0"}, Envs: envs, Cwd: &link}})
		defer s.Close()
		r := collect(t, s)
		if r.end == nil || r.end.ExitCode != 0 {
			t.Fatalf("env: %+v %q", r.end, r.out[Stderr].String())
		}
		vars := strings.Split(strings.TrimSuffix(r.out[Stdout].String(), "\x00"), "\x00")
		slices.Sort(vars)
		return vars
	}
	base := map[string]string{"BAD-NAME": "1", "9LEADING": "2", "_ok_9": "3", "IFS": "x", "OPTIND": "7", "PPID": "1", "EMPTY": "", "EQ": "a=b"}
	for _, pwd := range []string{"", link, real, "/tmp", "relative"} {
		envs := maps.Clone(base)
		if pwd != "" {
			envs["PWD"] = pwd
		}
		if got, want := run(direct, envs), run(wrapped, envs); !reflect.DeepEqual(got, want) {
			t.Errorf("PWD %q:\n direct  %q\n wrapper %q", pwd, got, want)
		}
	}
}

func TestBeyondExec_OnlyWhatExecRefusesEitherWay(t *testing.T) {
	long := strings.Repeat("x", maxArgStrlen) // with its NUL one byte over the limit
	for _, tc := range []struct {
		name string
		cfg  Config
		want bool
	}{
		{"small", Config{Cmd: "echo", Args: []string{"hi"}}, false},
		{"argument at the limit", Config{Cmd: "echo", Args: []string{long[:maxArgStrlen-1]}}, false},
		{"argument over the string limit", Config{Cmd: "echo", Args: []string{long}}, true},
		{"command over the string limit", Config{Cmd: long}, true},
		{"arguments over the total", Config{Cmd: "echo", Args: slices.Repeat([]string{long[:100000]}, 30)}, true},
		{"arguments within the total", Config{Cmd: "echo", Args: slices.Repeat([]string{long[:100000]}, 10)}, false},
		{"environment entry over the string limit", Config{Cmd: "env", Envs: map[string]string{"BIG": long}}, true},
		// The direct exec drops names that are not shell names, and sets
		// IFS, OPTIND, PPID and PWD itself: exec may still succeed.
		{"not a shell name", Config{Cmd: "env", Envs: map[string]string{"not-a-name": long}}, false},
		{"PWD", Config{Cmd: "env", Envs: map[string]string{"PWD": long}}, false},
	} {
		if got := beyondExec(tc.cfg, 2<<20); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := beyondExec(Config{Cmd: "echo", Args: slices.Repeat([]string{"abcdefg"}, 16384)}, minArgMax); !got {
		t.Error("16384 arguments of 8 bytes and their pointers fit in 128 KiB")
	}
}

func TestShortCommandLine(t *testing.T) {
	cfg := Config{Cmd: "echo", Args: []string{strings.Repeat("é", 1000), "tail"}}
	got := shortCommandLine(cfg, 100)
	if !strings.HasPrefix(got, "echo éé") || !strings.HasSuffix(got, " bytes cut)") || len(got) > 130 || !utf8.ValidString(got) {
		t.Fatalf("%q", got)
	}
	if n := len(commandLine(cfg)); !strings.Contains(got, "… ("+strconv.Itoa(n-len(strings.SplitN(got, "…", 2)[0]))+" bytes cut)") {
		t.Fatalf("cut count wrong in %q (command line %d bytes)", got, n)
	}
	if got := shortCommandLine(Config{Cmd: "ls", Args: []string{"-l"}}, 100); got != "ls -l" {
		t.Fatalf("short command changed: %q", got)
	}
}
