package peer

import (
	"log/slog"
	"net"
	"net/http"
	"path"
	"time"

	"github.com/envd/envd/internal/httperror"
	"github.com/envd/envd/internal/logging"
)

// MsgInsideGuest is the message of the 403 a guest process gets for a
// host-only route (spec http.md §1.5 step 2).
const MsgInsideGuest = "not allowed from inside the sandbox"

// Guard refuses every request for one of paths from a peer inside the guest
// with 403 and the JSON error body, before the access-token check (spec
// http.md §1.5 step 2, D18). Paths are compared after cleaning, so that
// "//init" or "/init/" cannot slip past; the method does not matter (a
// guest process has no business with these paths at all). envd installs it
// in Firecracker mode only.
func (c *Classifier) Guard(paths []string, log *slog.Logger, next http.Handler) http.Handler {
	guarded := make(map[string]bool, len(paths))
	for _, p := range paths {
		guarded[p] = true
	}
	// A guest process can repeat the request at will; one line per
	// interval is enough to see that it does.
	limit := logging.NewLimiter(10*time.Second, 5)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !guarded[r.URL.Path] && !guarded[path.Clean(r.URL.Path)] {
			next.ServeHTTP(w, r)
			return
		}
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		inside, err := c.Inside(ParseAddr(r.RemoteAddr), AddrOf(local))
		if !inside {
			next.ServeHTTP(w, r)
			return
		}
		if ok, suppressed := limit.Allow(); ok {
			attrs := []any{"method", r.Method, "path", r.URL.Path, "peer", r.RemoteAddr, "suppressed", suppressed}
			if err != nil {
				attrs = append(attrs, "error", err.Error())
			}
			log.Warn("refused a host-only request from inside the sandbox", attrs...)
		}
		w.Header().Set("Cache-Control", "no-store")
		httperror.Write(w, http.StatusForbidden, MsgInsideGuest)
	})
}
