package defaults

import (
	"reflect"
	"testing"
)

func TestReplaceUserVars_ProtectsInternal(t *testing.T) {
	s := New("root")
	s.SetInternal(SandboxVar, "true")
	s.SetInternal("NOT_INTERNAL", "x")
	s.ReplaceUserVars(map[string]string{"A": "1", "B": "2", SandboxVar: "false", SandboxIDVar: "evil"})
	want := map[string]string{"A": "1", "B": "2", SandboxVar: "true"}
	if got := s.Vars(); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	s.ReplaceUserVars(map[string]string{"C": "3"})
	want = map[string]string{"C": "3", SandboxVar: "true"}
	if got := s.Vars(); !reflect.DeepEqual(got, want) {
		t.Fatalf("replace must drop A and B: got %v", got)
	}
	if got := s.AppendEnv([]string{"PATH=/bin"}); !reflect.DeepEqual(got, []string{"PATH=/bin", "C=3", "WRENN_SANDBOX=true"}) {
		t.Fatalf("AppendEnv %v", got)
	}
}

func TestDefaults_EmptyMeansNoChange(t *testing.T) {
	s := New("root")
	s.SetDefaultUser("")
	s.SetDefaultWorkdir("")
	if s.DefaultUser() != "root" || s.DefaultWorkdir() != "" {
		t.Fatal("empty values changed defaults")
	}
	s.SetDefaultUser("user")
	s.SetDefaultWorkdir("/work")
	if s.DefaultUser() != "user" || s.DefaultWorkdir() != "/work" {
		t.Fatal("set")
	}
}
