package logging

import (
	"bytes"
	"strings"
	"testing"
)

func TestGate(t *testing.T) {
	var b bytes.Buffer
	g := NewGate(&b)
	log := New(g, Options{JSON: true})
	log.Info("one")
	g.Hold()
	log.Info("two")
	log.Info("three")
	if n := g.Release(); n != 2 {
		t.Fatalf("dropped %d, want 2", n)
	}
	log.Info("four")
	out := b.String()
	if !strings.Contains(out, `"one"`) || !strings.Contains(out, `"four"`) || strings.Contains(out, `"two"`) {
		t.Fatalf("output %q", out)
	}
}
