package identity

import (
	"errors"
	"fmt"
)

// Access is what the owner of a followed symlink must be allowed to do, by
// ordinary permission bits, for envd to act through the link (spec http.md
// §12.5 step 2, protected symlinks).
type Access uint32

// Accesses checked against a link owner.
const (
	// AccessRead: read the file reached (compose sources).
	AccessRead Access = 4
	// AccessWrite: write the file reached (an upload replacing it).
	AccessWrite Access = 2
	// AccessCreate: create or remove entries in the directory reached
	// (write and search permission on it).
	AccessCreate Access = 2 | 1
)

// ErrLinkRefused marks a symlink that envd refuses to follow: its owner is
// neither root nor someone who could do the same thing without the link.
var ErrLinkRefused = errors.New("refusing to follow symlink")

// LinkError is a refused symlink. Its message is the one the client sees.
type LinkError struct {
	// Link is the physical path of the symlink.
	Link string
	// Owner is the link owner's name, or the decimal uid without one.
	Owner string
}

func (e *LinkError) Error() string {
	return fmt.Sprintf("%v %s owned by %s", ErrLinkRefused, e.Link, e.Owner)
}

func (e *LinkError) Unwrap() error { return ErrLinkRefused }

// fileMode is the part of a stat result that decides permissions.
type fileMode struct {
	mode     uint32 // permission bits (07777 part)
	uid, gid uint32
}

// mayAccess reports whether uid, whose groups are in groups, gets want on a
// file with mode m by the classic owner/group/other bits: the first class
// that matches decides, as in the kernel. ACLs and capabilities other than
// root's are not considered; root may do anything.
func mayAccess(uid uint32, groups []uint32, m fileMode, want Access) bool {
	if uid == 0 {
		return true
	}
	var bits uint32
	switch {
	case uid == m.uid:
		bits = m.mode >> 6
	case containsGID(groups, m.gid):
		bits = m.mode >> 3
	default:
		bits = m.mode
	}
	return Access(bits&7)&want == want
}

// groupsOf returns the groups a uid acts with: its primary group and its
// memberships from the database; none for a uid without an entry (then only
// the "other" bits can grant anything).
func (d *Database) groupsOf(uid uint32) []uint32 {
	u, ok := d.LookupUID(uid)
	if !ok {
		return nil
	}
	return d.Groups(u)
}
