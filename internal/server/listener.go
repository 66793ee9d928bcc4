package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// keepAlive is what every accepted connection gets, whether the listener
// was bound here or adopted from a live upgrade.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 4}

// gatedListener lets a live upgrade stop acceptance without closing the
// listening socket (control-plane.md §8.6 step 4): while paused, no
// connection is accepted and new ones wait in the kernel's listen backlog,
// to be accepted by whichever image serves next. A blocked Accept is
// interrupted with a deadline in the past.
type gatedListener struct {
	inner *net.TCPListener

	mu        sync.Mutex
	paused    bool
	resumed   chan struct{} // closed by Resume
	accepting bool          // an Accept is blocked in the kernel
	idle      chan struct{} // closed when that Accept returns

	closeOnce sync.Once
	closed    chan struct{}
}

func newGatedListener(inner *net.TCPListener) *gatedListener {
	return &gatedListener{inner: inner, closed: make(chan struct{})}
}

func (l *gatedListener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		for l.paused {
			ch := l.resumed
			l.mu.Unlock()
			select {
			case <-ch:
			case <-l.closed:
				return nil, net.ErrClosed
			}
			l.mu.Lock()
		}
		l.accepting = true
		l.mu.Unlock()
		c, err := l.inner.Accept()
		l.mu.Lock()
		l.accepting = false
		if l.idle != nil {
			close(l.idle)
			l.idle = nil
		}
		l.mu.Unlock()
		var ne net.Error
		if err != nil && errors.As(err, &ne) && ne.Timeout() {
			// Only Pause sets a deadline: go back and wait for Resume.
			continue
		}
		return c, err
	}
}

func (l *gatedListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.inner.Close()
}

func (l *gatedListener) Addr() net.Addr { return l.inner.Addr() }

// Pause stops acceptance and returns once no Accept is in progress (a
// connection accepted in that instant is served as usual), or when ctx
// ends.
func (l *gatedListener) Pause(ctx context.Context) error {
	l.mu.Lock()
	if !l.paused {
		l.paused = true
		l.resumed = make(chan struct{})
	}
	if !l.accepting {
		l.mu.Unlock()
		return nil
	}
	if l.idle == nil {
		l.idle = make(chan struct{})
	}
	idle := l.idle
	err := l.inner.SetDeadline(time.Unix(1, 0))
	l.mu.Unlock()
	if err != nil {
		return fmt.Errorf("interrupt accept: %w", err)
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("interrupt accept: %w", ctx.Err())
	}
}

// Resume lets Accept continue.
func (l *gatedListener) Resume() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.paused {
		return
	}
	l.paused = false
	_ = l.inner.SetDeadline(time.Time{})
	close(l.resumed)
}

// fd is the listening socket's descriptor number, valid while it is open.
func (l *gatedListener) fd() (int, error) {
	raw, err := l.inner.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := raw.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// Port returns the configured port.
func (s *Server) Port() int { return s.port }

// AdoptListener makes f, a listening TCP socket carried across a live
// upgrade, the server's listener (control-plane.md §8.11 step 15), after
// checking that it is bound to the configured port; connections waiting
// in its backlog are served from Serve on. f is closed either way (the
// listener holds its own duplicate).
func (s *Server) AdoptListener(f *os.File) error {
	defer f.Close()
	sa, err := unix.Getsockname(int(f.Fd()))
	if err != nil {
		return fmt.Errorf("adopt listener: %w", err)
	}
	port := -1
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		port = a.Port
	case *unix.SockaddrInet6:
		port = a.Port
	}
	if port != s.port {
		return fmt.Errorf("adopt listener: bound to port %d, not %d", port, s.port)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		return fmt.Errorf("adopt listener: %w", err)
	}
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		ln.Close()
		return fmt.Errorf("adopt listener: not a TCP listener")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		tl.Close()
		return errors.New("adopt listener: already listening")
	}
	s.setListenerLocked(tl)
	return nil
}

func (s *Server) setListenerLocked(tl *net.TCPListener) {
	s.gate = newGatedListener(tl)
	s.ln = &limitListener{Listener: s.gate, tracker: s.tracker}
}

// PauseAccept stops acceptance without closing the listener (a live
// upgrade, §8.6 step 4); ResumeAccept undoes it.
func (s *Server) PauseAccept(ctx context.Context) error {
	s.mu.Lock()
	g := s.gate
	s.mu.Unlock()
	if g == nil {
		return nil
	}
	return g.Pause(ctx)
}

// ResumeAccept lets the listener accept again.
func (s *Server) ResumeAccept() {
	s.mu.Lock()
	g := s.gate
	s.mu.Unlock()
	if g != nil {
		g.Resume()
	}
}

// ListenerFD is the listening socket's descriptor (for the handover).
func (s *Server) ListenerFD() (int, error) {
	s.mu.Lock()
	g := s.gate
	s.mu.Unlock()
	if g == nil {
		return -1, errors.New("not listening")
	}
	return g.fd()
}

// setConnOptions gives an accepted connection envd's keepalive and
// TCP_USER_TIMEOUT, so that writes to a vanished peer fail within about a
// minute.
func setConnOptions(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	_ = tc.SetKeepAliveConfig(keepAlive)
	if raw, err := tc.SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(tcpUserTimeout/time.Millisecond))
		})
	}
}
