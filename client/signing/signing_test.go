package signing_test

import (
	"fmt"
	"testing"

	"github.com/envd/envd/client/signing"
)

// The test vectors of the specification (http.md §3.4).
func TestSign_SpecVectors(t *testing.T) {
	tok := []byte("secret-access-token")
	exp := int64(1767225600)
	cases := []struct {
		path, op, user string
		exp            *int64
		want           string
	}{
		{"/path/to/resource.txt", signing.OpRead, "user", nil, "v1_/0lpZh0CqgZvu5XIwq2wcliltum4wAS2H36jVjFApV0"},
		{"/path/to/resource.txt", signing.OpRead, "user", &exp, "v1_xP7uRSsxABJbGsHbF2oI+1KtSGduFq3p0nc9KKValmM"},
		{"", signing.OpWrite, "", nil, "v1_82R10Rkzh6YhxTNrfQLnRmIESjDApuO5NxM4bcZr+Ho"},
	}
	for _, c := range cases {
		if got := signing.Sign(c.path, c.op, c.user, tok, c.exp); got != c.want {
			t.Errorf("Sign(%q, %q, %q): %s, want %s", c.path, c.op, c.user, got, c.want)
		}
	}
}

func TestSign_OperationAndUserMatter(t *testing.T) {
	tok := []byte("t")
	base := signing.Sign("/f", signing.OpRead, "", tok, nil)
	for _, other := range []string{
		signing.Sign("/f", signing.OpWrite, "", tok, nil),
		signing.Sign("/f", signing.OpRead, "root", tok, nil),
		signing.Sign("/g", signing.OpRead, "", tok, nil),
		signing.Sign("/f", signing.OpRead, "", []byte("u"), nil),
	} {
		if other == base {
			t.Fatalf("different inputs gave the same signature %s", base)
		}
	}
	if len(base) != 3+43 {
		t.Fatalf("signature %q has length %d, want 46", base, len(base))
	}
}

func ExampleSign() {
	exp := int64(1767225600)
	fmt.Println(signing.Sign("/path/to/resource.txt", signing.OpRead, "user", []byte("secret-access-token"), &exp))
	// Output: v1_xP7uRSsxABJbGsHbF2oI+1KtSGduFq3p0nc9KKValmM
}
