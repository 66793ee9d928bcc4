// Package auth owns envd's access control: the access token set by /init,
// the X-Access-Token middleware, signed file URLs and the Basic-auth user
// that an RPC acts as (spec http.md §3).
package auth

import (
	"crypto/subtle"
	"sync"
)

// Token holds the access token. It lives in memory only and is wiped when
// replaced or cleared. The zero value has no token.
type Token struct {
	mu    sync.RWMutex
	value []byte
}

// Set replaces the token with a copy of v; an empty v clears it.
func (t *Token) Set(v []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	wipe(t.value)
	t.value = nil
	if len(v) > 0 {
		t.value = append([]byte(nil), v...)
	}
}

// Clear removes the token.
func (t *Token) Clear() { t.Set(nil) }

// IsSet reports whether a token is set.
func (t *Token) IsSet() bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.value) > 0
}

// Equal compares v with the token in constant time; false when no token is
// set or the lengths differ.
func (t *Token) Equal(v []byte) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if len(t.value) == 0 {
		return false
	}
	return subtle.ConstantTimeCompare(t.value, v) == 1
}

// Bytes returns a copy of the token (nil when unset), for a live upgrade
// to carry in its sealed memory file; the caller wipes it after use.
func (t *Token) Bytes() []byte {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if len(t.value) == 0 {
		return nil
	}
	return append([]byte(nil), t.value...)
}

// with runs f with the raw token (nil when unset) under the read lock; f
// must not keep the slice.
func (t *Token) with(f func(tok []byte)) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	f(t.value)
}

func wipe(b []byte) {
	for i := range b {
		b[i] = 0
	}
}
