// Package signing computes envd's signed file URLs (spec decision D7), so
// that a holder of the access token can hand out a URL that reads or writes
// one file without handing out the token itself.
//
// The signature is "v1_" followed by the unpadded standard base64 of the
// SHA-256 of "path:operation:username:token", with ":expiration" appended
// when the URL expires. path and username are the raw query parameters as
// they appear (decoded) in the URL — before any "~" expansion — and "" when
// absent; envd hashes exactly what it receives, so the client must hash
// exactly what it sends.
package signing

import (
	"crypto/sha256"
	"encoding/base64"
	"strconv"
)

// Operations a file URL can be signed for.
const (
	// OpRead authorises GET and HEAD /files.
	OpRead = "read"
	// OpWrite authorises POST /files.
	OpWrite = "write"
)

// Sign returns the signature of a file URL for path, operation (OpRead or
// OpWrite), username and token. expiration, when non-nil, is the Unix time
// in seconds after which envd refuses the URL; it must be the same number
// that is put in the signature_expiration query parameter.
func Sign(path, operation, username string, token []byte, expiration *int64) string {
	h := sha256.New()
	h.Write([]byte(path))
	h.Write([]byte{':'})
	h.Write([]byte(operation))
	h.Write([]byte{':'})
	h.Write([]byte(username))
	h.Write([]byte{':'})
	h.Write(token)
	if expiration != nil {
		h.Write([]byte{':'})
		h.Write([]byte(strconv.FormatInt(*expiration, 10)))
	}
	return "v1_" + base64.RawStdEncoding.EncodeToString(h.Sum(nil))
}
