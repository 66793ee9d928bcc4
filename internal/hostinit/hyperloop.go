package hostinit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/envd/envd/internal/defaults"
)

// HyperloopHost is the name /etc/hosts maps to the hyperloop (events)
// server.
const HyperloopHost = "events.wrenn.local"

// Hyperloop applies hyperloop addresses from /init in the background, one at
// a time and latest first, so the response is never delayed (spec http.md
// §8.5).
type Hyperloop struct {
	hostsPath string
	env       *defaults.Store
	log       *slog.Logger
	next      chan string // capacity 1: only the latest pending address matters
	done      chan struct{}
	// lock is the hyperloop lock (control-plane.md §1.3 #5), held while an
	// address is applied; a channel so that an upgrade can give up.
	lock chan struct{}

	mu      sync.Mutex
	current string // the address applied last
	pending string // the address queued and not yet applied
}

// NewHyperloop edits hostsPath (normally /etc/hosts).
func NewHyperloop(hostsPath string, env *defaults.Store, log *slog.Logger) *Hyperloop {
	return &Hyperloop{hostsPath: hostsPath, env: env, log: log, next: make(chan string, 1), done: make(chan struct{}), lock: make(chan struct{}, 1)}
}

// Run applies addresses until ctx ends.
func (h *Hyperloop) Run(ctx context.Context) {
	defer close(h.done)
	for {
		select {
		case <-ctx.Done():
			return
		case ip := <-h.next:
			h.apply(ip)
		}
	}
}

// Wait returns once Run has returned.
func (h *Hyperloop) Wait() { <-h.done }

// Set queues ip; an address still waiting is replaced by the newer one.
func (h *Hyperloop) Set(ip string) {
	h.mu.Lock()
	h.pending = ip
	h.mu.Unlock()
	for {
		select {
		case h.next <- ip:
			return
		default:
		}
		select {
		case <-h.next:
		default:
		}
	}
}

// Address is the hyperloop address in force: the one queued and not yet
// applied, else the one applied last ("" if none). A live upgrade carries
// it; the next image applies it again (a no-op when /etc/hosts already
// has it).
func (h *Hyperloop) Address() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pending != "" {
		return h.pending
	}
	return h.current
}

// Hold takes the hyperloop lock for a live upgrade, waiting at most until
// ctx ends: no address is being applied until the exec or the rollback.
func (h *Hyperloop) Hold(ctx context.Context) (release func(), err error) {
	select {
	case h.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() { once.Do(func() { <-h.lock }) }, nil
}

func (h *Hyperloop) apply(raw string) {
	h.lock <- struct{}{}
	defer func() { <-h.lock }()
	defer func() {
		h.mu.Lock()
		if h.pending == raw {
			h.pending = ""
		}
		h.mu.Unlock()
	}()
	defer func() {
		if p := recover(); p != nil {
			h.log.Error("panic while applying hyperloop address", "panic", p)
		}
	}()
	ip := net.ParseIP(raw)
	if ip == nil {
		h.log.Warn("ignoring invalid hyperloop address", "address", raw)
		return
	}
	if err := UpdateHosts(h.hostsPath, ip.String()); err != nil {
		h.log.Warn("cannot update hosts file for hyperloop", "error", err.Error())
		return
	}
	addr := "http://" + ip.String()
	if ip.To4() == nil {
		addr = "http://[" + ip.String() + "]"
	}
	h.env.SetInternal(defaults.EventsAddressVar, addr)
	h.mu.Lock()
	h.current = ip.String()
	h.mu.Unlock()
	h.log.Info("hyperloop address set", "address", ip.String())
}

// UpdateHosts makes path map HyperloopHost to exactly ip: the name is removed
// from every other line (lines left without names are dropped) and one
// "<ip>\t<host>" line appended. The file is replaced through a temporary
// file and rename; when the file is a mount point it is rewritten in place.
func UpdateHosts(path, ip string) error {
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	next, changed := rewriteHosts(string(data), ip)
	if !changed {
		return nil
	}
	return replaceFile(path, []byte(next), 0o644)
}

// rewriteHosts returns the new content and whether it differs in meaning.
func rewriteHosts(content, ip string) (string, bool) {
	var out []string
	exact := false
	lines := strings.Split(content, "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	for _, line := range lines {
		body, comment, hasComment := strings.Cut(line, "#")
		f := strings.Fields(body)
		if len(f) < 2 || !containsName(f[1:], HyperloopHost) {
			out = append(out, line)
			continue
		}
		if len(f) == 2 && f[0] == ip && !exact {
			exact = true
		}
		names := make([]string, 0, len(f)-1)
		for _, n := range f[1:] {
			if n != HyperloopHost {
				names = append(names, n)
			}
		}
		if len(names) == 0 {
			continue
		}
		nl := f[0] + "\t" + strings.Join(names, " ")
		if hasComment {
			nl += " #" + comment
		}
		out = append(out, nl)
	}
	if exact && countName(content) == 1 {
		return content, false
	}
	out = append(out, ip+"\t"+HyperloopHost)
	return strings.Join(out, "\n") + "\n", true
}

func containsName(names []string, n string) bool {
	for _, x := range names {
		if x == n {
			return true
		}
	}
	return false
}

func countName(content string) int {
	n := 0
	for _, line := range strings.Split(content, "\n") {
		body, _, _ := strings.Cut(line, "#")
		f := strings.Fields(body)
		if len(f) >= 2 && containsName(f[1:], HyperloopHost) {
			n++
		}
	}
	return n
}

// replaceFile writes data to a temporary file beside path and renames it
// over path; if path is a mount point (EBUSY/EXDEV) it is rewritten in place.
func replaceFile(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".envd-*")
	if err != nil {
		return writeInPlace(path, data, mode)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp, mode)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, werr)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		if errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.EXDEV) {
			return writeInPlace(path, data, mode)
		}
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}

func writeInPlace(path string, data []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
