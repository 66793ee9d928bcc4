package files

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/envd/envd/internal/fsops"
)

// Metadata limits (spec http.md §12.6): an xattr name is at most 255 bytes,
// of which the "user.e2b." prefix takes 9; Linux bounds one file's xattr
// space on ext4 to about a block, hence the 4 KiB total.
const (
	metadataHeaderPrefix = "x-metadata-"
	MaxMetadataKey       = 255 - len(fsops.MetadataPrefix)
	MaxMetadataTotal     = 4096
)

// MetadataFromHeader collects the X-Metadata-* headers of an upload: key =
// the rest of the header name lower-cased, value = the header's first value.
// Empty keys are ignored. The result is validated; nil when there is none.
func MetadataFromHeader(h http.Header) (map[string]string, error) {
	var out map[string]string
	for name, values := range h {
		if len(name) < len(metadataHeaderPrefix) || !strings.EqualFold(name[:len(metadataHeaderPrefix)], metadataHeaderPrefix) {
			continue
		}
		key := strings.ToLower(name[len(metadataHeaderPrefix):])
		if key == "" || len(values) == 0 {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		// Header maps are keyed canonically; two spellings of one name can
		// only meet here when built by hand. The first (in key order) wins.
		if _, dup := out[key]; !dup {
			out[key] = values[0]
		}
	}
	if err := ValidateMetadata(out); err != nil {
		return nil, err
	}
	return out, nil
}

// ValidateMetadata checks keys and values: printable US-ASCII only, keys of
// at most MaxMetadataKey bytes, and at most MaxMetadataTotal bytes in total
// counting each entry as prefix + key + value.
func ValidateMetadata(md map[string]string) error {
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	slices.Sort(keys) // deterministic error for the same input
	total := 0
	for _, k := range keys {
		v := md[k]
		if k == "" {
			return errors.New("empty key")
		}
		if !printableASCII(k) {
			return fmt.Errorf("key %q contains characters outside printable ASCII", k)
		}
		if len(k) > MaxMetadataKey {
			return fmt.Errorf("key %q is longer than %d bytes", k, MaxMetadataKey)
		}
		if !printableASCII(v) {
			return fmt.Errorf("value of key %q contains characters outside printable ASCII", k)
		}
		total += len(fsops.MetadataPrefix) + len(k) + len(v)
	}
	if total > MaxMetadataTotal {
		return fmt.Errorf("total size %d bytes exceeds %d bytes", total, MaxMetadataTotal)
	}
	return nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
