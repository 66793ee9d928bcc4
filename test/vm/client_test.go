//go:build vm

package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"connectrpc.com/connect"

	fspb "github.com/envd/envd/gen/filesystem"
	"github.com/envd/envd/gen/filesystem/filesystemconnect"
	procpb "github.com/envd/envd/gen/process"
	"github.com/envd/envd/gen/process/processconnect"
)

// client talks to the envd of one VM instance through its forwarded port.
// Each instance (boot, every restore, every clone) gets its own client: the
// connections of a killed QEMU are dead and must not be reused.
type client struct {
	url   string
	token string
	tr    *http.Transport
}

func newClient(url, token string) *client {
	return &client{url: url, token: token, tr: &http.Transport{
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     5 * time.Minute,
	}}
}

func (c *client) close() { c.tr.CloseIdleConnections() }

// authTransport adds the access token and, when user is set, Basic auth
// naming the user (no password, as the SDKs send it).
type authTransport struct {
	base  http.RoundTripper
	token string
	user  string
}

func (a authTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if a.token != "" {
		r.Header.Set("X-Access-Token", a.token)
	}
	if a.user != "" {
		r.SetBasicAuth(a.user, "")
	}
	return a.base.RoundTrip(r)
}

// http returns a client acting as user ("" = envd's default user).
func (c *client) http(user string) *http.Client {
	return &http.Client{Transport: authTransport{base: c.tr, token: c.token, user: user}}
}

func (c *client) proc(user string) processconnect.ProcessClient {
	return processconnect.NewProcessClient(c.http(user), c.url)
}

func (c *client) fs(user string) filesystemconnect.FilesystemClient {
	return filesystemconnect.NewFilesystemClient(c.http(user), c.url)
}

// result is a finished process as a Start stream reported it.
type result struct {
	pid            uint32
	stdout, stderr string
	pty            string
	end            *procpb.ProcessEvent_EndEvent
}

func (r *result) String() string {
	st := "<no end>"
	if r.end != nil {
		st = r.end.GetStatus()
	}
	return fmt.Sprintf("pid %d %s stdout=%q stderr=%q", r.pid, st, r.stdout, r.stderr)
}

// run executes script with bash as user and waits for its end event.
func (c *client) run(ctx context.Context, user, script string) (*result, error) {
	return c.start(ctx, user, &procpb.StartRequest{
		Process: &procpb.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-c", script}},
		Stdin:   new(bool),
	})
}

// mustRun is run that also requires exit code 0.
func (c *client) mustRun(ctx context.Context, user, script string) (string, error) {
	r, err := c.run(ctx, user, script)
	if err != nil {
		return "", err
	}
	if r.end == nil || !r.end.GetExited() || r.end.GetExitCode() != 0 {
		return "", fmt.Errorf("%q: %v", script, r)
	}
	return r.stdout, nil
}

// start runs a Start stream to its end.
func (c *client) start(ctx context.Context, user string, req *procpb.StartRequest) (*result, error) {
	stream, err := c.proc(user).Start(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	r := &result{}
	var out, errb, pty bytes.Buffer
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		switch {
		case ev.GetStart() != nil:
			r.pid = ev.GetStart().GetPid()
		case ev.GetData() != nil:
			d := ev.GetData()
			out.Write(d.GetStdout())
			errb.Write(d.GetStderr())
			pty.Write(d.GetPty())
		case ev.GetEnd() != nil:
			r.end = ev.GetEnd()
		}
	}
	r.stdout, r.stderr, r.pty = out.String(), errb.String(), pty.String()
	if err := stream.Err(); err != nil {
		return r, fmt.Errorf("start %v: %w", req.GetProcess().GetArgs(), err)
	}
	if r.end == nil {
		return r, fmt.Errorf("start %v: stream ended without an end event", req.GetProcess().GetArgs())
	}
	return r, nil
}

// background starts a long-running process, reads only its start event (as
// the Wrenn host does for background commands) and returns its pid.
func (c *client) background(ctx context.Context, user, tag, script string) (uint32, error) {
	return c.detach(ctx, user, &procpb.StartRequest{
		Process: &procpb.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-c", script}},
		Tag:     &tag,
		Stdin:   new(bool),
	})
}

// detach starts a process, reads its start event and leaves it running.
func (c *client) detach(ctx context.Context, user string, req *procpb.StartRequest) (uint32, error) {
	// No deadline on the Start call: its deadline would become the
	// process's lifetime (rpc.md §4.4). ctx only bounds the wait for the
	// start event.
	sctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer context.AfterFunc(ctx, cancel)()
	stream, err := c.proc(user).Start(sctx, connect.NewRequest(req))
	if err != nil {
		return 0, err
	}
	defer stream.Close()
	if !stream.Receive() {
		return 0, fmt.Errorf("start %v: no start event: %v", req.GetProcess().GetArgs(), stream.Err())
	}
	pid := stream.Msg().GetEvent().GetStart().GetPid()
	if pid == 0 {
		return 0, fmt.Errorf("start %v: first event is not start: %v", req.GetProcess().GetArgs(), stream.Msg())
	}
	return pid, nil
}

