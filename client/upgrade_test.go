package client_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/envd/envd/client"
)

// A live upgrade through the client: refused before the first Init with
// envd's message; then a re-exec of the running binary (the only upgrade a
// test may run outside a namespace of its own: it stages nothing in
// /usr/bin), reported by the next Init's Handover. The e2e suite drives
// real binaries (test/e2e/upgrade_test.go).
func TestUpgrade_ReExecAndHandover(t *testing.T) {
	_, c := start(t)
	err := c.Upgrade(ctx(t), nil, 0, nil)
	var e *client.Error
	if !errors.As(err, &e) || e.Status != http.StatusConflict || e.Message != "envd not initialized" {
		t.Fatalf("before Init: %v", err)
	}
	r, err := c.InitResult(ctx(t), &client.InitRequest{EnvVars: map[string]string{"KEPT": "1"}})
	if err != nil || r.Handover != nil || r.Version == "" {
		t.Fatalf("first Init: %+v %v", r, err)
	}
	if err := c.Upgrade(ctx(t), nil, 0, nil); err != nil {
		t.Fatalf("re-exec: %v", err)
	}
	// Behind the post-upgrade gate until an Init.
	if _, err := c.Envs(ctx(t)); !errors.As(err, &e) || e.Status != http.StatusUnauthorized || e.Message != "envd not initialized" {
		t.Fatalf("Envs before the Init: %v", err)
	}
	r, err = c.InitResult(ctx(t), nil)
	if err != nil || r.Handover == nil || *r.Handover != (client.Handover{}) {
		t.Fatalf("Init after the upgrade: %+v %v", r, err)
	}
	env, err := c.Envs(ctx(t))
	if err != nil || env["KEPT"] != "1" {
		t.Fatalf("Envs after the upgrade: %v %v", env, err)
	}
}
