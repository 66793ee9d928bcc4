// Package defaults holds what the host configures for every later request:
// the default environment (envd's internal WRENN_* variables and the user
// variables from /init), the default user and the default workdir (spec
// http.md §8.4).
package defaults

import (
	"maps"
	"slices"
	"sync"
)

// Internal variable names: set by envd itself, never by /init envVars.
const (
	SandboxVar       = "WRENN_SANDBOX"
	SandboxIDVar     = "WRENN_SANDBOX_ID"
	TemplateIDVar    = "WRENN_TEMPLATE_ID"
	EventsAddressVar = "WRENN_EVENTS_ADDRESS"
)

// IsInternal reports whether name is reserved for envd.
func IsInternal(name string) bool {
	switch name {
	case SandboxVar, SandboxIDVar, TemplateIDVar, EventsAddressVar:
		return true
	}
	return false
}

// Store is safe for concurrent use.
type Store struct {
	mu       sync.RWMutex
	internal map[string]string
	user     map[string]string
	defUser  string
	workdir  string
}

// New returns a store whose default user is defaultUser and with no
// variables and no workdir.
func New(defaultUser string) *Store {
	return &Store{internal: map[string]string{}, user: map[string]string{}, defUser: defaultUser}
}

// SetInternal sets one internal variable (name must be internal).
func (s *Store) SetInternal(name, value string) {
	if !IsInternal(name) {
		return
	}
	s.mu.Lock()
	s.internal[name] = value
	s.mu.Unlock()
}

// ReplaceUserVars makes vars the complete set of user variables; internal
// names in vars are ignored (http.md §8.4).
func (s *Store) ReplaceUserVars(vars map[string]string) {
	next := make(map[string]string, len(vars))
	for k, v := range vars {
		if !IsInternal(k) {
			next[k] = v
		}
	}
	s.mu.Lock()
	s.user = next
	s.mu.Unlock()
}

// Vars returns a copy of the default environment: internal and user
// variables together.
func (s *Store) Vars() map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]string, len(s.internal)+len(s.user))
	maps.Copy(out, s.user)
	maps.Copy(out, s.internal)
	return out
}

// UserVars returns a copy of the user variables alone (those /init set).
func (s *Store) UserVars() map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return maps.Clone(s.user)
}

// Internal returns an internal variable and whether it is set.
func (s *Store) Internal(name string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.internal[name]
	return v, ok
}

// AppendEnv appends the default environment as NAME=value entries, sorted by
// name, to dst.
func (s *Store) AppendEnv(dst []string) []string {
	vars := s.Vars()
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		dst = append(dst, k+"="+vars[k])
	}
	return dst
}

// DefaultUser is the user requests act as when they name none.
func (s *Store) DefaultUser() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.defUser
}

// SetDefaultUser changes the default user; empty means no change.
func (s *Store) SetDefaultUser(name string) {
	if name == "" {
		return
	}
	s.mu.Lock()
	s.defUser = name
	s.mu.Unlock()
}

// DefaultWorkdir is the directory that empty paths and processes without a
// cwd use; "" when unset.
func (s *Store) DefaultWorkdir() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.workdir
}

// SetDefaultWorkdir changes the default workdir; empty means no change.
func (s *Store) SetDefaultWorkdir(dir string) {
	if dir == "" {
		return
	}
	s.mu.Lock()
	s.workdir = dir
	s.mu.Unlock()
}
