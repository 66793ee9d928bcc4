package main

import (
	"bytes"
	"context"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/envd/envd/gen/process"
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
		// An RSS difference can be zero or negative (the GC ran between).
		delta := strings.HasSuffix(f[0], "_rss") || strings.HasSuffix(f[0], "_per_1000_processes")
		if err != nil || (!delta && !(v > 0)) {
			t.Errorf("figure %q has value %q", f[0], f[1])
		}
		got[f[0]] = f[2]
	}
	sz := quickSizes()
	common := map[string]string{
		"exec_true_rtt_p50":                       "ms",
		"exec_true_rtt_p99":                       "ms",
		"exec_parallel_8workers":                  "execs/s",
		"stdout_stream_2MiB":                      "MB/s",
		"stdout_stream_json_2MiB":                 "MB/s",
		"upload_8MiB":                             "MB/s",
		"download_8MiB":                           "MB/s",
		"listdir_500_entries":                     "ms",
		"concurrent_streams_10x256KiB":            "s",
		"concurrent_streams_json_10x256KiB":       "s",
		"scale_exec_p50_bg0":                      "ms",
		"scale_exec_p50_bg10":                     "ms",
		"scale_exec_p50_bg30":                     "ms",
		"scale_listdir_100_entries":               "ms",
		"scale_listdir_1000_entries":              "ms",
		"scale_streams_2_throughput":              "MB/s",
		"scale_streams_10_throughput":             "MB/s",
		"scale_watchdir_recursive_100_dirs_setup": "ms",
	}
	for _, d := range ratioDefs(sz) {
		common["ratio_"+d.name] = "x"
	}
	want := map[string]string{
		"envd/startup_to_healthy":                    "ms",
		"envd/rss_idle":                              "KiB",
		"envd/rss_at_load_end":                       "KiB",
		"envd/rss_after_run":                         "KiB",
		"envd/binary_size":                           "bytes",
		"envd/scale_rss_per_1000_processes":          "KiB",
		"envd/scale_streams_2_rss_peak":              "KiB",
		"envd/scale_streams_10_rss_peak":             "KiB",
		"envd/scale_watchdir_recursive_100_dirs_rss": "KiB",
		"machine/fork_exec_true_p50":                 "ms",
		"machine/fork_exec_true_p99":                 "ms",
		"machine/fork_exec_wrapped_true_p50":         "ms",
		"machine/fork_exec_wrapped_true_p99":         "ms",
		"machine/fork_exec_parallel_8workers":        "execs/s",
		"machine/pipe_stream_2MiB":                   "MB/s",
		"machine/base64_encode":                      "MB/s",
		"machine/concurrent_pipes_10x256KiB":         "s",
		"machine/loopback_tcp_2MiB":                  "MB/s",
		"machine/file_write_8MiB":                    "MB/s",
		"machine/file_read_8MiB":                     "MB/s",
		"machine/readdir_lstat_500":                  "ms",
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
	for _, c := range []string{"# machine: nproc ", "# loadavg ", "# ratios against the machine baselines", "# reading: ListDir per entry"} {
		if !strings.Contains(out.String(), c) {
			t.Errorf("no %q line in\n%s", c, out.String())
		}
	}
	if !strings.Contains(out.String(), "# machine: nproc ") {
		t.Errorf("no machine description in\n%s", out.String())
	}
}

