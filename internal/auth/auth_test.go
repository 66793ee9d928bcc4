package auth

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/envd/envd/internal/identity"
)

func i64(v int64) *int64 { return &v }

func TestSign_SpecVectors(t *testing.T) {
	tok := []byte("secret-access-token")
	cases := []struct {
		path, op, user string
		exp            *int64
		want           string
	}{
		{"/path/to/resource.txt", OpRead, "user", nil, "v1_/0lpZh0CqgZvu5XIwq2wcliltum4wAS2H36jVjFApV0"},
		{"/path/to/resource.txt", OpRead, "user", i64(1767225600), "v1_xP7uRSsxABJbGsHbF2oI+1KtSGduFq3p0nc9KKValmM"},
		{"", OpWrite, "", nil, "v1_82R10Rkzh6YhxTNrfQLnRmIESjDApuO5NxM4bcZr+Ho"},
	}
	for _, c := range cases {
		if got := Sign(c.path, c.op, c.user, tok, c.exp); got != c.want {
			t.Errorf("Sign(%q,%q,%q): %s, want %s", c.path, c.op, c.user, got, c.want)
		}
	}
}

func TestToken_SetClearEqual(t *testing.T) {
	var tok Token
	if tok.IsSet() || tok.Equal(nil) || tok.Equal([]byte("")) {
		t.Fatal("zero token must be unset and equal to nothing")
	}
	tok.Set([]byte("abc"))
	old := tok.value
	if !tok.Equal([]byte("abc")) || tok.Equal([]byte("abcd")) || tok.Equal([]byte("ab")) {
		t.Fatal("Equal")
	}
	tok.Set([]byte("xyz"))
	if string(old) != "\x00\x00\x00" {
		t.Fatalf("replaced token not wiped: %q", old)
	}
	tok.Clear()
	if tok.IsSet() {
		t.Fatal("Clear")
	}
}

func fileReq(q url.Values, header string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/files?"+q.Encode(), nil)
	if header != "" {
		r.Header.Set("X-Access-Token", header)
	}
	return r
}

func TestCheckFileRequest(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var tok Token
	q := url.Values{"path": {"/a b+c.txt"}, "username": {"user"}}
	if e := tok.CheckFileRequest(fileReq(q, ""), OpRead, now); e != nil {
		t.Fatalf("no token set must allow: %v", e)
	}
	tok.Set([]byte("secret"))
	sig := Sign("/a b+c.txt", OpRead, "user", []byte("secret"), nil)
	signed := url.Values{"path": q["path"], "username": q["username"], "signature": {sig}}
	future, past := now.Unix()+60, now.Unix()-1
	withExp := func(exp int64, op string) url.Values {
		return url.Values{"path": q["path"], "username": q["username"],
			"signature": {Sign("/a b+c.txt", op, "user", []byte("secret"), &exp)}, "signature_expiration": {itoa(exp)}}
	}
	cases := []struct {
		name   string
		q      url.Values
		header string
		op     string
		status int
		msg    string
	}{
		{"header ok", q, "secret", OpRead, 0, ""},
		{"header wrong even with signature", signed, "nope", OpRead, 401, MsgHeaderMismatch},
		{"missing signature", q, "", OpRead, 401, MsgMissingSignature},
		{"valid signature", signed, "", OpRead, 0, ""},
		{"signature for other op", signed, "", OpWrite, 401, MsgInvalidSignature},
		{"valid unexpired", withExp(future, OpWrite), "", OpWrite, 0, ""},
		{"expired", withExp(past, OpRead), "", OpRead, 401, MsgExpiredSignature},
		{"bad expiration", url.Values{"signature_expiration": {"soon"}}, "", OpRead, 400, `Invalid format for parameter signature_expiration: invalid syntax: "soon"`},
	}
	for _, c := range cases {
		e := tok.CheckFileRequest(fileReq(c.q, c.header), c.op, now)
		if c.status == 0 {
			if e != nil {
				t.Errorf("%s: refused: %v", c.name, e)
			}
			continue
		}
		if e == nil || e.Status != c.status || e.Message != c.msg {
			t.Errorf("%s: got %v, want %d %q", c.name, e, c.status, c.msg)
		}
	}
}

func itoa(v int64) string { b, _ := json.Marshal(v); return string(b) }

