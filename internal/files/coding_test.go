package files

import (
	"errors"
	"testing"
)

// Every example of spec http.md §11.1.
func TestAcceptEncoding_SpecExamples(t *testing.T) {
	cases := []struct {
		header     string
		want       Coding
		rejected   bool // 406
		noIdentity bool // identity rejected: a Range or conditional request gets 406
	}{
		{"", Identity, false, false},
		{"gzip", Gzip, false, false},
		{"gzip, deflate, br", Gzip, false, false},
		{"gzip;q=0.5, identity", Identity, false, false},
		{"br", Identity, false, false},
		{"br, identity;q=0", Identity, true, false},
		{"*", Identity, false, false},
		{"*, identity;q=0", Gzip, false, true},
		{"identity;q=0, gzip;q=0", Identity, true, false},
		{"gzip;q=1, *;q=0", Gzip, false, true},
		// More: case, spaces, stable order, q parsing.
		{"GZIP", Gzip, false, false},
		{" identity ; q=0.9 , gzip ; Q=0.8", Identity, false, false},
		{"deflate, gzip;q=0.1", Gzip, false, false},
		{"gzip;q=abc", Gzip, false, false},
		{"gzip;q=0", Identity, false, false},
		{"*;q=0", Identity, true, false},
		{"*;q=0, identity;q=0.1", Identity, false, false},
		{"identity, gzip", Identity, false, false},
		{"gzip, identity", Gzip, false, false},
		{"x;q=0.9, gzip;q=0.2, identity;q=0.1", Gzip, false, false},
		{",,", Identity, false, false},
	}
	for _, c := range cases {
		a := ParseAcceptEncoding(c.header)
		got, err := a.Select()
		if c.rejected {
			if !errors.Is(err, ErrNoAcceptableEncoding) {
				t.Errorf("%q: want 406, got %v %v", c.header, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: got %v %v, want %v", c.header, got, err, c.want)
		}
		if a.IdentityRejected() != c.noIdentity {
			t.Errorf("%q: identity rejected = %v, want %v", c.header, a.IdentityRejected(), c.noIdentity)
		}
	}
}

func FuzzAcceptEncoding(f *testing.F) {
	for _, s := range []string{"", "gzip", "gzip;q=0.5, identity", "*, identity;q=0", "identity;q=0, gzip;q=0", "a;q=NaN, b;q=-1, *;q=1e999", ";;;,=,q="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		a := ParseAcceptEncoding(h)
		c, err := a.Select()
		if err != nil {
			if !a.IdentityRejected() {
				t.Fatalf("%q: 406 although identity is acceptable", h)
			}
			return
		}
		if c == Identity && a.IdentityRejected() {
			t.Fatalf("%q: identity chosen although rejected", h)
		}
		if c != Identity && c != Gzip {
			t.Fatalf("%q: coding %v", h, c)
		}
	})
}

func TestContentEncoding(t *testing.T) {
	for _, c := range []struct {
		h    string
		want Coding
		ok   bool
	}{
		{"", Identity, true}, {"identity", Identity, true}, {"gzip", Gzip, true}, {" GZip ; x=y", Gzip, true},
		{"IDENTITY", Identity, true}, {"br", 0, false}, {"gzip, br", 0, false}, {";", 0, false}, {"x-gzip", 0, false},
	} {
		got, err := ParseContentEncoding(c.h)
		if c.ok != (err == nil) || (c.ok && got != c.want) {
			t.Errorf("%q: %v %v", c.h, got, err)
		}
		if !c.ok && err.Error() != "unsupported Content-Encoding: "+c.h+", supported: [gzip]" {
			t.Errorf("%q: message %q", c.h, err)
		}
	}
}
