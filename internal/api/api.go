// Package api holds envd's plain HTTP handlers. Each is thin: decode the
// request, call the domain package that owns the capability, encode the
// answer (spec http.md §5–§9).
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/internal/auth"
	"github.com/envd/envd/internal/peer"
	"github.com/envd/envd/internal/server"
)

// Router is where handler groups mount their routes; *http.ServeMux is the
// one envd serves with. Patterns are Go ServeMux patterns ("GET /health").
type Router interface {
	HandleFunc(pattern string, handler func(http.ResponseWriter, *http.Request))
}

// UnaryBodyTimeout bounds the arrival of a small request body: a Connect
// unary RPC (application/proto, application/json) or another JSON body
// such as /files/compose's, counted from the handler's first read (D19).
// gRPC unary and streaming requests cannot be told apart by their headers,
// and streams and uploads are unbounded by design, so those are not
// covered. /init has its own, shorter bound (InitBodyTimeout).
const UnaryBodyTimeout = 30 * time.Second

// HostOnlyPaths are the routes that only the host calls: refused to peers
// inside the guest in Firecracker mode (spec http.md §1.5 step 2, D18) and
// to web pages always (auth.RefuseBrowsers): /init, /snapshot/prepare and
// the control-plane routes of control-plane.md §1.1.
func HostOnlyPaths() []string {
	return append([]string{"/init", "/snapshot/prepare"}, ControlPlanePaths()...)
}

// Options are what Handler's middleware needs.
type Options struct {
	Token  *auth.Token
	Lookup auth.UserLookup
	// Version is sent as X-Envd-Version on every /init response, including
	// the ones the middleware answers itself.
	Version string
	// Guest, when set (Firecracker mode), refuses HostOnlyPaths to peers
	// inside the guest. Nil with --isnotfc, where the rule does not apply.
	Guest *peer.Classifier
	// Gate reports whether the post-handover gate is closed (an envd
	// started from a live upgrade, not initialized yet; control-plane.md
	// §5.3). Nil: never.
	Gate func() bool
	// Handover is the X-Envd-Handover value of an envd started from a live
	// upgrade, sent on every /init response (§8.15). Nil: none.
	Handover func() (string, bool)
	Log      *slog.Logger
}

// Handler wraps the router with the inner middleware, outermost first (spec
// http.md §1.5; CORS is outside, in package server): the headers of /init
// and of the control-plane routes, the in-guest peer check, the web-page
// rule, the access-token check, the Basic-auth user, deadline-header
// validation and normalisation, and the bound on small bodies.
func Handler(o Options, router http.Handler) http.Handler {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := normalizeDeadline(boundSmallBodies(router))
	h = o.Token.RequireToken(o.Gate, auth.BasicUser(o.Lookup, h))
	h = auth.RefuseBrowsers(o.Token, HostOnlyPaths(), h)
	if o.Guest != nil {
		h = o.Guest.Guard(HostOnlyPaths(), log, h)
	}
	return initHeaders(o.Version, o.Handover, noStoreControlPlane(h))
}

// initHeaders sets the headers every /init response carries (spec http.md
// §8.6; X-Envd-Handover, control-plane.md §8.15) before any middleware can
// answer the request itself.
func initHeaders(version string, handover func() (string, bool), next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/init" {
			w.Header().Set("X-Envd-Version", version)
			if handover != nil {
				if v, ok := handover(); ok {
					w.Header().Set("X-Envd-Handover", v)
				}
			}
			noStore(w)
		}
		next.ServeHTTP(w, r)
	})
}

// isRPC reports whether the request is for one of the two Connect services.
func isRPC(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/process.Process/") || strings.HasPrefix(r.URL.Path, "/filesystem.Filesystem/")
}

// normalizeDeadline validates the RPC deadline headers (spec rpc.md §2.5)
// and removes the ones that mean "no deadline". Connect-Timeout-Ms must be
// at most 10 ASCII digits and grpc-timeout at most 8 followed by a unit;
// connect-go parses them with strconv, which also takes "+5" or "-0" (an
// already expired deadline), so the check is done here. Absent, empty or
// zero means no deadline; connect-go would turn "0" into an expired context.
func normalizeDeadline(next http.Handler) http.Handler {
	ew := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isRPC(r) {
			next.ServeHTTP(w, r)
			return
		}
		for _, v := range r.Header.Values("Connect-Timeout-Ms") {
			if v != "" && (len(v) > 10 || !allDigits(v)) {
				_ = ew.Write(w, r, connect.NewError(connect.CodeInvalidArgument,
					fmt.Errorf("parse timeout: Connect-Timeout-Ms %q is not a non-negative integer of at most 10 digits", v)))
				return
			}
		}
		for _, v := range r.Header.Values("Grpc-Timeout") {
			if v != "" && !validGRPCTimeout(v) {
				_ = ew.Write(w, r, connect.NewError(connect.CodeInvalidArgument,
					fmt.Errorf("parse timeout: grpc-timeout %q is not at most 8 digits followed by one of H M S m u n", v)))
				return
			}
		}
		if v := r.Header.Values("Connect-Timeout-Ms"); len(v) > 0 && isZero(v[0]) {
			r.Header.Del("Connect-Timeout-Ms")
		}
		if v := r.Header.Values("Grpc-Timeout"); len(v) > 0 && (v[0] == "" || isZero(v[0][:len(v[0])-1])) {
			r.Header.Del("Grpc-Timeout")
		}
		next.ServeHTTP(w, r)
	})
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func validGRPCTimeout(v string) bool {
	digits := v[:len(v)-1]
	return len(digits) >= 1 && len(digits) <= 8 && allDigits(digits) && strings.IndexByte("HMSmun", v[len(v)-1]) >= 0
}

// isZero reports whether s (already validated as digits) means zero: empty
// or all zeros.
func isZero(s string) bool { return strings.Trim(s, "0") == "" }

// boundSmallBodies puts the absolute deadline UnaryBodyTimeout on small
// bodies: Connect unary RPCs and other JSON bodies (not /init, which bounds
// its own read under its lock).
func boundSmallBodies(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/init" && isSmallBodyType(r.Header.Get("Content-Type")) {
			body := server.BoundBodyRead(r.Context(), r.Body, UnaryBodyTimeout)
			if isRPC(r) {
				body = connectBodyError{body}
			}
			r.Body = body
		}
		next.ServeHTTP(w, r)
	})
}

// isSmallBodyType reports whether a Content-Type is one whose bodies are
// whole messages read at once: Connect unary (application/proto,
// application/json; streaming Connect is application/connect+...).
func isSmallBodyType(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	return mt == "application/proto" || mt == "application/json"
}

// connectBodyError turns a body timeout into a Connect error, which
// connect-go passes on to the client unchanged.
type connectBodyError struct{ io.ReadCloser }

func (b connectBodyError) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && errors.Is(err, server.ErrBodyTimeout) {
		err = connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	return n, err
}

func noStore(w http.ResponseWriter) { w.Header().Set("Cache-Control", "no-store") }

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
