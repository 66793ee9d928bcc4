package files

import (
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Coding is a content coding envd can produce or accept.
type Coding int

// Codings.
const (
	Identity Coding = iota
	Gzip
)

func (c Coding) String() string {
	if c == Gzip {
		return "gzip"
	}
	return "identity"
}

// ErrNoAcceptableEncoding: the client's Accept-Encoding rules out both gzip
// and identity.
var ErrNoAcceptableEncoding = errors.New("no acceptable encoding found, supported: [gzip]")

// AcceptEncoding is a parsed Accept-Encoding header (spec http.md §11.1).
type AcceptEncoding struct {
	items []acceptItem
}

type acceptItem struct {
	coding string
	q      float64
}

// ParseAcceptEncoding parses the header value (several header lines joined
// by ","). Items are split on ","; the coding is the part before ";",
// trimmed and lower-cased; a "q=" parameter gives the quality, 1 when absent
// or unparseable.
func ParseAcceptEncoding(header string) AcceptEncoding {
	var a AcceptEncoding
	if strings.TrimSpace(header) == "" {
		return a
	}
	for _, raw := range strings.Split(header, ",") {
		parts := strings.Split(strings.TrimSpace(raw), ";")
		it := acceptItem{coding: strings.ToLower(strings.TrimSpace(parts[0])), q: 1}
		for _, p := range parts[1:] {
			p = strings.TrimSpace(p)
			if len(p) >= 2 && strings.EqualFold(p[:2], "q=") {
				if q, err := strconv.ParseFloat(strings.TrimSpace(p[2:]), 64); err == nil && !math.IsNaN(q) {
					it.q = q
				}
				break
			}
		}
		a.items = append(a.items, it)
	}
	return a
}

// IdentityRejected: an "identity" item with q=0, or a "*" item with q=0 and
// no "identity" item with q>0.
func (a AcceptEncoding) IdentityRejected() bool {
	starZero, identityOK := false, false
	for _, it := range a.items {
		switch it.coding {
		case "identity":
			if it.q <= 0 {
				return true
			}
			identityOK = true
		case "*":
			if it.q <= 0 {
				starZero = true
			}
		}
	}
	return starZero && !identityOK
}

// Select picks the response coding: the highest-quality acceptable item
// (stable for equal qualities) that envd supports; identity when nothing
// matched, unless identity is rejected (ErrNoAcceptableEncoding).
func (a AcceptEncoding) Select() (Coding, error) {
	if len(a.items) == 0 {
		return Identity, nil
	}
	rejected := a.IdentityRejected()
	sorted := slices.Clone(a.items)
	slices.SortStableFunc(sorted, func(x, y acceptItem) int {
		switch {
		case x.q > y.q:
			return -1
		case x.q < y.q:
			return 1
		}
		return 0
	})
	for _, it := range sorted {
		if it.q <= 0 {
			continue
		}
		switch it.coding {
		case "identity":
			return Identity, nil
		case "*":
			if rejected {
				return Gzip, nil
			}
			return Identity, nil
		case "gzip":
			return Gzip, nil
		}
	}
	if rejected {
		return Identity, ErrNoAcceptableEncoding
	}
	return Identity, nil
}

// ParseContentEncoding reads an upload's Content-Encoding (spec http.md
// §11.2): absent or empty is identity; otherwise the value before any ";".
func ParseContentEncoding(header string) (Coding, error) {
	if strings.TrimSpace(header) == "" {
		return Identity, nil
	}
	v, _, _ := strings.Cut(header, ";")
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "identity":
		return Identity, nil
	case "gzip":
		return Gzip, nil
	}
	return Identity, errors.New("unsupported Content-Encoding: " + header + ", supported: [gzip]")
}
