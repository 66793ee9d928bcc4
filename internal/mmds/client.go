// Package mmds reads the Firecracker metadata service (MMDS, version 2):
// the sandbox and template ids the host writes after every start or resume,
// and the access-token hash that authorises /init (spec lifecycle.md §4).
package mmds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// Client reads MMDS at one address (host:port).
type Client struct {
	addr string
	http *http.Client
}

// NewClient returns a client for addr. Every request uses a fresh
// connection and ignores proxy settings from the environment.
func NewClient(addr string) *Client {
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true, ResponseHeaderTimeout: requestTimeout}
	return &Client{addr: addr, http: &http.Client{Transport: tr, Timeout: requestTimeout}}
}

// Addr is the metadata service address.
func (c *Client) Addr() string { return c.addr }

// Fetch obtains a session token and reads the metadata document.
func (c *Client) Fetch(ctx context.Context) (*Metadata, error) {
	tokReq, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+c.addr+"/latest/api/token", http.NoBody)
	if err != nil {
		return nil, err
	}
	tokReq.Header.Set("X-metadata-token-ttl-seconds", "60")
	tok, err := c.do(tokReq, 4096)
	if err != nil {
		return nil, fmt.Errorf("mmds token: %w", err)
	}
	if len(tok) == 0 {
		return nil, errors.New("mmds token: empty")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.addr+"/", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-metadata-token", string(tok))
	req.Header.Set("Accept", "application/json")
	body, err := c.do(req, 1<<20)
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

func (c *Client) do(req *http.Request, limit int64) ([]byte, error) {
	resp, err := c.http.Do(req)
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
