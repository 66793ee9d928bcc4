package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/envd/envd/internal/auth"
	"github.com/envd/envd/internal/envdtest"
)

func TestSignedURLs_GetAndPost(t *testing.T) {
	u := envdtest.EnsureUser(t, fsUserName)
	e := envdtest.Start(t, envdtest.Options{})
	const tok = "f00dfeedf00dfeedf00dfeedf00dfeed"
	dir := t.TempDir()
	p := filepath.Join(dir, "s.txt")
	os.WriteFile(p, []byte("signed"), 0o644)
	// Before a token is set, nothing is checked (a bogus signature too).
	resp, _ := xfer(t, "GET", filesURL(e, "path", p, "signature", "v1_bogus"), nil, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("no token: %d", resp.StatusCode)
	}
	if resp, _ := postJSON(t, e.URL+"/init", map[string]any{"accessToken": tok}, nil); resp.StatusCode != 204 {
		t.Fatalf("init %d", resp.StatusCode)
	}
	sign := func(path, op, user string, exp *int64) string { return auth.Sign(path, op, user, []byte(tok), exp) }
	future := time.Now().Add(time.Hour).Unix()
	past := time.Now().Add(-time.Hour).Unix()

	type tc struct {
		name   string
		kv     []string
		hdr    http.Header
		status int
		msg    string
	}
	for _, op := range []string{"read", "write"} {
		method := "GET"
		if op == "write" {
			method = "POST"
		}
		up := filepath.Join(u.Home, "signed-"+op+".txt")
		defer os.Remove(up)
		target, userTarget := p, p
		if op == "write" {
			target, userTarget = up, up+".user"
			defer os.Remove(userTarget)
		}
		hdr := func(extra http.Header) http.Header {
			h := http.Header{}
			if op == "write" {
				h.Set("Content-Type", "application/octet-stream")
			}
			for k, v := range extra {
				h[k] = v
			}
			return h
		}
		ok := 200
		cases := []tc{
			{"valid", []string{"path", target, "signature", sign(target, op, "", nil)}, nil, ok, ""},
			{"valid with user", []string{"path", userTarget, "username", fsUserName, "signature", sign(userTarget, op, fsUserName, nil)}, nil, ok, ""},
			{"valid with expiry", []string{"path", target, "signature", sign(target, op, "", &future), "signature_expiration", strconv.FormatInt(future, 10)}, nil, ok, ""},
			{"expired", []string{"path", target, "signature", sign(target, op, "", &past), "signature_expiration", strconv.FormatInt(past, 10)}, nil, 401, auth.MsgExpiredSignature},
			{"expiry not signed", []string{"path", target, "signature", sign(target, op, "", nil), "signature_expiration", strconv.FormatInt(future, 10)}, nil, 401, auth.MsgInvalidSignature},
			{"wrong operation", []string{"path", target, "signature", sign(target, map[string]string{"read": "write", "write": "read"}[op], "", nil)}, nil, 401, auth.MsgInvalidSignature},
			{"resolved user is not the signed one", []string{"path", target, "signature", sign(target, op, "root", nil)}, nil, 401, auth.MsgInvalidSignature},
			{"wrong", []string{"path", target, "signature", "v1_AAAA"}, nil, 401, auth.MsgInvalidSignature},
			{"missing", []string{"path", target}, nil, 401, auth.MsgMissingSignature},
			{"header", []string{"path", target}, http.Header{"X-Access-Token": {tok}}, ok, ""},
			{"wrong header beats a valid signature", []string{"path", target, "signature", sign(target, op, "", nil)}, http.Header{"X-Access-Token": {"nope"}}, 401, auth.MsgHeaderMismatch},
			{"bad expiration", []string{"path", target, "signature_expiration", "12x"}, nil, 400, "Invalid format for parameter signature_expiration: *"},
		}
		for _, c := range cases {
			var body *strings.Reader
			if op == "write" {
				body = strings.NewReader("uploaded " + c.name)
			} else {
				body = strings.NewReader("")
			}
			resp, b := xfer(t, method, filesURL(e, c.kv...), body, hdr(c.hdr))
			if c.status == ok {
				if resp.StatusCode != 200 {
					t.Errorf("%s %s: %d %s", op, c.name, resp.StatusCode, b)
				}
				continue
			}
			fileErr(t, resp, b, c.status, c.msg)
		}
		// HEAD is signed as read.
		if op == "read" {
			resp, _ := xfer(t, "HEAD", filesURL(e, "path", p, "signature", sign(p, "read", "", nil)), nil, nil)
			if resp.StatusCode != 200 {
				t.Fatalf("HEAD %d", resp.StatusCode)
			}
		}
	}
	// The upload with a user signature wrote the user's file.
	if uid, _ := fsOwner(t, filepath.Join(u.Home, "signed-write.txt.user")); uid != u.UID {
		t.Fatal("signed upload for the user not owned by the user")
	}
	// Compose is not signed: it needs the token header.
	resp, b := postJSON(t, e.URL+"/files/compose", map[string]any{"source_paths": []string{p}, "destination": p + ".2"}, nil)
	fileErr(t, resp, b, 401, auth.MsgUnauthorized)
	resp, b = postJSON(t, e.URL+"/files/compose", map[string]any{"source_paths": []string{p}, "destination": p + ".2"}, map[string]string{"X-Access-Token": tok})
	if resp.StatusCode != 200 {
		t.Fatalf("compose with token: %d %s", resp.StatusCode, b)
	}
}
