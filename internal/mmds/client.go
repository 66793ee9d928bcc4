// Package mmds reads the Firecracker metadata service (MMDS, version 2):
// the sandbox and template ids the host writes after every start or resume,
// and the access-token hash that authorises /init (spec lifecycle.md §4).
package mmds

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// requestTimeout bounds each of the two HTTP requests of one read.
const requestTimeout = 10 * time.Second

// Metadata is the part of the MMDS document envd reads; missing or
// non-string fields are "".
type Metadata struct {
	InstanceID      string
	EnvID           string
	AccessTokenHash string
}

// Client reads MMDS at one address (host:port). It speaks the little
// HTTP/1.1 it needs over a fresh TCP connection per request (no proxy, no
// keep-alive) instead of net/http's client, whose transport is about 0.4 MB
// of envd's binary for two requests per poll (docs/performance.md,
// "Binary size").
type Client struct {
	addr string
}

// NewClient returns a client for addr.
func NewClient(addr string) *Client { return &Client{addr: addr} }

// Addr is the metadata service address.
func (c *Client) Addr() string { return c.addr }

// Fetch obtains a session token and reads the metadata document.
func (c *Client) Fetch(ctx context.Context) (*Metadata, error) {
	tok, err := c.do(ctx, http.MethodPut, "/latest/api/token", [][2]string{{"X-Metadata-Token-Ttl-Seconds", "60"}}, 4096)
	if err != nil {
		return nil, fmt.Errorf("mmds token: %w", err)
	}
	if len(tok) == 0 {
		return nil, errors.New("mmds token: empty")
	}
	if !validToken(tok) {
		return nil, errors.New("mmds token: not a header value")
	}
	body, err := c.do(ctx, http.MethodGet, "/", [][2]string{{"X-Metadata-Token", string(tok)}, {"Accept", "application/json"}}, 1<<20)
	if err != nil {
		return nil, fmt.Errorf("mmds metadata: %w", err)
	}
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("mmds metadata: %w", err)
	}
	if doc == nil {
		return nil, errors.New("mmds metadata: not a JSON object")
	}
	str := func(k string) string { s, _ := doc[k].(string); return s }
	return &Metadata{InstanceID: str("instanceID"), EnvID: str("envID"), AccessTokenHash: str("accessTokenHash")}, nil
}

// validToken: the token goes back in a header, so it must be a plain
// header value (no line breaks or other control bytes).
func validToken(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// do makes one request without a body and returns at most limit bytes of
// the body of a 200 response. The whole exchange is bounded by
// requestTimeout and by ctx.
func (c *Client) do(ctx context.Context, method, path string, hdr [][2]string, limit int64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n", method, path, c.addr)
	for _, h := range hdr {
		fmt.Fprintf(&req, "%s: %s\r\n", h[0], h[1])
	}
	req.WriteString("\r\n")
	if _, err := conn.Write(req.Bytes()); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	return body, nil
}
