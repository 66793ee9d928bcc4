package process

import (
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/envd/envd/internal/identity"
)

// shell runs every process through a wrapper script (spec rpc.md §4.2
// step 5) that lowers the child's OOM priority below envd's and normalises
// its CPU and I/O priority before exec'ing the command.
const shell = "/bin/sh"

// wrapperScript returns the script for /bin/sh -c. lookPath finds a helper
// in envd's PATH; envdNice is envd's own nice value, which children inherit
// and the nice helper undoes so that every command starts at nice 0.
func wrapperScript(lookPath func(string) (string, error), envdNice int) string {
	var b strings.Builder
	b.WriteString(`echo 100 > /proc/$$/oom_score_adj && exec `)
	if p, err := lookPath("ionice"); err == nil {
		b.WriteString(shellWord(p) + " -c 2 -n 4 ")
	}
	if p, err := lookPath("nice"); err == nil {
		b.WriteString(shellWord(p) + " -n " + strconv.Itoa(0-envdNice) + " ")
	}
	b.WriteString(`"${@}"`)
	return b.String()
}

// wrapperArgv is the argument vector of the wrapper: the script's "--"
// becomes $0, so "${@}" is the command and its arguments.
func wrapperArgv(script string, cfg Config) []string {
	argv := make([]string, 0, 4+len(cfg.Args))
	argv = append(argv, shell, "-c", script, "--", cfg.Cmd)
	return append(argv, cfg.Args...)
}

// shellWord quotes a helper path for the script if it needs quoting.
func shellWord(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r == '/' || r == '.' || r == '_' || r == '-' || r == '+' ||
			(r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// envList builds an environment in which every name appears once: a later
// value replaces an earlier one in place.
type envList struct {
	names []string
	vals  map[string]string
}

func (e *envList) set(k, v string) {
	if e.vals == nil {
		e.vals = map[string]string{}
	}
	if _, ok := e.vals[k]; !ok {
		e.names = append(e.names, k)
	}
	e.vals[k] = v
}

func (e *envList) setSorted(m map[string]string) {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		e.set(k, m[k])
	}
}

func (e *envList) environ() []string {
	out := make([]string, 0, len(e.names))
	for _, k := range e.names {
		out = append(out, k+"="+e.vals[k])
	}
	return out
}

// buildEnv is the complete environment of a new process (spec rpc.md §4.2
// step 4): envd's PATH, the user's HOME/USER/LOGNAME, the default
// variables, then the request's — nothing else of envd's environment.
// Maps are applied in name order so the result is deterministic.
func buildEnv(path string, u *identity.User, defaults, request map[string]string) []string {
	var e envList
	e.set("PATH", path)
	e.set("HOME", u.Home)
	e.set("USER", u.Name)
	e.set("LOGNAME", u.Name)
	e.setSorted(defaults)
	e.setSorted(request)
	return e.environ()
}

// commandLine is the command as error messages and logs show it.
func commandLine(cfg Config) string {
	return strings.Join(append([]string{cfg.Cmd}, cfg.Args...), " ")
}
