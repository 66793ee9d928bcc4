package process

import (
	"errors"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/envd/envd/internal/identity"
)

// shell runs the wrapper script of spec rpc.md §4.2 step 5, which lowers
// the child's OOM priority below envd's and normalises its CPU and I/O
// priority before exec'ing the command. envd produces those effects
// in-process and execs the command itself (effects_linux.go); the wrapper
// is the fallback for whatever that cannot do: a command that is not found
// or that exec refuses (its exit code and message on stderr are the
// wrapper's), a script without #! (sh runs it), a thread whose priority
// could not be changed.
const shell = "/bin/sh"

// launch is how one process is started.
type launch struct {
	cfg Config
	// path is what envd execs directly (the command found in the child's
	// PATH), "" when the lookup leaves the command to the wrapper.
	path string
	// directEnv is the environment as the wrapper shell would have passed
	// it on; env is what the wrapper itself gets.
	directEnv, env []string
}

// newLaunch plans the start of cfg with environment env in directory cwd.
func newLaunch(cfg Config, env []string, cwd string) *launch {
	l := &launch{cfg: cfg, env: env}
	if path, ok := lookPath(cfg.Cmd, lastValue(env, "PATH"), cwd, os.Stat); ok {
		l.path = path
		l.directEnv = shellEnviron(env, cwd, os.Getpid(), os.Stat, filepath.EvalSymlinks)
	}
	return l
}

// argv is the direct argument vector: the command name as given (as the
// wrapper's exec leaves it), then the arguments.
func (l *launch) argv() []string {
	return append([]string{l.cfg.Cmd}, l.cfg.Args...)
}

// wrapperArgv is the fallback's argument vector. The helpers are looked up
// in envd's PATH at spawn time, as before.
func (l *launch) wrapperArgv() []string {
	return wrapperArgv(wrapperScript(exec.LookPath, currentNice()), l.cfg)
}

// lookPath finds cmd as the wrapper's exec would (glibc execvp in the
// child's PATH, from the child's working directory): a name containing a
// slash is used as given; otherwise every PATH element in order, an empty
// element meaning the working directory. It reports ok only for a
// candidate that exists, is not a directory and has an execute bit; when
// nothing qualifies, or the lookup meets an error that execvp would stop
// at, it leaves the decision to the wrapper (which then prints its own
// "No such file or directory" / "Permission denied" and exits 127 / 126).
// A candidate envd picks that exec still refuses (no execute permission
// for the user, ENOEXEC) also falls back to the wrapper, so picking too
// eagerly never changes which program runs.
func lookPath(cmd, pathList, cwd string, stat func(string) (fs.FileInfo, error)) (string, bool) {
	if cmd == "" {
		return "", false
	}
	if strings.Contains(cmd, "/") {
		return cmd, true // relative names resolve after the chdir, as exec does
	}
	for _, dir := range strings.Split(pathList, ":") {
		// Built as execvp builds it (a trailing slash is kept): the string
		// reaches the program, e.g. as $0 of a #! script.
		cand := cmd
		if dir != "" {
			cand = dir + "/" + cmd
		}
		// The child execs cand after its chdir; stat what that resolves to
		// (concatenated, not cleaned: ".." must meet symlinks as the kernel does).
		probe := cand
		if !strings.HasPrefix(cand, "/") {
			probe = cwd + "/" + cand
		}
		st, err := stat(probe)
		switch {
		case err == nil:
			if !st.IsDir() && st.Mode()&0o111 != 0 {
				return cand, true
			}
			// execvp gets EACCES here and tries the next element.
		case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.ESTALE),
			errors.Is(err, syscall.ENODEV), errors.Is(err, syscall.ETIMEDOUT):
			// execvp tries the next element after these.
		default:
			return "", false
		}
	}
	return "", false
}

// lastValue is the value of name in env ("" when absent). buildEnv lists
// each name once.
func lastValue(env []string, name string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], name+"="); ok {
			return v
		}
	}
	return ""
}

