// Package server owns envd's listener and HTTP server: one TCP port serving
// HTTP/1.1 and h2c, the outer middleware (panic recovery, request logging,
// connection handle, CORS), the connection tracker used around snapshots, and
// graceful shutdown (spec http.md §1, lifecycle.md §7.3).
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Server timeouts from spec http.md §1.1: no read or write timeout (streams
// and transfers are unbounded), a long idle timeout that outlives any proxy
// in front of envd.
const (
	IdleTimeout       = 640 * time.Second
	ReadHeaderTimeout = 60 * time.Second
	tcpUserTimeout    = 60 * time.Second
)

// HTTP/2 receive windows. net/http buffers what a client sends, up to
// the connection's window, before any handler reads it, so H2ConnWindow
// bounds what one h2c connection can make envd hold: at most
// H2ConnWindow × the connection caps (HostConns, GuestConns). With 2 MiB
// and 1 MiB per stream one h2c upload of 256 MiB runs at 835 MB/s against
// 968 MB/s with 16 and 8 MiB (BenchmarkUploadH2C256MiB, loopback); the
// larger windows let 4096 host connections make envd hold 64 GiB.
const (
	H2ConnWindow   = 2 << 20
	H2StreamWindow = 1 << 20
)

// Server is envd's HTTP server.
type Server struct {
	log     *slog.Logger
	srv     *http.Server
	tracker *ConnTracker

	port int

	mu   sync.Mutex
	ln   net.Listener
	gate *gatedListener // the TCP listener under ln, whose acceptance an upgrade pauses
}

// New builds a server that will serve h (already routed and authenticated)
// behind the outer middleware on port: recover → log → CORS → h. Connection
// tracking hooks into the server itself (ConnState and ConnContext), outside
// the handler chain, because it must also see connections that carry no
// request.
func New(port int, h http.Handler, log *slog.Logger) *Server {
	s := &Server{log: log, port: port}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	s.srv = &http.Server{
		Addr:              ":" + strconv.Itoa(port),
		Handler:           Recover(log, LogRequests(log, CORS(withResponseController(h)))),
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		Protocols:         protocols,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ConnContext:       connContext,
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerConnection: H2ConnWindow,
			MaxReceiveBufferPerStream:     H2StreamWindow,
		},
	}
	s.tracker = newConnTracker(s.srv, log)
	s.srv.ConnState = s.tracker.onState
	return s
}

// LimitConns installs connection caps (ConnLimits); call it before Listen.
// Without it connections are not capped.
func (s *Server) LimitConns(l ConnLimits) {
	s.tracker.setLimits(l)
	s.log.Info("connection caps", "host", l.Caps[Host], "guest", l.Caps[Guest])
}

// Tracker is the connection tracker used by snapshot prepare and recovery.
func (s *Server) Tracker() *ConnTracker { return s.tracker }

// Listen binds the port on every address (dual-stack where the kernel
// allows it). Accepted connections get TCP keepalive and TCP_USER_TIMEOUT
// (setConnOptions). It does nothing when a listener was adopted from a
// live upgrade (AdoptListener).
func (s *Server) Listen(ctx context.Context) error {
	s.mu.Lock()
	adopted := s.ln != nil
	s.mu.Unlock()
	if adopted {
		return nil
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.srv.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.srv.Addr, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		ln.Close()
		return nil
	}
	s.setListenerLocked(ln.(*net.TCPListener))
	return nil
}

// ListenRetry is Listen for PID 1, which must never exit: a failure is
// logged and retried every second until the port is bound or ctx ends.
// Without retry the first failure is returned.
func (s *Server) ListenRetry(ctx context.Context, retry bool) error {
	for {
		err := s.Listen(ctx)
		if err == nil || !retry {
			return err
		}
		s.log.Error("cannot listen; retrying", "error", err.Error())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// Addr is the bound address (after Listen).
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Serve serves until Shutdown; it returns nil after a shutdown.
func (s *Server) Serve() error {
	s.mu.Lock()
	ln := s.ln
	s.mu.Unlock()
	if ln == nil {
		return errors.New("serve: not listening")
	}
	if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops accepting connections, lets in-flight requests finish until
// ctx ends, then closes every connection (streams must not keep envd alive).
func (s *Server) Shutdown(ctx context.Context) {
	if err := s.srv.Shutdown(ctx); err != nil {
		s.log.Info("closing connections still busy after the shutdown grace period")
		_ = s.srv.Close()
	}
}

// limitListener sets TCP_USER_TIMEOUT on every accepted connection and
// admits it through the connection tracker's caps; a refused connection is
// closed at once and the next one accepted.
type limitListener struct {
	net.Listener
	tracker *ConnTracker
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		setConnOptions(c)
		if l.tracker.admit(c) {
			return c, nil
		}
		_ = c.Close()
	}
}
