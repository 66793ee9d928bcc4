package processrpc

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/envd/envd/internal/process"
)

// Headers of the opt-in replay (docs/processes.md).
const (
	// ReplayFromHeader (request, Connect): the offset per stream up to
	// which the client already has the output, "stdout=<n>,stderr=<m>" or
	// "pty=<n>"; a stream it does not name counts as 0.
	ReplayFromHeader = "Envd-Replay-From"
	// OutputOffsetHeader (response, Start and replaying Connect): the
	// offset per stream of the first byte the stream delivers.
	OutputOffsetHeader = "Envd-Output-Offset"
	// ReplayGapHeader (response, replaying Connect): bytes per stream that
	// were asked for but are no longer retained; absent when none.
	ReplayGapHeader = "Envd-Replay-Gap"
)

var streamNames = map[string]process.Stream{
	"stdout": process.Stdout,
	"stderr": process.Stderr,
	"pty":    process.PTY,
}

// parseOffsets reads "name=<uint64>" items separated by commas; blanks
// around items are allowed, each stream at most once, an empty value names
// none.
func parseOffsets(v string) (process.Offsets, error) {
	var out process.Offsets
	var seen [len(process.Offsets{})]bool
	if strings.TrimSpace(v) == "" {
		return out, nil
	}
	for _, item := range strings.Split(v, ",") {
		name, num, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok {
			return out, fmt.Errorf("%q is not <stream>=<offset>", strings.TrimSpace(item))
		}
		s, known := streamNames[strings.TrimSpace(name)]
		if !known {
			return out, fmt.Errorf("unknown stream %q (want stdout, stderr or pty)", strings.TrimSpace(name))
		}
		if seen[s] {
			return out, fmt.Errorf("stream %s given twice", s)
		}
		n, err := strconv.ParseUint(strings.TrimSpace(num), 10, 64)
		if err != nil {
			return out, fmt.Errorf("offset of %s: %q is not a non-negative integer", s, strings.TrimSpace(num))
		}
		seen[s], out[s] = true, n
	}
	return out, nil
}

// formatOffsets writes the streams of a process: "pty=<n>" for a terminal,
// "stdout=<n>,stderr=<m>" otherwise. With onlyNonZero, zero entries are
// left out (the gap header).
func formatOffsets(o process.Offsets, pty, onlyNonZero bool) string {
	streams := []process.Stream{process.Stdout, process.Stderr}
	if pty {
		streams = []process.Stream{process.PTY}
	}
	var parts []string
	for _, s := range streams {
		if onlyNonZero && o[s] == 0 {
			continue
		}
		parts = append(parts, s.String()+"="+strconv.FormatUint(o[s], 10))
	}
	return strings.Join(parts, ",")
}
