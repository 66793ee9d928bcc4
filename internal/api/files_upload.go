package api

import (
	"compress/gzip"
	"errors"
	"io"
	"mime"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/envd/envd/internal/auth"
	"github.com/envd/envd/internal/files"
	"github.com/envd/envd/internal/httperror"
	"github.com/envd/envd/internal/identity"
)

// upload serves POST /files (spec http.md §12.2).
func (f *Files) upload(w http.ResponseWriter, r *http.Request) {
	if e := f.Token.CheckFileRequest(r, auth.OpWrite, f.now()); e != nil {
		httperror.WriteError(w, e)
		return
	}
	q := r.URL.Query()
	name, herr := f.userName(firstValue(q, "username"))
	if herr != nil {
		httperror.WriteError(w, herr)
		return
	}
	coding, err := files.ParseContentEncoding(r.Header.Get("Content-Encoding"))
	if err != nil {
		httperror.Write(w, http.StatusBadRequest, "error decompressing request body: "+err.Error())
		return
	}
	u, herr := lookupUser(name)
	if herr != nil {
		httperror.WriteError(w, herr)
		return
	}
	md, err := files.MetadataFromHeader(r.Header)
	if err != nil {
		httperror.Write(w, http.StatusBadRequest, "invalid metadata: "+err.Error())
		return
	}
	ct := r.Header.Get("Content-Type")
	mediaType, params, ctErr := mime.ParseMediaType(ct)
	raw := mediaType == "application/octet-stream"
	multi := strings.HasPrefix(mediaType, "multipart/")
	if !raw && !multi {
		httperror.Write(w, http.StatusBadRequest, "unsupported content type: "+ct+", expected multipart/form-data or application/octet-stream")
		return
	}

	var body io.Reader = &stallReader{r: r.Body, rc: http.NewResponseController(w), timeout: f.stall()}
	if coding == files.Gzip {
		gz, err := gzip.NewReader(body)
		if err != nil {
			httperror.Write(w, http.StatusBadRequest, "error decompressing request body: failed to create gzip reader: "+err.Error())
			return
		}
		defer gz.Close()
		body = gz
	}
	workdir := f.Env.DefaultWorkdir()
	up := &files.Upload{
		Owner:         owner(u),
		Metadata:      md,
		ContentLength: r.ContentLength,
		Resolve:       func(p string) (string, error) { return identity.ExpandAndResolve(p, u, workdir) },
		Watchers:      f.Watchers,
		Log:           f.Log,
		Staging:       f.Staging,
	}
	var written []files.Written
	if raw {
		written, err = up.Raw(r.Context(), body, firstValue(q, "path"))
	} else {
		boundary := params["boundary"]
		if boundary == "" {
			detail := "no multipart boundary param in Content-Type"
			if ctErr != nil {
				detail = ctErr.Error()
			}
			httperror.Write(w, http.StatusInternalServerError, "error parsing multipart form: "+detail)
			return
		}
		written, err = up.Multipart(r.Context(), body, boundary, firstValue(q, "path"))
	}
	if err != nil {
		var fe *files.Error
		if errors.As(err, &fe) && fe.Kind != files.KindBadRequest {
			f.Log.Warn("upload failed", "path", r.URL.Path, "user", u.Name, "error", fe.Msg)
		}
		writeFileError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, written)
}

// stallReader gives up on a body that delivers nothing for timeout: the
// server has no read timeout (transfers are unbounded), so without this a
// connected but silent client would hold the upload open forever. The read
// deadline is pushed forward only when a hundredth of the timeout passed
// since it was last set, not on every read: the client may then be silent
// for 99–100% of the timeout before it is cut off.
type stallReader struct {
	r       io.Reader
	rc      *http.ResponseController
	timeout time.Duration
	armed   time.Time
	off     bool // the connection does not support deadlines
}

func (s *stallReader) Read(p []byte) (int, error) {
	if !s.off {
		if now := time.Now(); now.Sub(s.armed) >= s.timeout/100 {
			if err := s.rc.SetReadDeadline(now.Add(s.timeout)); err != nil {
				s.off = true
			}
			s.armed = now
		}
	}
	n, err := s.r.Read(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return n, &files.StallError{After: s.timeout}
	}
	return n, err
}
