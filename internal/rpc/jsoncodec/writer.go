package jsoncodec

import (
	"encoding/base64"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/gen/process"
)

// writer appends protojson's encoding of the hot messages: fields in
// declaration order, default values omitted (proto3 optional fields and
// oneof members written whenever set), lowerCamelCase names, bytes in
// padded standard base64, 64-bit integers as strings, enums by name.
// Anything protojson would refuse or that this writer does not model sets
// bad, and the caller hands the message to protojson instead.
type writer struct {
	b          []byte
	commaSpace bool
	bad        bool
	depth      int
	// members has bit d set once the object at depth d has a member.
	members uint64
}

func (w *writer) comma() {
	w.b = append(w.b, ',')
	if w.commaSpace {
		w.b = append(w.b, ' ')
	}
}

func (w *writer) open() {
	w.b = append(w.b, '{')
	w.depth++
	w.members &^= 1 << w.depth
}

func (w *writer) close() {
	w.b = append(w.b, '}')
	w.depth--
}

// name starts a member; names are ASCII constants that need no escaping.
func (w *writer) name(n string) {
	if w.members&(1<<w.depth) != 0 {
		w.comma()
	}
	w.members |= 1 << w.depth
	w.b = append(w.b, '"')
	w.b = append(w.b, n...)
	w.b = append(w.b, '"', ':')
}

