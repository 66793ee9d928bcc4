package client

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"time"

	"connectrpc.com/connect"
)

// do sends an HTTP request to envd with the client's access token and
// returns the response when its status is one of ok; otherwise the response
// is consumed and turned into an *Error.
func (c *Client) do(ctx context.Context, op, method, pathAndQuery string, body io.Reader, hdr http.Header, ok ...int) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+pathAndQuery, body)
	if err != nil {
		return nil, &Error{Op: op, Code: connect.CodeInvalidArgument, Message: err.Error(), Err: err}
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	c.setHeaders(req.Header, false, false)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, transportError(op, err)
	}
	for _, s := range ok {
		if resp.StatusCode == s {
			return resp, nil
		}
	}
	return nil, httpError(op, resp)
}

// getJSON fetches path and decodes the JSON body into v.
func (c *Client) getJSON(ctx context.Context, op, path string, v any) error {
	resp, err := c.do(ctx, op, http.MethodGet, path, nil, nil, http.StatusOK)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return &Error{Op: op, Status: resp.StatusCode, Code: connect.CodeInternal, Message: "decoding response: " + err.Error(), Err: err}
	}
	return nil
}

// Health checks that envd is serving and returns its protocol version
// (GET /health). After a snapshot restore the first Health also makes envd
// run its post-restore recovery.
func (c *Client) Health(ctx context.Context) (version string, err error) {
	var h struct {
		Version string `json:"version"`
	}
	if err := c.getJSON(ctx, "GET /health", "/health", &h); err != nil {
		return "", err
	}
	return h.Version, nil
}

// Metrics is a sample of the guest's resource usage (GET /metrics). Sizes
// are in bytes.
type Metrics struct {
	Timestamp   int64   `json:"ts"`            // Unix seconds when sampled
	CPUCount    int     `json:"cpu_count"`     // logical CPUs online
	CPUUsedPct  float64 `json:"cpu_used_pct"`  // busy % since the previous sample
	MemTotal    int64   `json:"mem_total"`     // MemTotal
	MemUsed     int64   `json:"mem_used"`      // MemTotal − MemAvailable
	MemCache    int64   `json:"mem_cache"`     // page cache
	MemTotalMiB int64   `json:"mem_total_mib"` // deprecated: MemTotal in MiB
	MemUsedMiB  int64   `json:"mem_used_mib"`  // deprecated: MemUsed in MiB
	DiskUsed    int64   `json:"disk_used"`     // used bytes of /
	DiskTotal   int64   `json:"disk_total"`    // size of /
}

// Time is the sample's timestamp.
func (m *Metrics) Time() time.Time { return time.Unix(m.Timestamp, 0) }

// Metrics samples the guest's CPU, memory and disk usage (GET /metrics).
// CPUUsedPct covers the time since the previous call by any client.
func (c *Client) Metrics(ctx context.Context) (*Metrics, error) {
	var m Metrics
	if err := c.getJSON(ctx, "GET /metrics", "/metrics", &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// Envs returns envd's default environment (GET /envs): the variables every
// new process receives on top of PATH, HOME, USER and LOGNAME.
func (c *Client) Envs(ctx context.Context) (map[string]string, error) {
	m := map[string]string{}
	if err := c.getJSON(ctx, "GET /envs", "/envs", &m); err != nil {
		return nil, err
	}
	return m, nil
}

// InitRequest is the body of POST /init. Zero fields are not sent, with one
// exception: a non-nil empty EnvVars is sent as {} and clears every variable
// set by an earlier Init.
type InitRequest struct {
	// AccessToken becomes envd's access token. When envd already has a
	// token, an Init without it asks envd to clear the token, which envd
	// refuses unless its metadata service authorises it; pass the current
	// token to keep it.
	AccessToken string
	// EnvVars replaces the default environment set by earlier Inits (nil:
	// unchanged).
	EnvVars map[string]string
	// DefaultUser and DefaultWorkdir, when non-empty, replace envd's
	// defaults for requests that name no user or path.
	DefaultUser    string
	DefaultWorkdir string
	// Timestamp is the sender's clock; envd ignores an Init older than the
	// newest it has applied, and (inside Firecracker only) sets its clock
	// from it.
	Timestamp time.Time
	// HyperloopIP is the address of the sandbox events server.
	HyperloopIP string
	// VolumeMounts are NFS volumes to mount (nil: none requested).
	VolumeMounts []VolumeMount
	// LifecycleID identifies the sandbox lifecycle for volume remounts.
	LifecycleID string
	// CABundle is PEM text to add to the guest's trust store.
	CABundle string
}

// VolumeMount is one NFS volume of InitRequest.
type VolumeMount struct {
	NFSTarget string `json:"nfs_target"`
	Path      string `json:"path"`
}

// MarshalJSON encodes the request with envd's exact field names.
func (r InitRequest) MarshalJSON() ([]byte, error) {
	m := map[string]any{}
	if r.AccessToken != "" {
		m["accessToken"] = r.AccessToken
	}
	if r.EnvVars != nil {
		m["envVars"] = r.EnvVars
	}
	if r.DefaultUser != "" {
		m["defaultUser"] = r.DefaultUser
	}
	if r.DefaultWorkdir != "" {
		m["defaultWorkdir"] = r.DefaultWorkdir
	}
	if !r.Timestamp.IsZero() {
		m["timestamp"] = r.Timestamp.UTC().Format(time.RFC3339Nano)
	}
	if r.HyperloopIP != "" {
		m["hyperloopIP"] = r.HyperloopIP
	}
	if r.VolumeMounts != nil {
		m["volumeMounts"] = r.VolumeMounts
	}
	if r.LifecycleID != "" {
		m["lifecycleID"] = r.LifecycleID
	}
	if r.CABundle != "" {
		m["caBundle"] = r.CABundle
	}
	return json.Marshal(m)
}

// Init configures envd (POST /init): access token, default environment,
// user and working directory, and host integration. It returns the version
// envd reports in X-Envd-Version. A nil req sends an empty body, which is
// what a host does after a restore to trigger recovery only.
func (c *Client) Init(ctx context.Context, req *InitRequest) (version string, err error) {
	r, err := c.InitResult(ctx, req)
	if err != nil {
		return "", err
	}
	return r.Version, nil
}

// PrepareSnapshot tells envd that the VM is about to be paused for a
// snapshot (POST /snapshot/prepare). envd closes idle connections, stops
// timers and background work, and undoes it all at the next Health or Init.
// Streams open at that moment are ended after the restore.
func (c *Client) PrepareSnapshot(ctx context.Context) error {
	resp, err := c.do(ctx, "POST /snapshot/prepare", http.MethodPost, "/snapshot/prepare", http.NoBody, nil, http.StatusNoContent)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}
