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

	"connectrpc.com/connect"

	"github.com/envd/envd/internal/auth"
	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/identity"
	"github.com/envd/envd/internal/rpc/jsoncodec"
)

// MaxMessageBytes is the largest request message accepted (spec rpc.md
// §2.4: at least 32 MiB, recommended 64 MiB); bigger is resource_exhausted.
const MaxMessageBytes = 64 << 20

// compressMinBytes: smaller responses are not worth compressing.
const compressMinBytes = 1024

// HandlerOptions are the options every envd Connect handler uses.
func HandlerOptions(log *slog.Logger) []connect.HandlerOption {
	return []connect.HandlerOption{
		connect.WithReadMaxBytes(MaxMessageBytes),
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

// User resolves the user an RPC acts as: the Basic-auth user attached by
// the middleware, else the default user (spec rpc.md §3).
func User(ctx context.Context, env *defaults.Store) (*identity.User, error) {
	if u, ok := auth.UserFrom(ctx); ok {
		return u, nil
	}
	name := env.DefaultUser()
	if name == "" {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("no user specified"))
	}
	u, err := identity.LookupUser(name)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("invalid default user: '%s'", name))
	}
	return u, nil
}
