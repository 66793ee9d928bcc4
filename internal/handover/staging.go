package handover

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/envd/envd/internal/handover/handoverpb"
)

// uploadTempPrefix starts the names of upload and compose staging files
// (files.TempPrefix; repeated here so that this package depends on no
// domain package). The incoming side removes nothing else.
const uploadTempPrefix = ".envd-tmp-"

// Staging is the registry of upload and compose staging files in progress
// (§8.7 "Miscellaneous"): the files package registers each one before it
// creates it and unregisters it once it is renamed or removed. The exec
// cuts those requests off, so the record lists the files and the incoming
// image removes them (D9: no partial file left behind). Its size is
// bounded by the requests in flight, which the connection caps bound.
//
// It is a Part and an Importer. Quiesce seals it: a staging file about to
// be created then waits until the exec (which ends its request) or the
// rollback, so that no file the record does not list can appear.
type Staging struct {
	mu       sync.Mutex
	paths    map[string]struct{}
	sealed   bool
	unsealed chan struct{} // closed by Resume
}

// NewStaging returns an empty registry.
func NewStaging() *Staging { return &Staging{paths: map[string]struct{}{}} }

// Begin registers path (absolute) before its file is created; the returned
// function unregisters it and must be called once the file is gone or
// renamed. While an upgrade is serialising, Begin waits for it.
func (s *Staging) Begin(path string) (done func()) {
	s.mu.Lock()
	for s.sealed {
		ch := s.unsealed
		s.mu.Unlock()
		<-ch
		s.mu.Lock()
	}
	s.paths[path] = struct{}{}
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.paths, path)
			s.mu.Unlock()
		})
	}
}

// Len is the number of staging files in progress.
func (s *Staging) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.paths)
}

// Name implements Part and Importer.
func (s *Staging) Name() string { return "staging files" }

// Quiesce seals the registry.
func (s *Staging) Quiesce(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.sealed {
		s.sealed = true
		s.unsealed = make(chan struct{})
	}
	return nil
}

// Export lists the staging files in progress.
func (s *Staging) Export(rec *handoverpb.Record, _ *Carried) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.paths {
		rec.StagingFiles = append(rec.StagingFiles, p)
	}
	slices.Sort(rec.StagingFiles)
	return nil
}

// Resume unseals the registry after a rollback.
func (s *Staging) Resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sealed {
		s.sealed = false
		close(s.unsealed)
	}
}

// Import removes the staging files the exec cut off (§8.11 step 13);
// errors are ignored. Only absolute paths whose name is a staging file's
// are removed: the record is trusted, but not beyond what it is for.
func (s *Staging) Import(rec *handoverpb.Record, _ *Inherited) (Counts, error) {
	for _, p := range rec.GetStagingFiles() {
		if !filepath.IsAbs(p) || !strings.HasPrefix(filepath.Base(p), uploadTempPrefix) {
			continue
		}
		_ = os.Remove(p)
	}
	return Counts{}, nil
}
