package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestJSON_FieldNames(t *testing.T) {
	var buf bytes.Buffer
	l := For(New(&buf, Options{JSON: true}), "process")
	l.Info("process started", "pid", 812, "tag", "init-cmd")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("not one JSON object: %v: %q", err, buf.String())
	}
	if rec["level"] != "info" || rec["logger"] != "process" || rec["message"] != "process started" {
		t.Fatalf("unexpected record %v", rec)
	}
	if rec["pid"].(float64) != 812 || rec["tag"] != "init-cmd" {
		t.Fatalf("context fields missing: %v", rec)
	}
	ts, ok := rec["timestamp"].(string)
	if !ok || !strings.HasSuffix(ts, "Z") {
		t.Fatalf("timestamp not RFC 3339 UTC: %v", rec["timestamp"])
	}
	if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
		t.Fatalf("timestamp %q: %v", ts, err)
	}
	for _, k := range []string{"time", "msg"} {
		if _, ok := rec[k]; ok {
			t.Fatalf("slog default key %q leaked: %v", k, rec)
		}
	}
}

func TestLevels(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Options{JSON: true})
	l.Debug("hidden")
	if buf.Len() != 0 {
		t.Fatalf("debug logged at info level: %q", buf.String())
	}
	l = New(&buf, Options{JSON: true, Verbose: true})
	l.Debug("shown")
	l.Warn("w")
	l.Error("e", "error", errors.New("boom"))
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{"debug", "warn", "error"}
	if len(lines) != 3 {
		t.Fatalf("got %d lines: %q", len(lines), buf.String())
	}
	for i, line := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		if rec["level"] != want[i] {
			t.Fatalf("line %d level %v, want %s", i, rec["level"], want[i])
		}
	}
}

func TestText_Format(t *testing.T) {
	var buf bytes.Buffer
	l := For(New(&buf, Options{}), "http")
	l.With("method", "GET").Info("request done", "path", "/health", "note", "two words")
	line := buf.String()
	re := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d) INFO \[http\] request done method=GET path=/health note="two words"\n$`)
	if !re.MatchString(line) {
		t.Fatalf("unexpected text line %q", line)
	}
	buf.Reset()
	New(&buf, Options{}).Info("plain")
	if !strings.Contains(buf.String(), " INFO [envd] plain\n") {
		t.Fatalf("default logger name missing: %q", buf.String())
	}
}
