package ports

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// proxy forwards one port: it listens on the external address and copies
// bytes between each accepted connection and the loopback listener.
type proxy struct {
	log      *slog.Logger
	listener Listener // the loopback listener this proxy serves
	ln       net.Listener

	// ctx is cancelled by close so that pending dials end at once.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // both ends of every proxied connection
	closed bool

	wg sync.WaitGroup // the accept loop and every connection
}

// startProxy listens on ext at the listener's port and starts accepting.
func startProxy(ext netip.Addr, l Listener, log *slog.Logger) (*proxy, error) {
	lc := net.ListenConfig{Control: reuseAddr}
	ln, err := lc.Listen(context.Background(), "tcp4", netip.AddrPortFrom(ext, l.Port).String())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &proxy{log: log, listener: l, ln: ln, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// reuseAddr sets SO_REUSEADDR so that a port can be forwarded again at
// once after its previous forwarder closed (connections in TIME_WAIT).
func reuseAddr(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// close stops accepting, closes every proxied connection and waits for all
// of the proxy's goroutines.
func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.cancel()
	_ = p.ln.Close()
	p.wg.Wait()
}

func (p *proxy) accept() {
	defer p.wg.Done()
	defer p.recoverPanic("accept")
	backoff := 5 * time.Millisecond
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if p.isClosed() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or similar: wait instead of spinning.
			p.log.Debug("accept failed", "port", p.listener.Port, "error", err.Error())
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *proxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// track registers both ends of a connection; it reports false (and the
// caller closes them) when the proxy is already closing.
func (p *proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *proxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.conns, c)
	}
}

// serve proxies one accepted connection to the loopback listener.
func (p *proxy) serve(down net.Conn) {
	defer p.wg.Done()
	defer p.recoverPanic("connection")
	if !p.track(down) {
		_ = down.Close()
		return
	}
	defer p.untrack(down)
	defer down.Close()
	d := net.Dialer{Timeout: DialTimeout}
	up, err := d.DialContext(p.ctx, "tcp", p.listener.Target().String())
	if err != nil {
		p.log.Debug("cannot reach forwarded service", "port", p.listener.Port, "error", err.Error())
		return
	}
	if !p.track(up) {
		_ = up.Close()
		return
	}
	defer p.untrack(up)
	defer up.Close()
	p.pipe(down, up)
}

// pipe copies both ways until both directions have ended. An orderly end of
// one direction (EOF) is passed on as a half-close, so protocols that
// signal "request complete" by shutting down their sending side keep
// working; an error in either direction tears down both.
func (p *proxy) pipe(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer p.recoverPanic("copy")
		halfCopy(b, a)
	}()
	halfCopy(a, b)
	wg.Wait()
}

// halfCopy copies src to dst. Between TCP sockets io.Copy splices through
// a kernel pipe, so each direction holds at most one pipe's worth of data
// (or Go's 32 KiB copy buffer when splicing is unavailable).
func halfCopy(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if err != nil {
		_ = src.Close()
		_ = dst.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		_ = dst.Close()
	}
}

func (p *proxy) recoverPanic(where string) {
	if r := recover(); r != nil {
		p.log.Error("port forwarder panicked", "port", p.listener.Port, "where", where, "panic", fmt.Sprint(r))
	}
}
