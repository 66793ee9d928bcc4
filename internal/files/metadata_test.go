package files

import (
	"net/http"
	"strings"
	"testing"
)

func TestMetadataFromHeader(t *testing.T) {
	h := http.Header{}
	h.Add("X-Metadata-Owner", "team a")
	h.Add("X-Metadata-Owner", "ignored second value")
	h["x-metadata-Lower"] = []string{"v"}
	h.Add("X-Metadata-", "empty key ignored")
	h.Add("X-Other", "x")
	md, err := MetadataFromHeader(h)
	if err != nil {
		t.Fatal(err)
	}
	if len(md) != 2 || md["owner"] != "team a" || md["lower"] != "v" {
		t.Fatalf("%v", md)
	}
	if md, err := MetadataFromHeader(http.Header{"X-Other": {"1"}}); err != nil || md != nil {
		t.Fatalf("no metadata: %v %v", md, err)
	}
}

func TestValidateMetadata_Limits(t *testing.T) {
	ok := []map[string]string{
		nil,
		{"k": ""},
		{strings.Repeat("k", 246): "v"},
		{"a": strings.Repeat("v", 4096-9-1)},
		{"printable": " !~"},
	}
	for _, md := range ok {
		if err := ValidateMetadata(md); err != nil {
			t.Errorf("%v: %v", md, err)
		}
	}
	bad := []map[string]string{
		{strings.Repeat("k", 247): "v"},
		{"a": strings.Repeat("v", 4096-9)},
		{"a": "x\ty"},
		{"a": "caf\u00e9"},
		{"k\x7f": "v"},
		{"": "v"},
		{"a": strings.Repeat("v", 2000), "b": strings.Repeat("v", 2000), "c": strings.Repeat("v", 80)},
	}
	for _, md := range bad {
		if err := ValidateMetadata(md); err == nil {
			t.Errorf("%v accepted", md)
		}
	}
}

func FuzzMetadataHeaders(f *testing.F) {
	f.Add("X-Metadata-Key", "value", "X-Metadata-Other", "v2")
	f.Add("x-metadata-", "", "X-METADATA-A", "\x00")
	f.Add("X-Metadata-"+strings.Repeat("k", 250), "v", "X-Metadata-b", strings.Repeat("v", 5000))
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		h := http.Header{}
		h[k1] = []string{v1}
		h[k2] = append(h[k2], v2)
		md, err := MetadataFromHeader(h)
		if err != nil {
			return
		}
		total := 0
		for k, v := range md {
			if k == "" || k != strings.ToLower(k) || len(k) > MaxMetadataKey || !printableASCII(k) || !printableASCII(v) {
				t.Fatalf("accepted %q=%q", k, v)
			}
			total += 9 + len(k) + len(v)
		}
		if total > MaxMetadataTotal {
			t.Fatalf("accepted %d bytes", total)
		}
	})
}
