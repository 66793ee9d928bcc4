package fsops

import (
	"strings"
	"unicode/utf8"
)

// MetadataPrefix namespaces file metadata among extended attributes. It is
// E2B's, so metadata written by E2B tooling stays readable (spec http.md
// §12.6).
const MetadataPrefix = "user.e2b."

// ReadMetadata returns the user.e2b.* attributes of p (following symlinks),
// prefix stripped. Entries whose key or value is not valid UTF-8 are
// skipped; a filesystem without extended attributes, or any read error,
// yields no metadata.
func ReadMetadata(p string) map[string]string {
	names := listXattrs(p)
	var out map[string]string
	for _, name := range names {
		key, ok := strings.CutPrefix(name, MetadataPrefix)
		if !ok || key == "" || !utf8.ValidString(key) {
			continue
		}
		val, ok := getXattr(p, name)
		if !ok || !utf8.Valid(val) {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[key] = string(val)
	}
	return out
}
