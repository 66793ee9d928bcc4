package auth

import (
	"crypto/subtle"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/envd/envd/client/signing"
	"github.com/envd/envd/internal/httperror"
)

// Operations that a file URL can be signed for.
const (
	OpRead  = "read"
	OpWrite = "write"
)

// Sign computes a file URL signature (spec decision D7):
// "v1_" + unpadded standard base64 of SHA-256 over
// "path:operation:username:token" plus ":expiration" when one is given.
// The algorithm lives in the public client/signing package so that clients
// and the daemon share one implementation.
func Sign(path, operation, username string, token []byte, expiration *int64) string {
	return signing.Sign(path, operation, username, token, expiration)
}

// Messages of the signed-URL check (spec http.md §3.4).
const (
	MsgHeaderMismatch   = "access token present in header but does not match"
	MsgMissingSignature = "missing signature query parameter"
	MsgInvalidSignature = "invalid signature"
	MsgExpiredSignature = "signature is already expired"
)

// CheckFileRequest authorises GET/HEAD/POST /files: open when no token is
// set; otherwise a matching X-Access-Token header or a valid, unexpired
// signature over the raw path and username query parameters. It returns nil
// when the request may proceed.
func (t *Token) CheckFileRequest(r *http.Request, operation string, now time.Time) *httperror.Error {
	q := r.URL.Query()
	var expiration *int64
	if q.Has("signature_expiration") {
		v, err := strconv.ParseInt(q.Get("signature_expiration"), 10, 64)
		if err != nil {
			return httperror.New(http.StatusBadRequest, "Invalid format for parameter signature_expiration: %s", numErrDetail(err))
		}
		expiration = &v
	}
	var out *httperror.Error
	t.with(func(tok []byte) {
		if len(tok) == 0 {
			return
		}
		if h := r.Header.Get("X-Access-Token"); h != "" {
			if subtle.ConstantTimeCompare([]byte(h), tok) != 1 {
				out = httperror.New(http.StatusUnauthorized, MsgHeaderMismatch)
			}
			return
		}
		if !q.Has("signature") {
			out = httperror.New(http.StatusUnauthorized, MsgMissingSignature)
			return
		}
		want := Sign(firstValue(q, "path"), operation, firstValue(q, "username"), tok, expiration)
		if subtle.ConstantTimeCompare([]byte(want), []byte(q.Get("signature"))) != 1 {
			out = httperror.New(http.StatusUnauthorized, MsgInvalidSignature)
			return
		}
		if expiration != nil && *expiration < now.Unix() {
			out = httperror.New(http.StatusUnauthorized, MsgExpiredSignature)
		}
	})
	return out
}

func firstValue(q url.Values, key string) string {
	if v := q[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func numErrDetail(err error) string {
	if ne, ok := err.(*strconv.NumError); ok {
		return ne.Err.Error() + ": " + strconv.Quote(ne.Num)
	}
	return err.Error()
}
