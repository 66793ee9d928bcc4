package api

import (
	"net/http"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

type recordingRouter struct{ patterns []string }

func (r *recordingRouter) HandleFunc(pattern string, _ func(http.ResponseWriter, *http.Request)) {
	r.patterns = append(r.patterns, pattern)
}

// Every plain HTTP route envd serves is described in docs/openapi.yaml (the
// document HTTP clients are generated from; the e2e suite validates every
// response against it). A handler group added to cmd/envd must be added
// here too.
func TestOpenAPI_DocumentsEveryRoute(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromFile("../../docs/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingRouter{}
	(&Control{}).Register(rec)
	(&Files{}).Register(rec)
	(&ControlPlane{}).Register(rec)
	(&Upgrade{}).Register(rec)
	if len(rec.patterns) == 0 {
		t.Fatal("no routes recorded")
	}
	for _, pat := range rec.patterns {
		method, path, ok := strings.Cut(pat, " ")
		if !ok {
			t.Errorf("route %q has no method", pat)
			continue
		}
		item := doc.Paths.Find(path)
		if item == nil {
			t.Errorf("route %s is served but not in docs/openapi.yaml", pat)
			continue
		}
		if item.GetOperation(method) == nil {
			t.Errorf("route %s: docs/openapi.yaml has the path but not the method", pat)
		}
	}
}
