package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/envd/envd/internal/envdtest"
)

// Every HTTP response an e2e test receives from envd through a Go HTTP client
// is checked against docs/openapi.yaml: status, headers and, for JSON and
// text bodies, the body. Paths the document does not describe (the RPC
// services, deliberately unknown paths) and methods it does not list pass
// unchecked; TestOpenAPI_DocumentsEveryRoute makes sure every route of the
// server is in the document. Violations fail the whole run (TestMain), with
// the request that produced them.

// openapiBodyLimit bounds the bodies the validator reads (JSON and text
// responses are small; downloads are never read).
const openapiBodyLimit = 8 << 20

type openapiChecker struct {
	router routers.Router

	mu         sync.Mutex
	violations []string
	checked    int
}

var apiCheck = loadOpenAPI()

func loadOpenAPI() *openapiChecker {
	root, err := envdtest.RepoRoot()
	if err != nil {
		panic(err)
	}
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(filepath.Join(root, "docs", "openapi.yaml"))
	if err != nil {
		panic(fmt.Sprintf("docs/openapi.yaml: %v", err))
	}
	if err := doc.Validate(context.Background()); err != nil {
		panic(fmt.Sprintf("docs/openapi.yaml is not a valid OpenAPI document: %v", err))
	}
	// Tests reach envd on random ports and addresses: match paths only.
	doc.Servers = nil
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		panic(err)
	}
	return &openapiChecker{router: router}
}

// wrap returns a RoundTripper that validates every response of rt.
func (c *openapiChecker) wrap(rt http.RoundTripper) http.RoundTripper {
	if _, ok := rt.(*openapiTransport); ok {
		return rt
	}
	return &openapiTransport{c: c, rt: rt}
}

type openapiTransport struct {
	c  *openapiChecker
	rt http.RoundTripper
}

func (t *openapiTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	t.c.check(req, resp)
	return resp, nil
}

func (c *openapiChecker) check(req *http.Request, resp *http.Response) {
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		return // not a documented operation
	}
	input := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request:    req,
			PathParams: params,
			Route:      route,
		},
		Status: resp.StatusCode,
		Header: resp.Header,
		Options: &openapi3filter.Options{
			IncludeResponseStatus: true,
			MultiError:            true,
		},
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	readable := resp.Header.Get("Content-Encoding") == "" &&
		(mt == "application/json" || strings.HasPrefix(mt, "text/")) &&
		(resp.ContentLength < 0 || resp.ContentLength <= openapiBodyLimit) &&
		req.Method != http.MethodHead
	if readable {
		body, rerr := io.ReadAll(io.LimitReader(resp.Body, openapiBodyLimit+1))
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
		if rerr != nil || len(body) > openapiBodyLimit {
			input.Options.ExcludeResponseBody = true
		} else {
			input.SetBodyBytes(body)
		}
	} else {
		input.Options.ExcludeResponseBody = true
	}
	verr := openapi3filter.ValidateResponse(context.Background(), input)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checked++
	if verr != nil {
		c.violations = append(c.violations, fmt.Sprintf("%s %s → %d (%s): %v", req.Method, req.URL.Path, resp.StatusCode, resp.Header.Get("Content-Type"), verr))
	}
}

func (c *openapiChecker) report() (checked int, violations []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.checked, append([]string(nil), c.violations...)
}

// validated wraps a test's own transport (tests with special client
// settings build their own http.Client).
func validated(rt http.RoundTripper) http.RoundTripper { return apiCheck.wrap(rt) }

func TestMain(m *testing.M) {
	http.DefaultTransport = apiCheck.wrap(http.DefaultTransport)
	code := m.Run()
	checked, violations := apiCheck.report()
	if len(violations) > 0 {
		fmt.Fprintf(os.Stderr, "\n%d of %d HTTP responses do not match docs/openapi.yaml:\n", len(violations), checked)
		for _, v := range violations {
			fmt.Fprintln(os.Stderr, "  "+v)
		}
		if code == 0 {
			code = 1
		}
	} else if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "openapi: %d HTTP responses matched docs/openapi.yaml\n", checked)
	}
	os.Exit(code)
}

// The validator itself: a response that contradicts the document is caught.
func TestOpenAPI_ValidatorCatchesMismatches(t *testing.T) {
	c := loadOpenAPI()
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:1/health", nil)
	mk := func(status int, ct, body string) *http.Response {
		h := http.Header{}
		h.Set("Content-Type", ct)
		h.Set("Cache-Control", "no-store")
		return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body))}
	}
	c.check(req, mk(200, "application/json", `{"version":"0.6.4"}`))
	if _, v := c.report(); len(v) != 0 {
		t.Fatalf("a conforming response was refused: %v", v)
	}
	c.check(req, mk(200, "application/json", `{"ver":"0.6.4"}`))      // missing field
	c.check(req, mk(418, "application/json", `{"version":"0.6.4"}`))  // undocumented status
	c.check(req, mk(200, "application/json", `{"version":"latest"}`)) // pattern
	if _, v := c.report(); len(v) != 3 {
		t.Fatalf("want 3 violations, got %d: %v", len(v), v)
	}
}
