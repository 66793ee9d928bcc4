package client

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/gen/filesystem/filesystemconnect"
	"github.com/envd/envd/gen/process/processconnect"
)

// DefaultPort is the TCP port envd listens on.
const DefaultPort = 49983

// Transport defaults for a guest reached over a VM's TAP network: the peer
// is one hop away, so a connection that takes longer than this to open or to
// answer is broken rather than slow.
const (
	DefaultDialTimeout           = 10 * time.Second
	DefaultResponseHeaderTimeout = 30 * time.Second
	DefaultTCPKeepAlive          = 30 * time.Second
	DefaultIdleConnTimeout       = 90 * time.Second
	DefaultMaxIdleConnsPerHost   = 10
)

// Client talks to one envd. It is safe for concurrent use. The zero value is
// not usable; create one with New.
type Client struct {
	base      string // scheme://host:port[/prefix], no trailing slash
	hc        *http.Client
	token     string
	user      string
	keepalive time.Duration
	json      bool
	proc      processconnect.ProcessClient
	fs        filesystemconnect.FilesystemClient
}

// Option configures a Client in New.
type Option func(*options)

type options struct {
	hc        *http.Client
	token     string
	user      string
	keepalive time.Duration
	json      bool
}

// WithHTTPClient makes the client send every request through hc instead of
// a client built on NewTransport. Streams (process output, watches, file
// transfers) stay open for as long as they run, so hc should have no overall
// Timeout; bound individual calls with their context instead.
func WithHTTPClient(hc *http.Client) Option {
	return func(o *options) { o.hc = hc }
}

// WithAccessToken sends token as X-Access-Token on every request and uses
// it to sign file URLs. envd requires it once a token was set with /init.
func WithAccessToken(token string) Option {
	return func(o *options) { o.token = token }
}

// WithUser makes the client act as the Unix user name: processes run as
// that user, relative and "~" paths resolve against its home, and files and
// directories it creates are owned by it. Without it envd's default user
// applies (root unless /init changed it). Client.As derives a client for
// another user.
func WithUser(name string) Option {
	return func(o *options) { o.user = name }
}

// WithJSONCodec makes RPCs use the Connect JSON codec (what the E2B SDKs
// use) instead of binary protobuf (what the Wrenn host uses).
func WithJSONCodec() Option {
	return func(o *options) { o.json = true }
}

// WithKeepaliveInterval asks envd to send a keepalive event on process and
// watch streams after d without other traffic (Keepalive-Ping-Interval,
// whole seconds, at least one). Without it envd's default of 90 s applies.
// Proxies that drop idle connections sooner need a shorter interval.
func WithKeepaliveInterval(d time.Duration) Option {
	return func(o *options) { o.keepalive = d }
}

// NewTransport returns the transport New uses by default, tuned for a guest
// behind a TAP device: 10 s dial timeout, 30 s TCP keepalive, 30 s
// response-header timeout, up to 10 idle connections per host kept for
// 90 s. It never uses a proxy from the environment (guest addresses are
// link-local and must not be sent to a corporate proxy) and speaks
// HTTP/1.1. Callers may adjust the returned value before passing it to
// WithHTTPClient.
func NewTransport() *http.Transport {
	d := &net.Dialer{Timeout: DefaultDialTimeout, KeepAlive: DefaultTCPKeepAlive}
	return &http.Transport{
		DialContext:           d.DialContext,
		ResponseHeaderTimeout: DefaultResponseHeaderTimeout,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   DefaultMaxIdleConnsPerHost,
		IdleConnTimeout:       DefaultIdleConnTimeout,
		ExpectContinueTimeout: time.Second,
	}
}

// New returns a client for the envd at addr, which is "host", "host:port"
// or a URL "http://host:port" (the port defaults to 49983).
func New(addr string, opts ...Option) (*Client, error) {
	base, err := baseURL(addr)
	if err != nil {
		return nil, err
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.hc == nil {
		o.hc = &http.Client{Transport: NewTransport()}
	}
	if o.keepalive < 0 {
		return nil, fmt.Errorf("envd client: negative keepalive interval %v", o.keepalive)
	}
	var copts []connect.ClientOption
	if o.json {
		copts = append(copts, connect.WithProtoJSON())
	}
	return &Client{
		base:      base,
		hc:        o.hc,
		token:     o.token,
		user:      o.user,
		keepalive: o.keepalive,
		json:      o.json,
		proc:      processconnect.NewProcessClient(rpcHTTPClient{o.hc}, base, copts...),
		fs:        filesystemconnect.NewFilesystemClient(rpcHTTPClient{o.hc}, base, copts...),
	}, nil
}

func baseURL(addr string) (string, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return "", errors.New("envd client: empty address")
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", fmt.Errorf("envd client: address %q: %w", addr, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("envd client: address %q: unsupported scheme %q", addr, u.Scheme)
	}
	if u.User != nil {
		return "", fmt.Errorf("envd client: address %q: credentials in the address are not supported", addr)
	}
	if u.Host == "" {
		return "", fmt.Errorf("envd client: address %q has no host", addr)
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.ContainsAny(addr, "?#") {
		return "", fmt.Errorf("envd client: address %q has a query or fragment", addr)
	}
	if u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(DefaultPort))
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// URL is the base URL the client sends requests to.
func (c *Client) URL() string { return c.base }

// User is the user the client acts as; "" means envd's default user.
func (c *Client) User() string { return c.user }

// As returns a client that shares c's connections and settings but acts as
// user (see WithUser); "" means envd's default user.
func (c *Client) As(user string) *Client {
	cc := *c
	cc.user = user
	return &cc
}

// setHeaders adds the access token to every request, the Basic-auth user to
// requests where a user matters (process start and filesystem RPCs, as the
// E2B SDKs do), and the keepalive interval to server streams.
func (c *Client) setHeaders(h http.Header, withUser, stream bool) {
	if c.token != "" {
		h.Set("X-Access-Token", c.token)
	}
	if withUser && c.user != "" {
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(c.user+":")))
	}
	if stream && c.keepalive > 0 {
		secs := int64((c.keepalive + time.Second - 1) / time.Second)
		h.Set("Keepalive-Ping-Interval", strconv.FormatInt(secs, 10))
	}
}

// newRequest wraps msg in a Connect request with the client's headers.
func newRequest[T any](c *Client, msg *T, withUser, stream bool) *connect.Request[T] {
	req := connect.NewRequest(msg)
	c.setHeaders(req.Header(), withUser, stream)
	return req
}
