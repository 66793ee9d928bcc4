// Package identity answers "who is this user" and "where does this path
// point for them": it reads the system user and group databases, resolves
// request paths (~, relative to home, default workdir), walks paths
// physically by descriptor applying the protected-symlink rule, and creates
// parent directories owned by the requesting user without ever following a
// link to chown (spec http.md §4, §12.5 step 2).
package identity

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ErrUnknownUser is returned when a name is not in the user database.
var ErrUnknownUser = errors.New("unknown user")

// User is one entry of the user database.
type User struct {
	Name string
	UID  uint32
	GID  uint32
	Home string
}

// Database is a snapshot of /etc/passwd and /etc/group. Users can be created
// at any time (e.g. during a template build), so callers load a fresh
// snapshot per request; both files are small.
type Database struct {
	users  []User
	groups []group
}

type group struct {
	name    string
	gid     uint32
	members []string
}

// Files names the databases; tests point them elsewhere.
type Files struct {
	Passwd string
	Group  string
}

// SystemFiles are the databases of the running system.
var SystemFiles = Files{Passwd: "/etc/passwd", Group: "/etc/group"}

// Load reads both databases. A missing group file yields no groups; a
// missing passwd file is an error.
func (f Files) Load() (*Database, error) {
	pw, err := os.ReadFile(f.Passwd)
	if err != nil {
		return nil, fmt.Errorf("read user database: %w", err)
	}
	db := &Database{users: ParsePasswd(pw)}
	if gr, err := os.ReadFile(f.Group); err == nil {
		db.groups = parseGroup(gr)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read group database: %w", err)
	}
	return db, nil
}

// Load reads the system databases.
func Load() (*Database, error) { return SystemFiles.Load() }

// LookupUser loads the system databases and finds name.
func LookupUser(name string) (*User, error) {
	db, err := Load()
	if err != nil {
		return nil, err
	}
	return db.Lookup(name)
}

// Lookup finds a user by name.
func (d *Database) Lookup(name string) (*User, error) {
	for i := range d.users {
		if d.users[i].Name == name {
			u := d.users[i]
			return &u, nil
		}
	}
	return nil, fmt.Errorf("%w %s", ErrUnknownUser, name)
}

// LookupUID finds a user by uid (the first entry wins).
func (d *Database) LookupUID(uid uint32) (*User, bool) {
	for i := range d.users {
		if d.users[i].UID == uid {
			u := d.users[i]
			return &u, true
		}
	}
	return nil, false
}

// UserName returns the name of uid, or the decimal uid if it has none.
func (d *Database) UserName(uid uint32) string {
	if u, ok := d.LookupUID(uid); ok {
		return u.Name
	}
	return strconv.FormatUint(uint64(uid), 10)
}

// GroupName returns the name of gid, or the decimal gid if it has none.
func (d *Database) GroupName(gid uint32) string {
	for i := range d.groups {
		if d.groups[i].gid == gid {
			return d.groups[i].name
		}
	}
	return strconv.FormatUint(uint64(gid), 10)
}

// Groups returns the supplementary groups of u: its primary group followed
// by every group that lists it as a member, without duplicates.
func (d *Database) Groups(u *User) []uint32 {
	out := []uint32{u.GID}
	for _, g := range d.groups {
		for _, m := range g.members {
			if m == u.Name && !containsGID(out, g.gid) {
				out = append(out, g.gid)
				break
			}
		}
	}
	return out
}

func containsGID(s []uint32, v uint32) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// ParsePasswd parses passwd(5) text. Malformed lines (fewer than seven
// fields, non-numeric ids, comments) are skipped, as libc does.
func ParsePasswd(data []byte) []User {
	var out []User
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) < 7 || f[0] == "" {
			continue
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, User{Name: f[0], UID: uint32(uid), GID: uint32(gid), Home: f[5]})
	}
	return out
}

func parseGroup(data []byte) []group {
	var out []group
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) < 4 || f[0] == "" {
			continue
		}
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		g := group{name: f[0], gid: uint32(gid)}
		for _, m := range strings.Split(f[3], ",") {
			if m = strings.TrimSpace(m); m != "" {
				g.members = append(g.members, m)
			}
		}
		out = append(out, g)
	}
	return out
}
