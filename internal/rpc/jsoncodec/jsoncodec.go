// Package jsoncodec is envd's JSON codec for Connect (spec rpc.md §2.2):
// the codec the E2B SDKs use ("application/json", "application/connect+json").
// The messages that make up a stream's bulk — the events of Start, Connect
// and WatchDir, and the batches of GetWatcherEvents — are written by hand,
// byte for byte what protojson (configured as connect-go configures it)
// writes for them, including protojson's deliberately unstable
// whitespace, which this codec detects once and reproduces. Everything
// else, every case the hand-written path does not cover (invalid UTF-8,
// a timestamp out of range, a nil member of a oneof or list) and every
// Unmarshal go to protojson, so that results and errors stay exactly
// connect-go's.
package jsoncodec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/runtime/protoiface"

	"github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/gen/process"
)

// Names under which connect-go registers its JSON codec for handlers.
const (
	Name            = "json"
	NameCharsetUTF8 = "json; charset=utf-8"
)

// HandlerOption replaces connect-go's JSON codecs of a handler with this
// one.
func HandlerOption() connect.HandlerOption {
	return connect.WithHandlerOptions(
		connect.WithCodec(New(Name)),
		connect.WithCodec(New(NameCharsetUTF8)),
	)
}

// Codec is a connect.Codec. It is safe for concurrent use.
type Codec struct {
	name string
	// commaSpace: protojson writes a space after every comma in this
	// binary (its output is made unstable on purpose, per binary).
	commaSpace bool
}

// New returns the codec registered under name.
func New(name string) *Codec {
	probe, _ := protojson.Marshal(&process.ProcessEvent_EndEvent{ExitCode: 1, Exited: true})
	return &Codec{name: name, commaSpace: bytes.Contains(probe, []byte(", "))}
}

// Name is the codec's name.
func (c *Codec) Name() string { return c.name }

// IsBinary reports false: the output is text.
func (c *Codec) IsBinary() bool { return false }

// Marshal encodes message.
func (c *Codec) Marshal(message any) ([]byte, error) {
	return c.MarshalAppend(nil, message)
}

// MarshalAppend appends the encoding of message to dst (connect-go reuses
// pooled buffers through it).
func (c *Codec) MarshalAppend(dst []byte, message any) ([]byte, error) {
	if out, ok := c.appendHot(dst, message); ok {
		return out, nil
	}
	m, ok := message.(proto.Message)
	if !ok {
		return nil, errNotProto(message)
	}
	if n := proto.Size(m); n >= presizeBytes {
		dst = slices.Grow(dst, n*jsonPerBinaryByte)
	}
	return protojson.MarshalOptions{}.MarshalAppend(dst, m)
}

// presizeBytes: messages whose binary size is at least this are encoded
// into a buffer sized for them up front. protojson grows its output by
// doubling, which for a ListDir of 100 000 entries leaves twice the
// response's size in garbage; smaller messages use connect-go's pooled
// buffers as they are.
const presizeBytes = 256 << 10

// jsonPerBinaryByte estimates JSON bytes per binary byte for the messages
// that get large (EntryInfo lists: field names, quoted numbers and
// timestamps make their JSON about three and a half times the binary).
const jsonPerBinaryByte = 4

// MarshalStable is Marshal with insignificant whitespace removed, as
// connect-go's JSON codec does it (clients use it for GET requests).
func (c *Codec) MarshalStable(message any) ([]byte, error) {
	b, err := c.Marshal(message)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// Unmarshal decodes data into message exactly as connect-go's JSON codec
// does: unknown fields are discarded, an empty payload is an error.
func (c *Codec) Unmarshal(data []byte, message any) error {
	m, ok := message.(proto.Message)
	if !ok {
		return errNotProto(message)
	}
	if len(data) == 0 {
		return errors.New("zero-length payload is not a valid JSON object")
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, m); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", message, err)
	}
	return nil
}

// errNotProto is connect-go's error for a message that is not a
// google.golang.org/protobuf message.
func errNotProto(message any) error {
	if _, ok := message.(protoiface.MessageV1); ok {
		return fmt.Errorf("%T uses github.com/golang/protobuf, but connect-go only supports google.golang.org/protobuf: see https://go.dev/blog/protobuf-apiv2", message)
	}
	return fmt.Errorf("%T doesn't implement proto.Message", message)
}

// appendHot writes the hot messages; ok is false for any other message
// and whenever protojson must decide (the caller then discards out).
func (c *Codec) appendHot(dst []byte, message any) (out []byte, ok bool) {
	w := writer{b: dst, commaSpace: c.commaSpace}
	switch m := message.(type) {
	case *process.StartResponse:
		if m == nil {
			return nil, false
		}
		w.open()
		if m.Event != nil {
			w.name("event")
			w.processEvent(m.Event)
		}
		w.close()
	case *process.ConnectResponse:
		if m == nil {
			return nil, false
		}
		w.open()
		if m.Event != nil {
			w.name("event")
			w.processEvent(m.Event)
		}
		w.close()
	case *filesystem.WatchDirResponse:
		if m == nil {
			return nil, false
		}
		w.watchDirResponse(m)
	case *filesystem.GetWatcherEventsResponse:
		if m == nil {
			return nil, false
		}
		w.open()
		if len(m.Events) > 0 {
			w.name("events")
			w.b = append(w.b, '[')
			for i, ev := range m.Events {
				if ev == nil {
					return nil, false
				}
				if i > 0 {
					w.comma()
				}
				w.fsEvent(ev)
			}
			w.b = append(w.b, ']')
		}
		w.close()
	default:
		return nil, false
	}
	if w.bad {
		return nil, false
	}
	return w.b, true
}
