package main

import (
	"bytes"
	"context"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/envd/envd/internal/envdtest"
)

func TestPercentileAndMedian(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	for _, tc := range []struct {
		p, want float64
	}{{50, 3}, {99, 5}, {0, 1}, {20, 1}, {21, 2}, {100, 5}} {
		if got := percentile(xs, tc.p); got != tc.want {
			t.Errorf("percentile(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if xs[0] != 5 {
		t.Error("percentile sorted its input in place")
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median of four = %v", got)
	}
	if !math.IsNaN(median(nil)) || !math.IsNaN(percentile(nil, 50)) {
		t.Error("empty input must give NaN")
	}
	if got := mbps(50e6, 0.5); got != 100 {
		t.Errorf("mbps = %v", got)
	}
}

func TestParseFlags_Addrs(t *testing.T) {
	var stderr bytes.Buffer
	cfg, err := parseFlags([]string{"--addr", "http://127.0.0.1:1/", "--addr", "wrenn=http://10.0.0.1:49983", "--quick"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.addrs) != 2 || cfg.addrs[0] != (remoteTarget{"addr1", "http://127.0.0.1:1"}) || cfg.addrs[1] != (remoteTarget{"wrenn", "http://10.0.0.1:49983"}) || !cfg.quick {
		t.Fatalf("parsed %+v", cfg)
	}
	if _, err := parseFlags([]string{"--no-start"}, &stderr); err == nil {
		t.Fatal("--no-start without --addr must be refused")
	}
}

// TestRun_QuickPrintsEveryFigure runs the whole program in quick mode
// against the built binary, once started by the bench and once as an
// --addr target, and checks that every figure is printed as
// "name value unit" with a positive value.
func TestRun_QuickPrintsEveryFigure(t *testing.T) {
	e := envdtest.Start(t, envdtest.Options{})
	cfg := config{
		bin:   envdtest.Binary(t),
		addrs: []remoteTarget{{label: "other", url: e.URL}},
		quick: true,
		dir:   t.TempDir(),
	}
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := run(ctx, cfg, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("line %q is not \"name value unit\"", line)
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil || !(v > 0) {
			t.Errorf("figure %q has value %q", f[0], f[1])
		}
		got[f[0]] = f[2]
	}
	common := map[string]string{
		"exec_true_rtt_p50":            "ms",
		"exec_true_rtt_p99":            "ms",
		"exec_parallel_8workers":       "execs/s",
		"stdout_stream_2MiB":           "MB/s",
		"upload_8MiB":                  "MB/s",
		"download_8MiB":                "MB/s",
		"listdir_500_entries":          "ms",
		"concurrent_streams_10x256KiB": "s",
	}
	want := map[string]string{
		"envd/startup_to_healthy":             "ms",
		"envd/rss_idle":                       "KiB",
		"envd/rss_after_run":                  "KiB",
		"envd/binary_size":                    "bytes",
		"machine/fork_exec_true_p50":          "ms",
		"machine/fork_exec_true_p99":          "ms",
		"machine/fork_exec_wrapped_true_p50":  "ms",
		"machine/fork_exec_wrapped_true_p99":  "ms",
		"machine/fork_exec_parallel_8workers": "execs/s",
		"machine/pipe_stream_2MiB":            "MB/s",
		"machine/loopback_tcp_2MiB":           "MB/s",
		"machine/file_write_8MiB":             "MB/s",
		"machine/file_read_8MiB":              "MB/s",
	}
	for k, u := range common {
		want["envd/"+k] = u
		want["other/"+k] = u
	}
	for name, unit := range want {
		if got[name] != unit {
			t.Errorf("figure %s: unit %q, want %q", name, got[name], unit)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected figure %s", name)
		}
	}
	// Started-daemon-only figures never appear for an --addr target.
	if _, ok := got["other/rss_idle"]; ok {
		t.Error("RSS reported for a daemon the bench did not start")
	}
	if !strings.Contains(out.String(), "# machine: nproc ") {
		t.Errorf("no machine description in\n%s", out.String())
	}
}
