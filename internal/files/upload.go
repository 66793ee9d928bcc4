package files

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"path/filepath"
	"strings"

	"github.com/envd/envd/internal/fsops"
)

// Upload is one POST /files request whose user, encoding and metadata were
// already checked (spec http.md §12.2 steps 1–5).
type Upload struct {
	Owner         Owner
	Metadata      map[string]string
	ContentLength int64
	// Resolve turns a requested path into the path to write, for the
	// request's user (identity.ExpandAndResolve).
	Resolve func(path string) (string, error)
	// Watchers are told about the commits and waited for before Raw and
	// Multipart return (spec D17); nil: none.
	Watchers fsops.Observer
	Log      *slog.Logger
	// Staging, when set, registers each staging file while it exists.
	Staging Staging
}

// settleEvery bounds what one multipart request holds for its watchers:
// after this many recorded changes, the request waits for its watchers
// before it writes the next file, instead of once at its end.
const settleEvery = 64

// Raw writes an application/octet-stream body to path (spec http.md §12.3).
// It returns once the watchers have the write's events.
func (u *Upload) Raw(ctx context.Context, body io.Reader, path string) ([]Written, error) {
	if path == "" {
		return nil, errorf(KindBadRequest, nil, "path query parameter is required for raw body upload")
	}
	target, err := u.Resolve(path)
	if err != nil {
		return nil, errorf(KindBadRequest, err, "error resolving path: %v", err)
	}
	ch := fsops.NewChanges(u.Watchers)
	defer ch.Settle(ctx)
	if err := u.write(target, body, ch); err != nil {
		return nil, err
	}
	return []Written{written(target)}, nil
}

// Multipart writes every part named "file" of a multipart body with the
// given boundary, in order, each before the next part is read (spec
// http.md §12.4). Files completed before a failure stay. It returns once
// the watchers have the events of every file written.
func (u *Upload) Multipart(ctx context.Context, body io.Reader, boundary string, queryPath string) ([]Written, error) {
	ch := fsops.NewChanges(u.Watchers)
	defer ch.Settle(ctx)
	tail := &tailReader{r: body}
	mr := multipart.NewReader(tail, boundary)
	out := []Written{}
	for first := true; ; first = false {
		part, err := mr.NextPart()
		if err == io.EOF && !tail.ended(boundary) {
			// multipart reports a body cut inside a part's headers as a
			// bare EOF, like the closing boundary; tell them apart.
			err = fmt.Errorf("multipart: NextPart: %w", io.ErrUnexpectedEOF)
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			if first {
				return nil, errorf(KindInternal, err, "error parsing multipart form: %v", err)
			}
			return nil, errorf(KindInternal, err, "error reading form: %v", err)
		}
		name, filename, hasFilename := partDisposition(part.Header.Get("Content-Disposition"))
		if name != "file" {
			continue // NextPart discards the rest of this part
		}
		requested := queryPath
		if requested == "" {
			if !hasFilename {
				return nil, errorf(KindBadRequest, nil, "error getting multipart custom part file name: filename not found in Content-Disposition header")
			}
			requested = filename
		}
		target, err := u.Resolve(requested)
		if err != nil {
			return nil, errorf(KindBadRequest, err, "error resolving path: %v", err)
		}
		if err := duplicate(out, target); err != nil {
			return nil, err
		}
		if err := u.write(target, part, ch); err != nil {
			return nil, err
		}
		out = append(out, written(target))
		if ch.Pending() >= settleEvery {
			ch.Settle(ctx)
		}
	}
}

func (u *Upload) write(target string, body io.Reader, ch *fsops.Changes) error {
	return Write(WriteRequest{
		Changes:       ch,
		Target:        target,
		Body:          body,
		Owner:         u.Owner,
		Metadata:      u.Metadata,
		ContentLength: u.ContentLength,
		Log:           u.Log,
		Staging:       u.Staging,
	})
}

// duplicate refuses a second part for a path already written by this
// request; the message lists the other files written when there are at
// least two of them (spec http.md §12.4). Paths are compared cleaned:
// "/a//b" and "/a/./b" are the file "/a/b".
func duplicate(done []Written, target string) error {
	seen := false
	var others []string
	clean := filepath.Clean(target)
	for _, w := range done {
		if filepath.Clean(w.Path) == clean {
			seen = true
		} else {
			others = append(others, w.Path)
		}
	}
	if !seen {
		return nil
	}
	msg := "you cannot upload multiple files to the same path '" + target +
		"' in one upload request, only the first specified file was uploaded"
	if len(others) >= 2 {
		msg += ", also the following files were uploaded: " + strings.Join(others, ", ")
	}
	return &Error{Kind: KindBadRequest, Msg: msg}
}

// tailKeep bounds what tailReader remembers: the closing delimiter and a
// short epilogue fit.
const tailKeep = 4096

// tailReader remembers the last bytes of a multipart body, to check that it
// ended with the closing delimiter.
type tailReader struct {
	r    io.Reader
	tail []byte
}

func (t *tailReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		t.tail = append(t.tail, p[:n]...)
		if len(t.tail) > 2*tailKeep {
			t.tail = append(t.tail[:0], t.tail[len(t.tail)-tailKeep:]...)
		}
	}
	return n, err
}

// ended reports whether the closing delimiter "--boundary--" was read.
func (t *tailReader) ended(boundary string) bool {
	return bytes.Contains(t.tail, []byte("--"+boundary+"--"))
}
