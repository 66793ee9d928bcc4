package hostinit

import (
	"context"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/hex"
	"errors"
)

// emptyTokenHash is hex(sha512("")): MMDS authorises clearing the token.
const emptyTokenHash = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"

// Token validation failures (plain-text 401 bodies).
var (
	ErrResetNotAuthorized = errors.New("access token reset not authorized")
	ErrTokenValidation    = errors.New("access token validation failed")
)

// HashReader returns MMDS's accessTokenHash, "" when MMDS is absent or
// holds none.
type HashReader func(ctx context.Context) string

// validateToken applies spec http.md §8.3. existing reports whether a token
// is set and equal compares with it in constant time; readHash is nil when
// MMDS counts as absent (--isnotfc).
func validateToken(ctx context.Context, existingSet bool, equal func([]byte) bool, request *string, readHash HashReader) error {
	if existingSet && request != nil && equal([]byte(*request)) {
		return nil
	}
	hash := ""
	if readHash != nil {
		hash = readHash(ctx)
	}
	if hash != "" {
		want := emptyTokenHash
		if request != nil {
			sum := sha512.Sum512([]byte(*request))
			want = hex.EncodeToString(sum[:])
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(hash)) == 1 {
			return nil
		}
	}
	if !existingSet && hash == "" {
		return nil // first-time setup
	}
	if request == nil {
		return ErrResetNotAuthorized
	}
	return ErrTokenValidation
}
