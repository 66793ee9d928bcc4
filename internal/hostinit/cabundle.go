package hostinit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Paths of the system trust store that /init caBundle extends.
const (
	SystemBundle = "/etc/ssl/certs/ca-certificates.crt"
	LocalCA      = "/usr/local/share/ca-certificates/wrenn-ca.crt"
)

// ErrCABusy is returned when a previous install still holds the CA lock
// when the request ends.
var ErrCABusy = errors.New("CA install already in progress")

// CAInstaller appends /init CA bundles to the system trust store (spec
// http.md §8.5). The lock is a one-slot semaphore so that a request can give
// up waiting when its client goes away.
type CAInstaller struct {
	bundle, local string
	log           *slog.Logger
	lock          chan struct{}
	wg            sync.WaitGroup

	mu   sync.Mutex
	last string // normalised PEM installed last by this process
}

// NewCAInstaller edits bundlePath and writes localPath.
func NewCAInstaller(bundlePath, localPath string, log *slog.Logger) *CAInstaller {
	return &CAInstaller{bundle: bundlePath, local: localPath, log: log, lock: make(chan struct{}, 1)}
}

// Install adds pem. The append is synchronous; keeping a copy for
// update-ca-certificates and removing a previously installed, different
// bundle happen in the background under the same lock.
func (c *CAInstaller) Install(ctx context.Context, pem string) error {
	pem = strings.TrimRight(pem, "\n") + "\n"
	select {
	case c.lock <- struct{}{}:
	case <-ctx.Done():
		return ErrCABusy
	}
	prev := c.Last()
	if pem == prev {
		<-c.lock
		return nil
	}
	if err := appendFile(c.bundle, pem); err != nil {
		<-c.lock
		return fmt.Errorf("failed to install CA bundle: %w", err)
	}
	c.setLast(pem)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() { <-c.lock }()
		defer func() {
			if p := recover(); p != nil {
				c.log.Error("panic while finishing CA install", "panic", p)
			}
		}()
		if err := os.MkdirAll(filepath.Dir(c.local), 0o755); err == nil {
			if err := replaceFile(c.local, []byte(pem), 0o644); err != nil {
				c.log.Warn("cannot keep CA copy", "error", err.Error())
			}
		}
		if prev != "" {
			if err := removeText(c.bundle, prev); err != nil {
				c.log.Warn("cannot remove previous CA bundle", "error", err.Error())
			}
		}
	}()
	return nil
}

// Last is the normalised PEM installed last by this process ("" if none);
// a live upgrade carries it, so that a later /init with the same bundle
// does not append it twice.
func (c *CAInstaller) Last() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

func (c *CAInstaller) setLast(pem string) {
	c.mu.Lock()
	c.last = pem
	c.mu.Unlock()
}

// Hold takes the CA-install lock for a live upgrade, waiting at most until
// ctx ends (control-plane.md §1.3 #4): a background step still running
// (the local copy, removing a previous bundle) finishes first.
func (c *CAInstaller) Hold(ctx context.Context) (release func(), err error) {
	select {
	case c.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() { once.Do(func() { <-c.lock }) }, nil
}

// Wait blocks until background work finished (shutdown and tests).
func (c *CAInstaller) Wait() { c.wg.Wait() }

func appendFile(path, text string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func removeText(path, text string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	next := strings.ReplaceAll(string(data), text, "")
	if next == string(data) {
		return nil
	}
	return replaceFile(path, []byte(next), 0o644)
}