// str writes s as protojson does: '"', '\\' and control characters
// escaped (\b \f \n \r \t by name, others as \u00xx), everything else
// verbatim; invalid UTF-8 is protojson's error to report.
func (w *writer) str(s string) {
	w.b = append(w.b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				w.bad = true
				return
			}
			i += n
			continue
		}
		if c >= ' ' && c != '"' && c != '\\' {
			i++
			continue
		}
		w.b = append(w.b, s[start:i]...)
		switch c {
		case '"', '\\':
			w.b = append(w.b, '\\', c)
		case '\b':
			w.b = append(w.b, '\\', 'b')
		case '\f':
			w.b = append(w.b, '\\', 'f')
		case '\n':
			w.b = append(w.b, '\\', 'n')
		case '\r':
			w.b = append(w.b, '\\', 'r')
		case '\t':
			w.b = append(w.b, '\\', 't')
		default:
			const hex = "0123456789abcdef"
			w.b = append(w.b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	w.b = append(w.b, s[start:]...)
	w.b = append(w.b, '"')
}

func (w *writer) bytes(p []byte) {
	w.b = append(w.b, '"')
	w.b = base64.StdEncoding.AppendEncode(w.b, p)
	w.b = append(w.b, '"')
}

func (w *writer) emptyObject() { w.b = append(w.b, '{', '}') }

// processEvent writes a ProcessEvent (StartResponse.event,
// ConnectResponse.event).
func (w *writer) processEvent(e *process.ProcessEvent) {
	w.open()
	switch ev := e.Event.(type) {
	case nil:
	case *process.ProcessEvent_Start:
		if ev.Start == nil {
			w.bad = true
			return
		}
		w.name("start")
		w.open()
		if ev.Start.Pid != 0 {
			w.name("pid")
			w.b = strconv.AppendUint(w.b, uint64(ev.Start.Pid), 10)
		}
		w.close()
	case *process.ProcessEvent_Data:
		if ev.Data == nil {
			w.bad = true
			return
		}
		w.name("data")
		w.open()
		switch out := ev.Data.Output.(type) {
		case nil:
		case *process.ProcessEvent_DataEvent_Stdout:
			w.name("stdout")
			w.bytes(out.Stdout)
		case *process.ProcessEvent_DataEvent_Stderr:
			w.name("stderr")
			w.bytes(out.Stderr)
		case *process.ProcessEvent_DataEvent_Pty:
			w.name("pty")
			w.bytes(out.Pty)
		default:
			w.bad = true
			return
		}
		w.close()
	case *process.ProcessEvent_End:
		end := ev.End
		if end == nil {
			w.bad = true
			return
		}
		w.name("end")
		w.open()
		if end.ExitCode != 0 {
			w.name("exitCode")
			w.b = strconv.AppendInt(w.b, int64(end.ExitCode), 10)
		}
		if end.Exited {
			w.name("exited")
			w.b = append(w.b, "true"...)
		}
		if end.Status != "" {
			w.name("status")
			w.str(end.Status)
		}
		if end.Error != nil {
			w.name("error")
			w.str(*end.Error)
		}
		w.close()
	case *process.ProcessEvent_Keepalive:
		if ev.Keepalive == nil {
			w.bad = true
			return
		}
		w.name("keepalive")
		w.emptyObject()
	default:
		w.bad = true
		return
	}
	w.close()
}

func (w *writer) watchDirResponse(m *filesystem.WatchDirResponse) {
	w.open()
	switch ev := m.Event.(type) {
	case nil:
	case *filesystem.WatchDirResponse_Start:
		if ev.Start == nil {
			w.bad = true
			return
		}
		w.name("start")
		w.emptyObject()
	case *filesystem.WatchDirResponse_Filesystem:
		if ev.Filesystem == nil {
			w.bad = true
			return
		}
		w.name("filesystem")
		w.fsEvent(ev.Filesystem)
	case *filesystem.WatchDirResponse_Keepalive:
		if ev.Keepalive == nil {
			w.bad = true
			return
		}
		w.name("keepalive")
		w.emptyObject()
	default:
		w.bad = true
		return
	}
	w.close()
}

func (w *writer) fsEvent(e *filesystem.FilesystemEvent) {
	w.open()
	if e.Name != "" {
		w.name("name")
		w.str(e.Name)
	}
	if e.Type != 0 {
		w.name("type")
		w.enum(filesystem.EventType_name, int32(e.Type))
	}
	if e.Entry != nil {
		w.name("entry")
		w.entryInfo(e.Entry)
	}
	w.close()
}

func (w *writer) entryInfo(e *filesystem.EntryInfo) {
	w.open()
	if e.Name != "" {
		w.name("name")
		w.str(e.Name)
	}
	if e.Type != 0 {
		w.name("type")
		w.enum(filesystem.FileType_name, int32(e.Type))
	}
	if e.Path != "" {
		w.name("path")
		w.str(e.Path)
	}
	if e.Size != 0 {
		w.name("size")
		w.b = append(w.b, '"')
		w.b = strconv.AppendInt(w.b, e.Size, 10)
		w.b = append(w.b, '"')
	}
	if e.Mode != 0 {
		w.name("mode")
		w.b = strconv.AppendUint(w.b, uint64(e.Mode), 10)
	}
	if e.Permissions != "" {
		w.name("permissions")
		w.str(e.Permissions)
	}
	if e.Owner != "" {
		w.name("owner")
		w.str(e.Owner)
	}
	if e.Group != "" {
		w.name("group")
		w.str(e.Group)
	}
	if e.ModifiedTime != nil {
		w.name("modifiedTime")
		w.timestamp(e.ModifiedTime)
	}
	if e.SymlinkTarget != nil {
		w.name("symlinkTarget")
		w.str(*e.SymlinkTarget)
	}
	if len(e.Metadata) > 0 {
		w.name("metadata")
		w.stringMap(e.Metadata)
	}
	w.close()
}

// enum writes a known value by name, any other by number.
func (w *writer) enum(names map[int32]string, v int32) {
	if n, ok := names[v]; ok {
		w.b = append(w.b, '"')
		w.b = append(w.b, n...)
		w.b = append(w.b, '"')
		return
	}
	w.b = strconv.AppendInt(w.b, int64(v), 10)
}

// Range protojson accepts for google.protobuf.Timestamp.
const (
	minTimestampSeconds = -62135596800 // 0001-01-01T00:00:00Z
	maxTimestampSeconds = 253402300799 // 9999-12-31T23:59:59Z
	maxNanos            = 999999999
)

// timestamp writes RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits.
func (w *writer) timestamp(ts *timestamppb.Timestamp) {
	secs, nanos := ts.GetSeconds(), int64(ts.GetNanos())
	if secs < minTimestampSeconds || secs > maxTimestampSeconds || nanos < 0 || nanos > maxNanos {
		w.bad = true // protojson's range error
		return
	}
	w.b = append(w.b, '"')
	w.b = time.Unix(secs, nanos).UTC().AppendFormat(w.b, "2006-01-02T15:04:05.000000000")
	n := len(w.b)
	switch {
	case string(w.b[n-9:]) == "000000000":
		w.b = w.b[:n-10] // and the dot
	case string(w.b[n-6:]) == "000000":
		w.b = w.b[:n-6]
	case string(w.b[n-3:]) == "000":
		w.b = w.b[:n-3]
	}
	w.b = append(w.b, 'Z', '"')
}

// stringMap writes a map<string, string> with its keys in order.
func (w *writer) stringMap(m map[string]string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	w.open()
	for _, k := range keys {
		if w.members&(1<<w.depth) != 0 {
			w.comma()
		}
		w.members |= 1 << w.depth
		w.str(k)
		w.b = append(w.b, ':')
		w.str(m[k])
	}
	w.close()
}
