package client

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// rpcHTTPClient sits between the generated Connect clients and the HTTP
// client. envd's access-token check runs before any Connect handler and
// answers a refused RPC like any other route, with its plain JSON error
// {"code":401,"message":"..."}; connect-go cannot read a numeric code and
// would report only "401 Unauthorized". This rewrites such a response into
// the Connect error form of the request's protocol, so the caller sees
// envd's message.
type rpcHTTPClient struct {
	hc *http.Client
}

func (c rpcHTTPClient) Do(req *http.Request) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err != nil || resp.StatusCode == http.StatusOK ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		return resp, err
	}
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
	replace := func(b []byte) {
		resp.Body = io.NopCloser(bytes.NewReader(b))
		resp.ContentLength = int64(len(b))
		resp.Header.Set("Content-Length", strconv.Itoa(len(b)))
	}
	var plain struct {
		Code    json.Number `json:"code"`
		Message string      `json:"message"`
	}
	if rerr != nil || json.Unmarshal(body, &plain) != nil || plain.Code == "" {
		replace(body) // a Connect error already, or unreadable: unchanged
		return resp, nil
	}
	type wireError struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	we := wireError{Code: statusCode(resp.StatusCode).String(), Message: plain.Message}
	if ct := req.Header.Get("Content-Type"); strings.HasPrefix(ct, "application/connect+") {
		// A Connect stream reports errors in an end-of-stream envelope of a
		// 200 response.
		payload, _ := json.Marshal(struct {
			Error wireError `json:"error"`
		}{we})
		env := make([]byte, 5, 5+len(payload))
		env[0] = 0x02
		binary.BigEndian.PutUint32(env[1:], uint32(len(payload)))
		resp.StatusCode = http.StatusOK
		resp.Status = "200 OK"
		resp.Header.Set("Content-Type", ct)
		replace(append(env, payload...))
		return resp, nil
	}
	b, _ := json.Marshal(we)
	resp.Header.Set("Content-Type", "application/json")
	replace(b)
	return resp, nil
}
