package fsops

import (
	"strconv"

	"github.com/envd/envd/internal/identity"
)

// Names turns numeric owners into names for EntryInfo. identity.Database
// implements it; callers load the database once per request.
type Names interface {
	UserName(uid uint32) string
	GroupName(gid uint32) string
}

// LoadNames reads the system user and group databases. When they cannot be
// read, owners are reported as decimal ids rather than failing the request.
func LoadNames() Names {
	db, err := identity.Load()
	if err != nil {
		return numericNames{}
	}
	return db
}

type numericNames struct{}

func (numericNames) UserName(uid uint32) string  { return strconv.FormatUint(uint64(uid), 10) }
func (numericNames) GroupName(gid uint32) string { return strconv.FormatUint(uint64(gid), 10) }