// shellEnviron is env as the wrapper shell (/bin/sh, dash on the Debian
// and Ubuntu images envd runs in) exports it to the command it execs:
// entries whose name is not a shell name are dropped, IFS, OPTIND and PPID
// get the values the shell gives them if they were exported, and PWD is
// the working directory — the one from env if it names the same directory,
// else the physical path. (Only the order differs: dash exports in its
// hash-table order, envd keeps env's.)
func shellEnviron(env []string, cwd string, ppid int, stat func(string) (fs.FileInfo, error), physical func(string) (string, error)) []string {
	out := make([]string, 0, len(env)+1)
	pwd := ""
	for _, kv := range env {
		name, val, _ := strings.Cut(kv, "=")
		if !shellName(name) {
			continue
		}
		switch name {
		case "IFS":
			kv = "IFS= \t\n"
		case "OPTIND":
			kv = "OPTIND=1"
		case "PPID":
			kv = "PPID=" + strconv.Itoa(ppid)
		case "PWD":
			pwd = val
			continue
		}
		out = append(out, kv)
	}
	if !samePWD(pwd, cwd, stat) {
		pwd = cwd
		if p, err := physical(cwd); err == nil {
			pwd = p
		}
	}
	return append(out, "PWD="+pwd)
}

// samePWD is dash's test for keeping an inherited PWD: absolute and the
// same file as the working directory.
func samePWD(pwd, cwd string, stat func(string) (fs.FileInfo, error)) bool {
	if !strings.HasPrefix(pwd, "/") {
		return false
	}
	a, err := stat(pwd)
	if err != nil {
		return false
	}
	b, err := stat(cwd)
	return err == nil && os.SameFile(a, b)
}

// shellName reports whether s is a shell variable name.
func shellName(s string) bool {
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
			return false
		}
	}
	return true
}

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

// maxShownCommand bounds the command line shown in the error of a command
// refused for its size (beyondExec).
const maxShownCommand = 1024

// shortCommandLine is commandLine cut after about max bytes (with what was
// cut said), built without joining the whole command.
func shortCommandLine(cfg Config, max int) string {
	var b strings.Builder
	total := len(cfg.Cmd)
	for _, a := range cfg.Args {
		total += 1 + len(a)
	}
	add := func(s string) {
		if room := max - b.Len(); room > 0 {
			b.WriteString(s[:min(len(s), room)])
		}
	}
	add(cfg.Cmd)
	for _, a := range cfg.Args {
		if b.Len() >= max {
			break
		}
		add(" ")
		add(a)
	}
	if total <= max {
		return b.String()
	}
	kept := strings.ToValidUTF8(b.String(), "") // not a rune cut in two
	return kept + "… (" + strconv.Itoa(total-len(kept)) + " bytes cut)"
}

// requestHasNUL reports a NUL byte in the command, an argument, the cwd or
// an environment entry of the request: the spawn refuses those with EINVAL
// first, whatever their size.
func requestHasNUL(cfg Config, cwd string) bool {
	if strings.IndexByte(cfg.Cmd, 0) >= 0 || hasNUL(cfg.Args) || strings.IndexByte(cwd, 0) >= 0 {
		return true
	}
	for k, v := range cfg.Envs {
		if strings.IndexByte(k, 0) >= 0 || strings.IndexByte(v, 0) >= 0 {
			return true
		}
	}
	return false
}

// beyondExec reports whether exec is sure to refuse the command with
// E2BIG whichever way it is started (spec rpc.md §4.2 step 5): the command
// name, an argument, or an environment entry the command gets either way
// (a shell name the direct exec keeps; the wrapper passes every entry) is
// longer than one string may be, or the command and its arguments alone
// exceed limit. It looks only at the request, before anything is copied:
// a command line of many megabytes would otherwise be copied several times
// (argument vectors for two execs, the error message) before the fork
// fails.
func beyondExec(cfg Config, limit int) bool {
	const ptr = 8 // one pointer of argv or envp
	if len(cfg.Cmd) >= maxArgStrlen {
		return true
	}
	total := len(cfg.Cmd) + 1 + ptr
	for _, a := range cfg.Args {
		if len(a) >= maxArgStrlen {
			return true
		}
		total += len(a) + 1 + ptr
	}
	if total > limit {
		return true
	}
	for k, v := range cfg.Envs {
		switch k {
		case "IFS", "OPTIND", "PPID", "PWD": // the direct exec replaces these
			continue
		}
		if shellName(k) && len(k)+1+len(v) >= maxArgStrlen {
			return true
		}
	}
	return false
}
