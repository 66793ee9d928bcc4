// Package hostinit applies POST /init: the host's (re)configuration of the
// sandbox after create, resume or restore — access token, environment,
// default user and workdir, clock, hyperloop address, CA bundle and NFS
// volumes (spec http.md §8).
package hostinit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// VolumeMount is one NFS volume to mount.
type VolumeMount struct {
	NFSTarget string `json:"nfs_target"`
	Path      string `json:"path"`
}

// Request is a parsed /init body; nil pointers are absent fields.
type Request struct {
	AccessToken    *string
	EnvVars        map[string]string
	HasEnvVars     bool
	DefaultUser    string
	DefaultWorkdir string
	Timestamp      *time.Time
	HyperloopIP    *string
	VolumeMounts   []VolumeMount
	HasVolumes     bool
	LifecycleID    string
	CABundle       string
}

// ErrBadRequest marks a body that is not a valid /init request.
var ErrBadRequest = errors.New("invalid init request")

// ParseRequest decodes a /init body. Field names are matched exactly;
// unknown fields are ignored; null means absent; an empty body is {}.
func ParseRequest(body []byte) (*Request, error) {
	req := &Request{}
	if len(bytes.TrimSpace(body)) == 0 {
		return req, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		return nil, fmt.Errorf("%w: body is not a JSON object", ErrBadRequest)
	}
	get := func(name string, dst any) (bool, error) {
		raw, ok := fields[name]
		if !ok || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			return false, nil
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			return false, fmt.Errorf("%w: field %s: %v", ErrBadRequest, name, err)
		}
		return true, nil
	}
	var tok string
	if ok, err := get("accessToken", &tok); err != nil {
		return nil, err
	} else if ok {
		// Tokens are hex strings: an escape sequence means something else
		// was sent.
		if tok == "" || bytes.IndexByte(fields["accessToken"], '\\') >= 0 {
			return nil, fmt.Errorf("%w: accessToken must be a non-empty string without escapes", ErrBadRequest)
		}
		req.AccessToken = &tok
	}
	var err error
	if req.HasEnvVars, err = get("envVars", &req.EnvVars); err != nil {
		return nil, err
	}
	if req.EnvVars == nil && req.HasEnvVars {
		req.EnvVars = map[string]string{}
	}
	if _, err = get("defaultUser", &req.DefaultUser); err != nil {
		return nil, err
	}
	if _, err = get("defaultWorkdir", &req.DefaultWorkdir); err != nil {
		return nil, err
	}
	var ts string
	if ok, err := get("timestamp", &ts); err != nil {
		return nil, err
	} else if ok {
		t, perr := time.Parse(time.RFC3339Nano, ts)
		if perr != nil {
			return nil, fmt.Errorf("%w: timestamp: %v", ErrBadRequest, perr)
		}
		req.Timestamp = &t
	}
	var ip string
	if ok, err := get("hyperloopIP", &ip); err != nil {
		return nil, err
	} else if ok {
		req.HyperloopIP = &ip
	} else if ok, err := get("hyperloopIp", &ip); err != nil {
		return nil, err
	} else if ok {
		req.HyperloopIP = &ip
	}
	if req.HasVolumes, err = get("volumeMounts", &req.VolumeMounts); err != nil {
		return nil, err
	}
	if _, err = get("lifecycleID", &req.LifecycleID); err != nil {
		return nil, err
	}
	if _, err = get("caBundle", &req.CABundle); err != nil {
		return nil, err
	}
	return req, nil
}