// kill ends a process with SIGKILL.
func (c *client) kill(ctx context.Context, pid uint32) error {
	_, err := c.proc("root").SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{
		Process: &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Pid{Pid: pid}},
		Signal:  procpb.Signal_SIGNAL_SIGKILL,
	}))
	return err
}

// pidOfTag finds a running process by tag through List.
func (c *client) pidOfTag(ctx context.Context, tag string) (uint32, error) {
	resp, err := c.proc("root").List(ctx, connect.NewRequest(&procpb.ListRequest{}))
	if err != nil {
		return 0, err
	}
	for _, p := range resp.Msg.GetProcesses() {
		if p.GetTag() == tag {
			return p.GetPid(), nil
		}
	}
	return 0, fmt.Errorf("no process tagged %q in %v", tag, resp.Msg.GetProcesses())
}

// health answers GET /health's status.
func (c *client) health(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.url+"/health", nil)
	resp, err := c.http("").Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET /health: %s", resp.Status)
	}
	return nil
}

// initBody is the part of POST /init the scenario sends.
type initBody struct {
	AccessToken string            `json:"accessToken,omitempty"`
	EnvVars     map[string]string `json:"envVars,omitempty"`
	DefaultUser string            `json:"defaultUser,omitempty"`
	Timestamp   string            `json:"timestamp,omitempty"`
}

func (c *client) init(ctx context.Context, body initBody) error {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.url+"/init", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Transport: c.tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("POST /init: %s %s", resp.Status, msg)
	}
	return nil
}

func (c *client) prepare(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.url+"/snapshot/prepare", nil)
	resp, err := c.http("").Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("POST /snapshot/prepare: %s", resp.Status)
	}
	return nil
}

// upload writes body to path through POST /files (raw octet stream).
func (c *client) upload(ctx context.Context, user, path string, body io.Reader) error {
	q := url.Values{"path": {path}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.url+"/files?"+q.Encode(), body)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.http(user).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /files %s: %s %s", path, resp.Status, msg)
	}
	return nil
}

// download returns the SHA-256 (hex) and size of a file read through
// GET /files.
func (c *client) download(ctx context.Context, user, path string) (string, int64, error) {
	q := url.Values{"path": {path}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.url+"/files?"+q.Encode(), nil)
	resp, err := c.http(user).Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		return "", 0, fmt.Errorf("GET /files %s: %s %s", path, resp.Status, msg)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func (c *client) listDir(ctx context.Context, user, path string) ([]string, error) {
	resp, err := c.fs(user).ListDir(ctx, connect.NewRequest(&fspb.ListDirRequest{Path: path, Depth: 1}))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range resp.Msg.GetEntries() {
		names = append(names, e.GetName())
	}
	return names, nil
}

// system runs a root shell script with tag _system (it stays in envd's own
// cgroup, which no freeze ever stops) and requires exit code 0.
func (c *client) system(ctx context.Context, script string) (string, error) {
	tag := "_system"
	r, err := c.start(ctx, "root", &procpb.StartRequest{
		Process: &procpb.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-c", script}},
		Tag:     &tag, Stdin: new(bool),
	})
	if err != nil {
		return "", err
	}
	if r.end == nil || !r.end.GetExited() || r.end.GetExitCode() != 0 {
		return "", fmt.Errorf("%q: %v", script, r)
	}
	return r.stdout, nil
}

// post sends a control-plane POST (with the token) and returns the status
// and body.
func (c *client) post(ctx context.Context, pathQuery string) (int, []byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.url+pathQuery, nil)
	resp, err := c.http("").Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.Header.Get("Cache-Control") != "no-store" {
		return resp.StatusCode, b, fmt.Errorf("POST %s: no Cache-Control: no-store", pathQuery)
	}
	return resp.StatusCode, b, err
}

// postWant is post that requires the status.
func (c *client) postWant(ctx context.Context, pathQuery string, status int) ([]byte, error) {
	code, b, err := c.post(ctx, pathQuery)
	if err == nil && code != status {
		err = fmt.Errorf("POST %s: %d %q, want %d", pathQuery, code, b, status)
	}
	return b, err
}

// initHeaders is init that returns the response's headers.
func (c *client) initHeaders(ctx context.Context, body initBody) (http.Header, error) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.url+"/init", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Transport: c.tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusNoContent {
		return nil, fmt.Errorf("POST /init: %s %s", resp.Status, msg)
	}
	return resp.Header, nil
}
