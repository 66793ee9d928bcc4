package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"connectrpc.com/connect"

	"github.com/envd/envd/internal/httperror"
	"github.com/envd/envd/internal/identity"
)

// MsgUnauthorized is the body message of a request refused for a missing or
// wrong X-Access-Token.
const MsgUnauthorized = "unauthorized access, please provide a valid access token or method signing if supported"

// exempt lists the routes that do not need X-Access-Token (decision D6); the
// file routes apply signatures themselves.
var exempt = map[string]bool{
	"GET/health":            true,
	"GET/files":             true,
	"POST/files":            true,
	"POST/init":             true,
	"POST/snapshot/prepare": true,
}

// MsgNotInitialized is the body message of the post-handover gate.
const MsgNotInitialized = "envd not initialized"

// RequireToken refuses every non-exempt request without a matching
// X-Access-Token while a token is set (spec http.md §3.2). Before that,
// and regardless of it, while gate reports true (an envd started from a
// live upgrade that no /init has initialized yet, control-plane.md §5.3),
// every request but GET/HEAD /health and POST /init is refused with 401
// "envd not initialized". gate may be nil.
func (t *Token) RequireToken(gate func() bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if gate != nil && gate() && !gateExempt(r) {
			httperror.Write(w, http.StatusUnauthorized, MsgNotInitialized)
			return
		}
		if !t.IsSet() {
			next.ServeHTTP(w, r)
			return
		}
		method := r.Method
		if method == http.MethodHead {
			method = http.MethodGet
		}
		if exempt[method+r.URL.Path] || t.Equal([]byte(r.Header.Get("X-Access-Token"))) {
			next.ServeHTTP(w, r)
			return
		}
		httperror.Write(w, http.StatusUnauthorized, MsgUnauthorized)
	})
}

// gateExempt: the routes the post-handover gate lets through, compared
// with the decoded path exactly as received.
func gateExempt(r *http.Request) bool {
	switch {
	case r.URL.Path == "/health":
		return r.Method == http.MethodGet || r.Method == http.MethodHead
	case r.URL.Path == "/init":
		return r.Method == http.MethodPost
	}
	return false
}

type userKey struct{}

// UserFrom returns the user named by the request's Basic credentials, if
// the BasicUser middleware attached one.
func UserFrom(ctx context.Context) (*identity.User, bool) {
	u, ok := ctx.Value(userKey{}).(*identity.User)
	return u, ok
}

// WithUser attaches u to ctx.
func WithUser(ctx context.Context, u *identity.User) context.Context {
	return context.WithValue(ctx, userKey{}, u)
}

// UserLookup finds a user by name; identity.LookupUser in production.
type UserLookup func(name string) (*identity.User, error)

// BasicUser resolves "Authorization: Basic" to a system user for every
// request (spec http.md §3.3). An unknown user is refused with a Connect
// "unauthenticated" error in the form that matches the request; a missing
// header, another scheme or undecodable credentials are ignored.
func BasicUser(lookup UserLookup, next http.Handler) http.Handler {
	ew := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, _, ok := r.BasicAuth()
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		u, err := lookup(name)
		if err != nil {
			cerr := connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("invalid username: '%s'", name))
			if werr := ew.Write(w, r, cerr); werr != nil && !errors.Is(werr, context.Canceled) {
				return
			}
			return
		}
		next.ServeHTTP(w, r.WithContext(WithUser(r.Context(), u)))
	})
}
