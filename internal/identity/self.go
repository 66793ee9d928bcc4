package identity

import (
	"os"
	"strconv"
)

// Self returns the user envd runs as. When the user database has no entry
// for it (a bare container), a synthetic user with the numeric id as its name
// and $HOME (or /) as home is returned.
func Self() *User {
	uid, gid := uint32(os.Geteuid()), uint32(os.Getegid())
	if db, err := Load(); err == nil {
		if u, ok := db.LookupUID(uid); ok {
			return u
		}
	}
	home := os.Getenv("HOME")
	if home == "" {
		home = "/"
	}
	return &User{Name: strconv.FormatUint(uint64(uid), 10), UID: uid, GID: gid, Home: home}
}

// Privileged reports whether envd can act as other users (it runs as root).
func Privileged() bool { return os.Geteuid() == 0 }
