package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeQMP serves a scripted QMP session on a unix socket: the greeting,
// then for each command the reply produced by answer (events may precede
// it).
func fakeQMP(t *testing.T, answer func(cmd string, args json.RawMessage) []string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}` + "\r\n"))
		r := bufio.NewReader(conn)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var req struct {
				Execute   string          `json:"execute"`
				Arguments json.RawMessage `json:"arguments"`
			}
			if err := json.Unmarshal(line, &req); err != nil {
				return
			}
			for _, out := range answer(req.Execute, req.Arguments) {
				conn.Write([]byte(out + "\r\n"))
			}
		}
	}()
	return sock
}

func TestQMP_CommandsEventsAndErrors(t *testing.T) {
	var migrateURI string
	sock := fakeQMP(t, func(cmd string, args json.RawMessage) []string {
		switch cmd {
		case "qmp_capabilities":
			return []string{`{"return": {}}`}
		case "stop":
			return []string{`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}`, `{"return": {}}`}
		case "query-status":
			return []string{`{"return": {"status": "paused", "running": false}}`}
		case "migrate":
			var a struct{ URI string }
			json.Unmarshal(args, &a)
			migrateURI = a.URI
			return []string{`{"return": {}}`}
		default:
			return []string{`{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}}`}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := DialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := q.Execute(ctx, "stop", nil); err != nil {
		t.Fatal(err)
	}
	if ev := q.Events(); len(ev) != 1 || ev[0].Name != "STOP" {
		t.Fatalf("events %v, want the STOP that came before the reply", ev)
	}
	if err := q.WaitStatus(ctx, "paused"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > 'x'"}); err != nil || migrateURI != "exec:cat > 'x'" {
		t.Fatalf("migrate: %v, server saw uri %q", err, migrateURI)
	}
	_, err = q.Execute(ctx, "nonsense", nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("unknown command: %v, want a CommandNotFound *Error", err)
	}
}

func TestQMP_DialGivesUpWhenNoSocketAppears(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := DialQMP(ctx, filepath.Join(t.TempDir(), "never.sock")); err == nil {
		t.Fatal("dial succeeded without a socket")
	}
}

func TestSpecArgs(t *testing.T) {
	s := Spec{
		Kernel: "/k/vmlinux", Initrd: "/k/initrd", Cmdline: "console=ttyS0 quiet",
		MemoryMiB: 512, CPUs: 2, HostPort: 40000,
		MMDSCommand: []string{"env", "X=a,b", "/bin/relay"},
		Incoming:    "/tmp/it's.snap",
		Disk:        "/tmp/a,b.disk",
	}
	args := s.Args("/tmp/console.log", "/tmp/q.sock")
	value := func(flag string) string {
		i := slices.Index(args, flag)
		if i < 0 || i+1 >= len(args) {
			t.Fatalf("no %s in %q", flag, args)
		}
		return args[i+1]
	}
	netdev := value("-netdev")
	for _, want := range []string{"restrict=on", "hostfwd=tcp:127.0.0.1:40000-:49983", "guestfwd=tcp:10.0.2.100:80-cmd:env X=a,,b /bin/relay"} {
		if !strings.Contains(netdev, want) {
			t.Errorf("-netdev %q lacks %q", netdev, want)
		}
	}
	if got := value("-incoming"); got != `exec:cat '/tmp/it'\''s.snap'` {
		t.Errorf("-incoming %q", got)
	}
	if value("-append") != "console=ttyS0 quiet" || value("-m") != "512" || value("-smp") != "2" {
		t.Errorf("args %q", args)
	}
	if got := value("-drive"); got != "if=none,id=disk0,format=raw,cache=writeback,file=/tmp/a,,b.disk" || value("-device") == "" {
		t.Errorf("-drive %q", got)
	}
	if !slices.Contains(args, "-no-reboot") {
		t.Error("without -no-reboot a guest reset would reboot instead of ending QEMU")
	}
}
