//go:build vm

package vm

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/envd/envd/test/vm/qemu"
)

// guestClockOffset is the guest's wall clock minus the host's, read with
// bash's $EPOCHREALTIME (microseconds) through an exec. The host time is
// taken before and after the round trip; an offset inside that window
// counts as 0.
func guestClockOffset(ctx context.Context, c *client) (time.Duration, error) {
	before := time.Now()
	out, err := c.mustRun(ctx, "root", `echo "$EPOCHREALTIME"`)
	after := time.Now()
	if err != nil {
		return 0, err
	}
	sec, frac, _ := strings.Cut(strings.TrimSpace(out), ".")
	s, err1 := strconv.ParseInt(sec, 10, 64)
	us, err2 := strconv.ParseInt((frac + "000000")[:6], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("guest clock %q: not seconds.micros", out)
	}
	guest := time.Unix(s, us*1000)
	switch {
	case guest.Before(before):
		return guest.Sub(before), nil
	case guest.After(after):
		return guest.Sub(after), nil
	}
	return 0, nil
}

// socketsScript lists envd's (PID 1's) socket inodes and the kernel's TCP
// tables, so the test can tell which TCP connections envd still holds.
const socketsScript = `for f in /proc/1/fd/*; do l=$(readlink "$f"); case "$l" in socket:*) echo "fd ${l#socket:}";; esac; done
echo tcp; cat /proc/net/tcp /proc/net/tcp6`

// envdConnections returns the TCP connections on envd's port (49983) whose
// sockets envd holds open, keyed by socket inode, with a description.
func envdConnections(ctx context.Context, c *client) (map[string]string, error) {
	// _system: it also runs while the workload's groups are frozen.
	out, err := c.system(ctx, socketsScript)
	if err != nil {
		return nil, err
	}
	held := map[string]bool{}
	conns := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	port := fmt.Sprintf(":%04X", qemu.GuestPort)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "fd" {
			held[strings.Trim(f[1], "[]")] = true
			continue
		}
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		if len(f) < 10 || !strings.HasSuffix(f[1], port) || f[3] == "0A" {
			continue
		}
		if held[f[9]] {
			conns[f[9]] = procNetAddr(f[1]) + " <- " + procNetAddr(f[2]) + " state " + f[3]
		}
	}
	if len(held) == 0 {
		return nil, fmt.Errorf("no socket descriptors found for PID 1:\n%s", out)
	}
	return conns, nil
}

// procNetAddr renders a /proc/net/tcp{,6} address ("0100007F:1F90", or 32
// hex digits for IPv6, each 32-bit word in host byte order) as ip:port.
func procNetAddr(s string) string {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if !ok || err != nil || (len(hexIP) != 8 && len(hexIP) != 32) {
		return s
	}
	ip := make(net.IP, 0, 16)
	for i := 0; i < len(hexIP); i += 8 {
		w, err := strconv.ParseUint(hexIP[i:i+8], 16, 32)
		if err != nil {
			return s
		}
		ip = binary.LittleEndian.AppendUint32(ip, uint32(w))
	}
	return net.JoinHostPort(ip.String(), strconv.FormatUint(port, 10))
}

// stillOpen returns the connections of before that are in now.
func stillOpen(before, now map[string]string) []string {
	var out []string
	for ino, desc := range before {
		if _, ok := now[ino]; ok {
			out = append(out, "inode "+ino+" "+desc)
		}
	}
	sort.Strings(out)
	return out
}

// recovery is envd's "recovered after restore" log line.
type recovery struct {
	RSSKiB     int64 `json:"rss_kib"`
	Goroutines int   `json:"goroutines"`
}

// lastRecovery finds the last recovery line on a console.
func lastRecovery(console string) (*recovery, bool) {
	lines := strings.Split(console, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if !strings.Contains(l, `"recovered after restore"`) {
			continue
		}
		var r recovery
		if start := strings.IndexByte(l, '{'); start >= 0 {
			if json.Unmarshal([]byte(l[start:]), &r) == nil {
				return &r, true
			}
		}
	}
	return nil, false
}

// waitRecovery waits until the guest's console shows the recovery line.
func waitRecovery(ctx context.Context, g *guest) (*recovery, error) {
	for {
		if r, ok := lastRecovery(g.m.ConsoleText()); ok {
			return r, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no 'recovered after restore' line on the console: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// counterFile checks the counter's own file, "<n> <epoch.micros>" per line:
// the numbers count up by one (the process never stopped and no line was
// lost), and the timestamps never go back. It returns the largest jump
// between consecutive lines and the one after it.
func counterFile(data string) (lines int, biggest, second time.Duration, err error) {
	var prev float64
	for i, l := range strings.Split(strings.TrimSuffix(data, "\n"), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			return i, 0, 0, fmt.Errorf("counter.log line %d: %q", i, l)
		}
		n, err1 := strconv.Atoi(f[0])
		ts, err2 := strconv.ParseFloat(f[1], 64)
		if err1 != nil || err2 != nil || n != i {
			return i, 0, 0, fmt.Errorf("counter.log line %d is %q, want number %d", i, l, i)
		}
		if i > 0 {
			d := time.Duration((ts - prev) * float64(time.Second))
			if d < 0 {
				return i, 0, 0, fmt.Errorf("counter.log line %d: time went back by %v", i, -d)
			}
			if d > biggest {
				biggest, second = d, biggest
			} else if d > second {
				second = d
			}
		}
		prev = ts
		lines = i + 1
	}
	return lines, biggest, second, nil
}

// durations summarises a series of timings.
type durations []time.Duration

func (d durations) String() string {
	if len(d) == 0 {
		return "-"
	}
	s := append(durations(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return fmt.Sprintf("min %v  median %v  max %v  (n=%d)", s[0].Round(time.Millisecond), s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond), len(s))
}
