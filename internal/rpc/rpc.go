// Package rpc holds what envd's Connect services share: handler options
// (message limits, compression, panic recovery) and the user an RPC acts
// as (spec rpc.md §2–§3). The services live in subpackages.
package rpc

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/process/processconnect"
	"github.com/envd/envd/internal/auth"
	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/identity"
	"github.com/envd/envd/internal/rpc/jsoncodec"
)

// Limits on request messages (D19, spec rpc.md §2.4); beyond them an RPC
// ends with resource_exhausted. The limits apply to a message's
// decompressed size.
const (
	// MaxMessageBytes is the limit of the procedures that carry bulk data:
	// Start (argv and environment), SendInput and StreamInput (stdin). The
	// spec asks for at least 32 MiB and recommends 64 MiB.
	MaxMessageBytes = 64 << 20
	// SmallMessageBytes is the limit of every other procedure, whose
	// messages hold a few paths or ids (PATH_MAX is 4 KiB).
	SmallMessageBytes = 1 << 20
	// BudgetBytes is the shared in-flight budget of request message bytes
	// across all RPCs (see Budget); BudgetReserveBytes of it are kept for
	// the first BudgetSmallBytes of each message. So large messages
	// together hold at most 80 MiB: one message at the 64 MiB limit at a
	// time, or several smaller ones. Decoding costs envd two to three times
	// a message's size in memory, and small RPCs are served meanwhile. A
	// message that does not fit waits up to BudgetWait for room.
	BudgetBytes        = 96 << 20
	BudgetReserveBytes = 16 << 20
	BudgetSmallBytes   = 64 << 10
	BudgetWait         = 5 * time.Second
	// maxErrorMessage bounds the message of an error sent to a client: an
	// error that quotes a request (a command line of many MiB) must not be
	// copied again into the response.
	maxErrorMessage = 4 << 10
)

// messageLimits are the per-procedure limits: MaxMessageBytes for the
// procedures that carry bulk data, SmallMessageBytes for the rest.
func messageLimits() map[string]int64 {
	return map[string]int64{
		processconnect.ProcessStartProcedure:       MaxMessageBytes,
		processconnect.ProcessSendInputProcedure:   MaxMessageBytes,
		processconnect.ProcessStreamInputProcedure: MaxMessageBytes,
	}
}

// compressMinBytes: smaller responses are not worth compressing.
const compressMinBytes = 1024

// HandlerOptions are the options every envd Connect handler uses; the
// handlers are then mounted through guard.Wrap.
func HandlerOptions(log *slog.Logger, guard *Guard) []connect.HandlerOption {
	return []connect.HandlerOption{
		// The guard enforces each procedure's limit first; this is the
		// backstop for a handler mounted without it.
		connect.WithReadMaxBytes(MaxMessageBytes),
		connect.WithInterceptors(guard.Interceptor(), boundErrors{}),
		jsoncodec.HandlerOption(), // the JSON codec: the E2B SDKs' stream events without protojson
		connect.WithCompressMinBytes(compressMinBytes),
		// gzip at its fastest level: the Wrenn host's client always asks for
		// gzip, and at the default level compressing every 32 KiB output
		// event costs more CPU than everything else in a stream.
		connect.WithCompression("gzip",
			func() connect.Decompressor { return &gzip.Reader{} },
			func() connect.Compressor {
				w, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed)
				return w
			}),
		connect.WithRecover(func(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
			log.Error("panic in RPC", "procedure", spec.Procedure, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			return connect.NewError(connect.CodeInternal, errors.New("internal error"))
		}),
	}
}

// UserLookup finds a user by name in the user database (an identity.Cache's
// LookupUser; identity.LookupUser reads the files every time).
type UserLookup func(name string) (*identity.User, error)

// User resolves the user an RPC acts as: the Basic-auth user attached by
// the middleware, else the default user (spec rpc.md §3), looked up with
// lookup (identity.LookupUser when nil).
func User(ctx context.Context, env *defaults.Store, lookup UserLookup) (*identity.User, error) {
	if u, ok := auth.UserFrom(ctx); ok {
		return u, nil
	}
	name := env.DefaultUser()
	if name == "" {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("no user specified"))
	}
	if lookup == nil {
		lookup = identity.LookupUser
	}
	u, err := lookup(name)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("invalid default user: '%s'", name))
	}
	return u, nil
}

// boundErrors shortens error messages longer than maxErrorMessage.
type boundErrors struct{}

func (boundErrors) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		resp, err := next(ctx, req)
		return resp, boundError(err)
	}
}

func (boundErrors) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (boundErrors) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return boundError(next(ctx, conn))
	}
}

func boundError(err error) error {
	var ce *connect.Error
	if !errors.As(err, &ce) || len(ce.Message()) <= maxErrorMessage {
		return err
	}
	msg := strings.ToValidUTF8(ce.Message()[:maxErrorMessage], "")
	out := connect.NewError(ce.Code(), fmt.Errorf("%s… (%d bytes cut)", msg, len(ce.Message())-len(msg)))
	for k, v := range ce.Meta() {
		out.Meta()[k] = v
	}
	for _, d := range ce.Details() {
		out.AddDetail(d)
	}
	return out
}