func TestRequireToken(t *testing.T) {
	var tok Token
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(299) })
	h := tok.RequireToken(nil, ok)
	do := func(method, path, header string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, nil)
		if header != "" {
			r.Header.Set("X-Access-Token", header)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	if do("GET", "/envs", "").Code != 299 {
		t.Fatal("no token set must pass")
	}
	tok.Set([]byte("t0k"))
	for _, c := range []struct {
		method, path, header string
		code                 int
	}{
		{"GET", "/envs", "", 401},
		{"GET", "/envs", "bad", 401},
		{"GET", "/envs", "t0k", 299},
		{"HEAD", "/health", "", 299},
		{"GET", "/health", "", 299},
		{"POST", "/health", "", 401},
		{"GET", "/files", "", 299},
		{"POST", "/files", "", 299},
		{"POST", "/files/compose", "", 401},
		{"POST", "/init", "", 299},
		{"POST", "/snapshot/prepare", "", 299},
		{"POST", "/process.Process/Start", "", 401},
		{"GET", "/health/", "", 401},
		{"GET", "/nope", "", 401},
	} {
		w := do(c.method, c.path, c.header)
		if w.Code != c.code {
			t.Errorf("%s %s header=%q: %d, want %d", c.method, c.path, c.header, w.Code, c.code)
		}
		if c.code == 401 {
			var body struct {
				Code    int
				Message string
			}
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Code != 401 || body.Message != MsgUnauthorized {
				t.Errorf("401 body %q", w.Body.String())
			}
		}
	}
}

func TestBasicUser(t *testing.T) {
	lookup := func(name string) (*identity.User, error) {
		if name == "user" {
			return &identity.User{Name: "user", UID: 1000}, nil
		}
		return nil, errors.New("unknown")
	}
	var seen *identity.User
	h := BasicUser(lookup, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen, _ = UserFrom(r.Context())
	}))
	run := func(auth, ctype string) *httptest.ResponseRecorder {
		seen = nil
		r := httptest.NewRequest(http.MethodPost, "/process.Process/Start", nil)
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		if ctype != "" {
			r.Header.Set("Content-Type", ctype)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	run("Basic dXNlcjo=", "application/json") // "user:"
	if seen == nil || seen.UID != 1000 {
		t.Fatal("known user not attached")
	}
	for _, a := range []string{"", "Bearer x", "Basic !!!"} {
		if w := run(a, ""); w.Code != 200 || seen != nil {
			t.Fatalf("%q: must be ignored", a)
		}
	}
	w := run("Basic Ym9iOg==", "application/json") // "bob:"
	if w.Code != 401 || w.Body.String() != `{"code":"unauthenticated","message":"invalid username: 'bob'"}` {
		t.Fatalf("unary: %d %q", w.Code, w.Body.String())
	}
	w = run("Basic Ym9iOg==", "application/connect+json")
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/connect+json" {
		t.Fatalf("stream: %d %v", w.Code, w.Header())
	}
	b := w.Body.Bytes()
	if len(b) < 5 || b[0] != 2 {
		t.Fatalf("want end-of-stream envelope, got %q", b)
	}
	var end struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal(b[5:], &end); err != nil || end.Error.Code != "unauthenticated" || end.Error.Message != "invalid username: 'bob'" {
		t.Fatalf("envelope %q", b[5:])
	}
}

// The post-upgrade gate (control-plane.md §5.3) answers before, and
// regardless of, the token: only GET/HEAD /health and POST /init pass.
func TestRequireToken_PostUpgradeGate(t *testing.T) {
	var tok Token
	tok.Set([]byte("t0k"))
	closed := true
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(299) })
	h := tok.RequireToken(func() bool { return closed }, ok)
	do := func(method, path, header string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, nil)
		if header != "" {
			r.Header.Set("X-Access-Token", header)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	for _, c := range []struct {
		method, path, header string
		code                 int
	}{
		{"GET", "/health", "", 299},
		{"HEAD", "/health", "", 299},
		{"POST", "/init", "", 299},
		{"GET", "/init", "t0k", 401},
		{"POST", "/health", "t0k", 401},
		{"GET", "/files", "", 401},
		{"POST", "/files", "t0k", 401},
		{"GET", "/envs", "t0k", 401},
		{"POST", "/process.Process/List", "t0k", 401},
		{"POST", "/upgrade", "t0k", 401},
		{"GET", "//health", "", 401},
	} {
		w := do(c.method, c.path, c.header)
		if w.Code != c.code {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, w.Code, c.code)
		}
		if c.code == 401 && !strings.Contains(w.Body.String(), `"message":"envd not initialized"`) {
			t.Errorf("%s %s: body %q", c.method, c.path, w.Body.String())
		}
	}
	closed = false
	if do("GET", "/envs", "t0k").Code != 299 || do("GET", "/envs", "").Code != 401 {
		t.Fatal("the open gate does not leave the token check in force")
	}
}
