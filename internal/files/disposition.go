package files

import (
	"mime"
	"net/url"
	"strings"
)

// partDisposition extracts the form name and the filename of a multipart
// part from its Content-Disposition header. The filename is kept as given,
// directories included (multipart.Part.FileName would reduce it to its base
// name). filename* (RFC 2231) wins over filename. Clients that send paths
// unquoted (filename=/home/user/a.txt) produce a header mime.ParseMediaType
// rejects, so a lenient parser takes over when the strict one fails.
func partDisposition(header string) (name, filename string, hasFilename bool) {
	if _, params, err := mime.ParseMediaType(header); err == nil {
		filename, hasFilename = params["filename"]
		return params["name"], filename, hasFilename
	}
	params := lenientParams(header)
	if v, ok := params["filename*"]; ok {
		if dec, ok := decodeRFC2231(v); ok {
			return params["name"], dec, true
		}
	}
	filename, hasFilename = params["filename"]
	return params["name"], filename, hasFilename
}

// lenientParams splits "type; k=v; k="quoted \" v"" into lower-cased keys
// and values, accepting any unquoted value up to the next ";". The first
// occurrence of a key wins.
func lenientParams(header string) map[string]string {
	out := map[string]string{}
	s := header
	// Skip the disposition type.
	if i := strings.IndexByte(s, ';'); i >= 0 {
		s = s[i+1:]
	} else {
		return out
	}
	for len(s) > 0 {
		s = strings.TrimLeft(s, " \t;")
		eq := strings.IndexByte(s, '=')
		semi := strings.IndexByte(s, ';')
		if eq < 0 || (semi >= 0 && semi < eq) {
			// A parameter without a value: skip it.
			if semi < 0 {
				break
			}
			s = s[semi+1:]
			continue
		}
		key := strings.ToLower(strings.TrimSpace(s[:eq]))
		s = strings.TrimLeft(s[eq+1:], " \t")
		var val string
		if strings.HasPrefix(s, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(s); i++ {
				c := s[i]
				if c == '\\' && i+1 < len(s) {
					i++
					b.WriteByte(s[i])
					continue
				}
				if c == '"' {
					break
				}
				b.WriteByte(c)
			}
			val = b.String()
			if i < len(s) {
				s = s[i+1:]
			} else {
				s = ""
			}
			if j := strings.IndexByte(s, ';'); j >= 0 {
				s = s[j+1:]
			} else {
				s = ""
			}
		} else {
			if j := strings.IndexByte(s, ';'); j >= 0 {
				val, s = s[:j], s[j+1:]
			} else {
				val, s = s, ""
			}
			val = strings.TrimRight(val, " \t")
		}
		if key == "" {
			continue
		}
		if _, dup := out[key]; !dup {
			out[key] = val
		}
	}
	return out
}

// decodeRFC2231 decodes charset'language'percent-encoded-value for UTF-8 and
// US-ASCII charsets.
func decodeRFC2231(v string) (string, bool) {
	parts := strings.SplitN(v, "'", 3)
	if len(parts) != 3 {
		return "", false
	}
	switch strings.ToLower(parts[0]) {
	case "utf-8", "us-ascii", "":
	default:
		return "", false
	}
	dec, err := url.PathUnescape(parts[2])
	if err != nil {
		return "", false
	}
	return dec, true
}
