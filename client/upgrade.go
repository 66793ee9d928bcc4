package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"

	"connectrpc.com/connect"
)

// ErrNoSwap is returned by Upgrade when envd answered with a success
// status instead of replacing itself; envd never does that, but a proxy
// in between might.
var ErrNoSwap = errors.New("envd answered instead of replacing itself")

// Upgrade replaces the running envd with the envd binary read from binary
// (POST /upgrade; size is its length, or -1 when unknown): envd stores and
// checks it, freezes the workload, hands its state over and executes it in
// the same process. A nil binary executes the running binary again. The
// swap is signalled by envd closing the connection without an answer after
// the whole binary was read; Upgrade then returns nil. A refusal (envd not
// initialized yet, another upgrade in progress, a snapshot prepared, an
// incompatible binary, ...) is an *Error with envd's message, after which
// the old envd keeps serving.
//
// After a swap the new envd answers every route but Health and Init with
// 401 "envd not initialized" and keeps the workload frozen until an Init
// succeeds: call InitResult (with the current token) and check its
// Handover, which reports whether the new image took everything over.
// Upgrade does not send that Init itself: an orchestrator sends its own.
func (c *Client) Upgrade(ctx context.Context, binary io.Reader, size int64, progress Progress) error {
	const op = "POST /upgrade"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/upgrade", http.NoBody)
	if err != nil {
		return &Error{Op: op, Code: connect.CodeInvalidArgument, Message: err.Error(), Err: err}
	}
	// No GetBody: a request that may have reached envd is never sent twice.
	req.GetBody = nil
	var body *upgradeBody
	if binary != nil {
		body = &upgradeBody{r: binary, total: size, progress: progress}
		req.Body = body
		req.ContentLength = size
		if size == 0 {
			// An empty binary must still be a body: Content-Length 0 means
			// "execute the running binary again".
			req.ContentLength = -1
		}
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Envd-Upgrade-Bin", "/usr/bin/envd.next")
	c.setHeaders(req.Header, false, false)
	resp, err := c.hc.Do(req)
	if err != nil {
		// The connection ended without an answer: the swap, provided envd
		// had the whole request.
		if ctx.Err() == nil && (body == nil || body.eof.Load()) {
			return nil
		}
		return transportError(op, err)
	}
	if resp.StatusCode < 300 {
		resp.Body.Close()
		return &Error{Op: op, Status: resp.StatusCode, Code: connect.CodeInternal, Message: ErrNoSwap.Error(), Err: ErrNoSwap, httpStatus: true}
	}
	return httpError(op, resp)
}

// upgradeBody reports progress and whether it was read to its end.
type upgradeBody struct {
	r        io.Reader
	total    int64
	done     int64
	progress Progress
	eof      atomic.Bool
}

func (b *upgradeBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 {
		b.done += int64(n)
		if b.progress != nil {
			b.progress(b.done, b.total)
		}
	}
	if err == io.EOF {
		b.eof.Store(true)
	}
	return n, err
}

func (b *upgradeBody) Close() error { return nil }

// Handover is the X-Envd-Handover report of an envd started by a live
// upgrade (its first and every later Init response).
type Handover struct {
	// Failed: the new image could not take the state over; it serves, but
	// the workload it inherited is orphaned.
	Failed bool `json:"failed"`
	// Procs, Retained, Watchers: processes, retained exits and polling
	// watchers carried; the *Failed counts those not restored.
	Procs          int `json:"procs"`
	ProcsFailed    int `json:"procs_failed"`
	Retained       int `json:"retained"`
	RetainedFailed int `json:"retained_failed"`
	Watchers       int `json:"watchers"`
	WatchersFailed int `json:"watchers_failed"`
}

// InitResult is what an Init reports besides success.
type InitResult struct {
	// Version is envd's protocol version (X-Envd-Version).
	Version string
	// Stale: envd ignored the Init because its Timestamp was older than
	// one it had applied (X-Envd-Init: stale).
	Stale bool
	// FreezeAudit is the raw X-Envd-Freeze-Audit value, if any.
	FreezeAudit string
	// Handover is set when this envd was started by a live upgrade.
	Handover *Handover
}

// InitResult is Init returning everything the response reports.
func (c *Client) InitResult(ctx context.Context, req *InitRequest) (*InitResult, error) {
	const op = "POST /init"
	var body io.Reader = http.NoBody
	hdr := http.Header{}
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return nil, &Error{Op: op, Code: connect.CodeInvalidArgument, Message: fmt.Sprintf("encoding request: %v", err), Err: err}
		}
		body = bytes.NewReader(b)
		hdr.Set("Content-Type", "application/json")
	}
	resp, err := c.do(ctx, op, http.MethodPost, "/init", body, hdr, http.StatusNoContent)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	r := &InitResult{
		Version:     resp.Header.Get("X-Envd-Version"),
		Stale:       resp.Header.Get("X-Envd-Init") == "stale",
		FreezeAudit: resp.Header.Get("X-Envd-Freeze-Audit"),
	}
	if v := resp.Header.Get("X-Envd-Handover"); v != "" {
		var h Handover
		if err := json.Unmarshal([]byte(v), &h); err != nil {
			return nil, &Error{Op: op, Status: resp.StatusCode, Code: connect.CodeInternal, Message: "decoding X-Envd-Handover " + strconv.Quote(v) + ": " + err.Error(), Err: err, httpStatus: true}
		}
		r.Handover = &h
	}
	return r, nil
}
