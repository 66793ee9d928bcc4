// Package logging builds envd's structured logger (spec decision D16): JSON
// lines in Firecracker mode, readable text with --isnotfc, info level unless
// --verbose. Every component logs through a child logger that carries its
// name in the "logger" field.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
)

// LoggerKey is the attribute naming the component that logged a record.
const LoggerKey = "logger"

// Options selects the format and level.
type Options struct {
	JSON    bool
	Verbose bool
}

// New returns the root logger writing to w. Records carry logger=envd unless
// a component logger (For) overrides it.
func New(w io.Writer, opts Options) *slog.Logger {
	level := slog.LevelInfo
	if opts.Verbose {
		level = slog.LevelDebug
	}
	var h slog.Handler
	if opts.JSON {
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: jsonAttr})
	} else {
		h = &textHandler{out: &lockedWriter{w: w}, level: level}
	}
	return slog.New(h)
}

// For returns the logger of one component (e.g. "process", "http").
func For(l *slog.Logger, component string) *slog.Logger {
	return l.With(LoggerKey, component)
}

// Discard returns a logger that drops everything, for tests and for pieces
// built without a logger.
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func jsonAttr(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.TimeKey:
		if t, ok := a.Value.Any().(time.Time); ok {
			return slog.String("timestamp", t.UTC().Format(time.RFC3339Nano))
		}
	case slog.LevelKey:
		if lv, ok := a.Value.Any().(slog.Level); ok {
			return slog.String("level", levelName(lv))
		}
	case slog.MessageKey:
		a.Key = "message"
	}
	return a
}

func levelName(l slog.Level) string {
	switch {
	case l < slog.LevelInfo:
		return "debug"
	case l < slog.LevelWarn:
		return "info"
	case l < slog.LevelError:
		return "warn"
	default:
		return "error"
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// textHandler writes "<RFC 3339 local time> <LEVEL> [<logger>] <message>
// key=value ..." lines.
type textHandler struct {
	out    *lockedWriter
	level  slog.Level
	logger string
	attrs  []byte // pre-rendered " key=value" pairs from WithAttrs
	prefix string // group prefix for later attributes
}

func (h *textHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *textHandler) Handle(_ context.Context, r slog.Record) error {
	buf := make([]byte, 0, 256)
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	buf = t.Local().AppendFormat(buf, time.RFC3339)
	buf = append(buf, ' ')
	buf = append(buf, strings.ToUpper(levelName(r.Level))...)
	logger := h.logger
	extra := make([]byte, 0, 64)
	r.Attrs(func(a slog.Attr) bool {
		if h.prefix == "" && a.Key == LoggerKey {
			logger = a.Value.String()
			return true
		}
		extra = appendAttr(extra, h.prefix, a)
		return true
	})
	if logger == "" {
		logger = "envd"
	}
	buf = append(buf, " ["...)
	buf = append(buf, logger...)
	buf = append(buf, "] "...)
	buf = append(buf, r.Message...)
	buf = append(buf, h.attrs...)
	buf = append(buf, extra...)
	buf = append(buf, '\n')
	_, err := h.out.Write(buf)
	return err
}

func (h *textHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append([]byte(nil), h.attrs...)
	for _, a := range attrs {
		if h.prefix == "" && a.Key == LoggerKey {
			c.logger = a.Value.String()
			continue
		}
		c.attrs = appendAttr(c.attrs, h.prefix, a)
	}
	return &c
}

func (h *textHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.prefix = h.prefix + name + "."
	return &c
}

func appendAttr(buf []byte, prefix string, a slog.Attr) []byte {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return buf
	}
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range a.Value.Group() {
			buf = appendAttr(buf, p, g)
		}
		return buf
	}
	buf = append(buf, ' ')
	buf = append(buf, prefix...)
	buf = append(buf, a.Key...)
	buf = append(buf, '=')
	var s string
	switch a.Value.Kind() {
	case slog.KindString:
		s = a.Value.String()
	case slog.KindTime:
		s = a.Value.Time().Format(time.RFC3339Nano)
	default:
		s = fmt.Sprint(a.Value.Any())
	}
	if s == "" || strings.ContainsAny(s, " \t\n\"=") {
		return strconv.AppendQuote(buf, s)
	}
	return append(buf, s...)
}
