package auth

import (
	"net/http"
	"path"

	"github.com/envd/envd/internal/httperror"
)

// Messages of the 403s of RefuseBrowsers.
const (
	MsgBrowserNoToken  = "requests from web pages (with an Origin header) are refused while envd has no access token"
	MsgBrowserHostOnly = "this endpoint is for the host only and refuses requests from web pages (with an Origin header)"
)

// RefuseBrowsers keeps web pages away from envd (spec decision D18). A
// browser marks every cross-origin request, and every same-origin request
// other than GET and HEAD, with an Origin header; no other known client
// sends one (the E2B SDKs in Node, the Wrenn host, the E2B orchestrator,
// connect-go, curl). CORS answers every preflight with "*", so nothing but
// this check stops a page, preflighted or not, while no token is set. With
// a request carrying Origin:
//
//   - a host-only path (hostOnly: /init, /snapshot/prepare, the control
//     plane) is refused whether or not a token is set: /snapshot/prepare is
//     exempt from the token, and no browser client calls these;
//   - while no token is set, everything but GET/HEAD /health is refused;
//   - with a token set the request goes on to the token and signature
//     checks, which a page without the token cannot pass (the E2B SDK in a
//     browser sends the token).
//
// The value of Origin does not matter: "null" (sandboxed frames, file: pages)
// and envd's own origin (a page that GET /files served) are refused alike.
// OPTIONS requests pass: preflights are answered by CORS before this, and
// any other OPTIONS only reaches the router's 404/405.
func RefuseBrowsers(t *Token, hostOnly []string, next http.Handler) http.Handler {
	host := make(map[string]bool, len(hostOnly))
	for _, p := range hostOnly {
		host[p] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.Header.Values("Origin")) == 0 || r.Method == http.MethodOptions {
			next.ServeHTTP(w, r)
			return
		}
		switch {
		case host[r.URL.Path] || host[path.Clean(r.URL.Path)]:
			httperror.Write(w, http.StatusForbidden, MsgBrowserHostOnly)
		case t.IsSet():
			next.ServeHTTP(w, r)
		case (r.Method == http.MethodGet || r.Method == http.MethodHead) && r.URL.Path == "/health":
			next.ServeHTTP(w, r)
		default:
			httperror.Write(w, http.StatusForbidden, MsgBrowserNoToken)
		}
	})
}
