package files

import (
	"strings"
	"testing"
)

func TestPartDisposition(t *testing.T) {
	cases := []struct {
		header, name, filename string
		has                    bool
	}{
		{`form-data; name="file"; filename="upload"`, "file", "upload", true},
		{`form-data; name="file"; filename="/home/user/dir/a b.txt"`, "file", "/home/user/dir/a b.txt", true},
		{`form-data; name="file"; filename="rel/dir/x"`, "file", "rel/dir/x", true},
		{`form-data; name=file; filename=/tmp/unquoted/path.txt`, "file", "/tmp/unquoted/path.txt", true},
		{`form-data; name="file"; filename*=utf-8''%E6%96%87%E6%A1%A3.pdf`, "file", "文档.pdf", true},
		{`form-data; name=file; filename*=UTF-8''%2Ftmp%2F%E6%96%87; x=/y`, "file", "/tmp/文", true},
		{`form-data; name="file"; filename="a\"b.txt"`, "file", `a"b.txt`, true},
		{`form-data; name="file"`, "file", "", false},
		{`form-data; name="other"; filename="x"`, "other", "x", true},
		{`form-data; name="file"; filename=""`, "file", "", true},
		{``, "", "", false},
	}
	for _, c := range cases {
		name, fn, has := partDisposition(c.header)
		if name != c.name || fn != c.filename || has != c.has {
			t.Errorf("%s: got %q %q %v", c.header, name, fn, has)
		}
	}
}

func FuzzPartDisposition(f *testing.F) {
	for _, s := range []string{
		`form-data; name="file"; filename="upload"`,
		`form-data; name=file; filename=/a/b`,
		`form-data; name="file"; filename*=utf-8''%41%zz`,
		`form-data; name="file; filename="x\`,
		`;;=;"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		name, fn, has := partDisposition(h)
		if !has && fn != "" {
			t.Fatalf("filename %q without hasFilename", fn)
		}
		// What the parser returns comes from the header (modulo decoding);
		// it never invents a form name "file" out of nothing.
		if name == "file" && !strings.Contains(strings.ToLower(h), "file") {
			t.Fatalf("name file from %q", h)
		}
	})
}
