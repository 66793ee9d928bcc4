// Package api holds envd's plain HTTP handlers. Each is thin: decode the
// request, call the domain package that owns the capability, encode the
// answer (spec http.md §5–§9).
package api

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/envd/envd/internal/auth"
)

// Router is where handler groups mount their routes; *http.ServeMux is the
// one envd serves with. Patterns are Go ServeMux patterns ("GET /health").
type Router interface {
	HandleFunc(pattern string, handler func(http.ResponseWriter, *http.Request))
}

// Handler wraps the router with the inner middleware, outermost first:
// Cache-Control on the control-plane routes, the access-token check, the
// Basic-auth user, and deadline-header normalisation (spec http.md §1.5).
func Handler(token *auth.Token, lookup auth.UserLookup, router http.Handler) http.Handler {
	return noStoreControlPlane(token.RequireToken(auth.BasicUser(lookup, normalizeDeadline(router))))
}

// normalizeDeadline removes deadline headers that mean "no deadline". The
// spec says an absent, empty or zero Connect-Timeout-Ms is no deadline;
// connect-go would turn "0" into an already-expired context.
func normalizeDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v, ok := r.Header["Connect-Timeout-Ms"]; ok && (len(v) == 0 || isZero(v[0])) {
			r.Header.Del("Connect-Timeout-Ms")
		}
		if v, ok := r.Header["Grpc-Timeout"]; ok && len(v) > 0 && len(v[0]) > 1 && isZero(v[0][:len(v[0])-1]) {
			r.Header.Del("Grpc-Timeout")
		}
		next.ServeHTTP(w, r)
	})
}

func isZero(s string) bool {
	s = strings.TrimSpace(s)
	return strings.Trim(s, "0") == "" // "" or all zeros
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
