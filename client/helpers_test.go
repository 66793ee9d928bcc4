package client_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/client"
	"github.com/envd/envd/internal/envdtest"
)

// TestMain starts one envd for the examples, which read its address from
// ENVD_ADDR like envdctl does. Tests start their own instances.
func TestMain(m *testing.M) {
	tb := &mainTB{}
	e := envdtest.Start(tb, envdtest.Options{})
	os.Setenv("ENVD_ADDR", e.URL)
	code := m.Run()
	for i := len(tb.cleanups) - 1; i >= 0; i-- {
		tb.cleanups[i]()
	}
	os.Exit(code)
}

// mainTB is the testing.TB envdtest needs, for use outside a test.
type mainTB struct {
	testing.TB
	cleanups []func()
}

func (*mainTB) Helper()                      {}
func (*mainTB) Failed() bool                 { return false }
func (*mainTB) Logf(f string, args ...any)   { fmt.Fprintf(os.Stderr, f+"\n", args...) }
func (*mainTB) Fatal(args ...any)            { fmt.Fprintln(os.Stderr, args...); os.Exit(1) }
func (*mainTB) Fatalf(f string, args ...any) { fmt.Fprintf(os.Stderr, f+"\n", args...); os.Exit(1) }
func (tb *mainTB) Cleanup(f func())          { tb.cleanups = append(tb.cleanups, f) }

// start runs a fresh envd and returns a client for it.
func start(t *testing.T, opts ...client.Option) (*envdtest.Envd, *client.Client) {
	t.Helper()
	e := envdtest.Start(t, envdtest.Options{})
	c, err := client.New(e.URL, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return e, c
}

// ctx is the test's context with a generous bound against hangs.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// wantError checks that err is a *client.Error with the given code, HTTP
// status (0: any) and message (""; any).
func wantError(t *testing.T, err error, code connect.Code, status int, msg string) *client.Error {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want *client.Error", err, err)
	}
	if e.Code != code || (status != 0 && e.Status != status) || (msg != "" && e.Message != msg) {
		t.Fatalf("error %+v, want code %s status %d message %q", e, code, status, msg)
	}
	if client.CodeOf(err) != code {
		t.Fatalf("CodeOf = %s, want %s", client.CodeOf(err), code)
	}
	return e
}

func sha256hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid string) bool {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