func TestRatios_AgainstBaselinesOfTheRun(t *testing.T) {
	sz := fullSizes()
	figs := map[string]float64{
		"envd/exec_true_rtt_p50":                   1.8,
		"machine/fork_exec_true_p50":               0.9,
		"envd/exec_parallel_8workers":              900,
		"machine/fork_exec_parallel_8workers":      1800,
		"envd/stdout_stream_json_512MiB":           450,
		"machine/base64_encode":                    900,
		"envd/stdout_stream_512MiB":                math.NaN(), // no run completed
		"machine/pipe_stream_512MiB":               3000,
		"envd/concurrent_streams_json_100x1024KiB": 0.6,
		"machine/concurrent_pipes_100x1024KiB":     0.4,
		"envd/listdir_10000_entries":               30,
		"machine/readdir_lstat_10000":              0, // a baseline that is not positive
		"envd/upload_256MiB":                       800,
		"machine/file_write_256MiB":                1000,
		// download: no baseline at all
		"envd/download_256MiB":    1000,
		"other/exec_true_rtt_p50": 2.7,
	}
	got := map[string]float64{}
	for _, f := range ratios(figs, "envd", ratioDefs(sz)) {
		if f.unit != "x" {
			t.Errorf("%s: unit %q", f.name, f.unit)
		}
		got[f.name] = f.value
	}
	want := map[string]float64{
		"envd/ratio_exec_p50_vs_fork_exec_p50":           2,
		"envd/ratio_exec_parallel_vs_fork_exec_parallel": 0.5,
		"envd/ratio_stdout_json_vs_base64_encode":        0.5,
		"envd/ratio_concurrent_json_vs_pipes":            1.5,
		"envd/ratio_upload_vs_file_write":                0.8,
	}
	if len(got) != len(want) {
		t.Fatalf("ratios %v, want %v", got, want)
	}
	for k, v := range want {
		if math.Abs(got[k]-v) > 1e-9 {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	other := ratios(figs, "other", ratioDefs(sz))
	if len(other) != 1 || other[0].name != "other/ratio_exec_p50_vs_fork_exec_p50" || math.Abs(other[0].value-3) > 1e-9 {
		t.Errorf("other daemon: %+v", other)
	}
	// The names the workloads print are the ones the ratios look up.
	for _, d := range ratioDefs(quickSizes()) {
		if strings.Contains(d.num, "512MiB") || strings.Contains(d.den, "512MiB") || strings.Contains(d.den, "256MiB") {
			t.Errorf("quick ratio %s uses full-size names %s / %s", d.name, d.num, d.den)
		}
	}
}

func TestFormatValue(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 1234: "1234", 1234.5: "1234.5", 99.456: "99.46", 0.1234: "0.123", -5000: "-5000", math.NaN(): "NaN", math.Inf(1): "NaN"} {
		if got := formatValue(v); got != want {
			t.Errorf("formatValue(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestDecodeStdout(t *testing.T) {
	payload := []byte("hello\x00\xff world")
	msg, err := protojson.Marshal(&process.StartResponse{Event: &process.ProcessEvent{Event: &process.ProcessEvent_Data{Data: &process.ProcessEvent_DataEvent{Output: &process.ProcessEvent_DataEvent_Stdout{Stdout: payload}}}}})
	if err != nil {
		t.Fatal(err)
	}
	data, isData, err := decodeStdout(msg, nil)
	if err != nil || !isData || !bytes.Equal(data, payload) {
		t.Fatalf("%q: %q %v %v", msg, data, isData, err)
	}
	for _, other := range []string{
		`{"event":{"data":{"stderr":"aGk="}}}`,
		`{"event":{"start":{"pid":1}}}`,
		`{"event":{"data":{"stdout":"aGk="}, "x":1}}`, // not the exact shape: protojson decides
	} {
		if _, isData, err := decodeStdout([]byte(other), nil); isData || err != nil {
			t.Errorf("%s: taken as a stdout event (%v)", other, err)
		}
	}
	if _, isData, err := decodeStdout([]byte(`{"event":{"data":{"stdout":"!!!"}}}`), nil); !isData || err == nil {
		t.Error("bad base64 not reported")
	}
	if err := endOfStreamError([]byte(`{"error":{"code":"aborted","message":"too slow"}}`)); err == nil || err.Error() != "aborted: too slow" {
		t.Errorf("end of stream error: %v", err)
	}
	if err := endOfStreamError([]byte(`{}`)); err != nil {
		t.Errorf("clean end: %v", err)
	}
}
