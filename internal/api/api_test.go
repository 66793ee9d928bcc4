package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestNormalizeDeadline(t *testing.T) {
	var seen http.Header
	h := normalizeDeadline(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		w.WriteHeader(299)
	}))
	do := func(path, name string, values ...string) (int, string) {
		r := httptest.NewRequest("POST", path, strings.NewReader("{}"))
		r.Header.Set("Content-Type", "application/json")
		for _, v := range values {
			r.Header.Add(name, v)
		}
		seen = nil
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	const rpc = "/process.Process/List"
	for _, v := range []string{"+5", "-0", "+0", " 5", "5 ", "1e3", "0x1", "12345678901", "５"} {
		if code, body := do(rpc, "Connect-Timeout-Ms", v); code != 400 || !strings.Contains(body, `"code":"invalid_argument"`) {
			t.Errorf("Connect-Timeout-Ms %q: %d %s", v, code, body)
		}
	}
	if code, _ := do(rpc, "Connect-Timeout-Ms", "100", "+5"); code != 400 {
		t.Error("a second, invalid value must be refused too")
	}
	for v, kept := range map[string]bool{"": false, "0": false, "0000": false, "5": true, "0005": true, "9999999999": true} {
		code, _ := do(rpc, "Connect-Timeout-Ms", v)
		if code != 299 || (seen.Get("Connect-Timeout-Ms") != "") != kept {
			t.Errorf("Connect-Timeout-Ms %q: %d, passed on %q", v, code, seen.Get("Connect-Timeout-Ms"))
		}
	}
	for _, v := range []string{"+5S", "-0S", "5", "S", "5s", "123456789S", "5 S", "5Sx"} {
		if code, _ := do(rpc, "Grpc-Timeout", v); code != 400 {
			t.Errorf("grpc-timeout %q: %d", v, code)
		}
	}
	for v, kept := range map[string]bool{"0S": false, "00000000H": false, "5S": true, "99999999n": true, "1m": true} {
		code, _ := do(rpc, "Grpc-Timeout", v)
		if code != 299 || (seen.Get("Grpc-Timeout") != "") != kept {
			t.Errorf("grpc-timeout %q: %d, passed on %q", v, code, seen.Get("Grpc-Timeout"))
		}
	}
	// Not an RPC: the header means nothing and is left alone.
	if code, _ := do("/files", "Connect-Timeout-Ms", "+5"); code != 299 {
		t.Errorf("/files with a bad Connect-Timeout-Ms: %d", code)
	}
}
