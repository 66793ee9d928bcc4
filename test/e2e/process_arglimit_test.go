package e2e

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"

	pb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/internal/envdtest"
)

// argLimitRSS is the most envd may hold resident (VmHWM) while refusing a
// 60 MiB command line. What remains is the request itself, read and
// decoded by the RPC layer (measured 200–265 MiB); the argument vectors of
// two execs and two copies of the error message (another 240 MiB
// allocated, 252–312 MiB peak before) are gone.
const argLimitRSS = 384 << 20

// A command the kernel cannot exec because of its size is refused before
// anything is copied, with the error the fork would have given and the
// command line cut; one just within the kernel's per-string limit runs.
func TestProcess_OversizedCommandRefusedEarly(t *testing.T) {
	e := procEnvd(t, envdtest.Options{})
	c := e.Process()
	ctx := procCtx(t)
	// 131071 bytes and the NUL: exactly MAX_ARG_STRLEN, which exec takes.
	ev := procRun(t, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", `echo ${#1}`, "sh", strings.Repeat("a", 131071)}}, Stdin: ptr(false)}))
	wantEnd(t, ev, 0, true, "exit status 0")
	if strings.TrimSpace(ev.stdout()) != "131071" {
		t.Fatalf("argument of 131071 bytes: %q", ev.stdout())
	}
	refused := func(name string, cfg *pb.ProcessConfig) string {
		t.Helper()
		s, err := c.Start(ctx, procReq(&pb.StartRequest{Process: cfg, Stdin: ptr(false)}))
		if err == nil {
			err = newProcReader[pb.StartResponse, *pb.StartResponse](s).drain().err
		}
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeInvalidArgument ||
			!strings.HasPrefix(ce.Message(), "error starting process '") || !strings.HasSuffix(ce.Message(), "': fork/exec /bin/sh: argument list too long") {
			t.Fatalf("%s: %v", name, err)
		}
		return ce.Message()
	}
	msg := refused("one byte more", &pb.ProcessConfig{Cmd: "/bin/echo", Args: []string{strings.Repeat("a", 131072)}})
	if !strings.Contains(msg, " bytes cut)': fork/exec") || len(msg) > 2048 {
		t.Fatalf("message of %d bytes: %.200q", len(msg), msg)
	}
	refused("an environment entry", &pb.ProcessConfig{Cmd: "/bin/true", Envs: map[string]string{"BIG": strings.Repeat("b", 200000)}})
	refused("arguments over the total", &pb.ProcessConfig{Cmd: "/bin/echo", Args: slices.Repeat([]string{strings.Repeat("c", 100000)}, 30)})

	// 60 MiB of command line, within the 64 MiB message limit of Start.
	rss := sampleRSS(t, e.Pid())
	msg = refused("60 MiB", &pb.ProcessConfig{Cmd: "/bin/echo", Args: []string{strings.Repeat("d", 60<<20)}})
	sampled, n := rss.finish()
	peak := vmHWM(t, e.Pid())
	t.Logf("peak VmRSS while refusing 60 MiB: %d MiB (VmHWM; %d MiB in %d samples); message %d bytes", peak>>20, sampled>>20, n, len(msg))
	if peak > argLimitRSS {
		t.Fatalf("envd took %d MiB to refuse a 60 MiB command line (ceiling %d MiB)", peak>>20, argLimitRSS>>20)
	}
	// envd is fine afterwards.
	wantEnd(t, procRun(t, c, procReq(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/true"}})), 0, true, "exit status 0")
}

// vmHWM is a process's peak resident memory so far.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}
