package api

import (
	"compress/gzip"
	"errors"
	"io"
	"mime"
	"net/http"
	"path/filepath"
	"strings"

	"github.com/envd/envd/internal/auth"
	"github.com/envd/envd/internal/files"
	"github.com/envd/envd/internal/httperror"
	"github.com/envd/envd/internal/identity"
)

// downloadChunk is the read size when envd streams a file itself.
const downloadChunk = 64 << 10

// download serves GET and HEAD /files (spec http.md §10.2).
func (f *Files) download(w http.ResponseWriter, r *http.Request) {
	if e := f.Token.CheckFileRequest(r, auth.OpRead, f.now()); e != nil {
		httperror.WriteError(w, e)
		return
	}
	q := r.URL.Query()
	rawPath := firstValue(q, "path")
	name, herr := f.userName(firstValue(q, "username"))
	if herr != nil {
		httperror.WriteError(w, herr)
		return
	}
	u, herr := lookupUser(name)
	if herr != nil {
		httperror.WriteError(w, herr)
		return
	}
	resolved, err := identity.ExpandAndResolve(rawPath, u, f.Env.DefaultWorkdir())
	if err != nil {
		httperror.Write(w, http.StatusBadRequest, "error expanding and resolving path '"+rawPath+"': "+err.Error())
		return
	}
	if _, err := files.StatDownload(resolved); err != nil {
		writeFileError(w, err)
		return
	}
	accept := files.ParseAcceptEncoding(strings.Join(r.Header.Values("Accept-Encoding"), ","))
	coding, err := accept.Select()
	if err != nil {
		httperror.Write(w, http.StatusNotAcceptable, "error parsing Accept-Encoding: "+err.Error())
		return
	}
	if forcesIdentity(r.Header) {
		if accept.IdentityRejected() {
			httperror.Write(w, http.StatusNotAcceptable, "identity encoding not acceptable for Range or conditional request")
			return
		}
		coding = files.Identity
	}
	d, err := files.OpenDownload(resolved)
	if err != nil {
		writeFileError(w, err)
		return
	}
	defer d.Close()

	h := w.Header()
	h.Set("Vary", "Accept-Encoding")
	// A file served inline must never run as a page of envd's origin: a
	// guest process can write any HTML it likes, and a script served from
	// envd could call envd with the browser's same-origin rights (D18).
	h.Set("Content-Security-Policy", "sandbox")
	h.Set("X-Content-Type-Options", "nosniff")
	if cd := mime.FormatMediaType("inline", map[string]string{"filename": filepath.Base(resolved)}); cd != "" {
		h.Set("Content-Disposition", cd)
	}
	switch {
	case coding == files.Gzip:
		f.serveGzip(w, r, d, rawPath)
	case d.Sized:
		http.ServeContent(w, r, rawPath, d.Info.ModTime(), d.File)
	default:
		f.serveUnsized(w, r, d, rawPath)
	}
}

// forcesIdentity: Range and the conditionals E2B lists need the identity
// representation (If-Match and If-Unmodified-Since are honoured by
// ServeContent but do not force it).
func forcesIdentity(h http.Header) bool {
	for _, k := range []string{"Range", "If-Modified-Since", "If-None-Match", "If-Range"} {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}

func typeByExtension(rawPath string) string {
	return mime.TypeByExtension(filepath.Ext(rawPath))
}

// serveGzip compresses the file while streaming it: no length, no ranges.
// BestSpeed keeps compression from becoming the bottleneck of the Wrenn
// host's downloads, which always negotiate gzip.
func (f *Files) serveGzip(w http.ResponseWriter, r *http.Request, d *files.Download, rawPath string) {
	h := w.Header()
	ct := typeByExtension(rawPath)
	if ct == "" {
		ct = "application/octet-stream"
	}
	h.Set("Content-Type", ct)
	h.Set("Content-Encoding", "gzip")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	// Headers go out now: the length is unknown whatever the file's size,
	// and a large file must not delay the response headers.
	_ = http.NewResponseController(w).Flush()
	gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if !f.stream(gz, d, r) {
		return
	}
	if err := gz.Close(); err != nil {
		f.Log.Debug("download ended early", "path", d.File.Name(), "error", err.Error())
	}
}

// serveUnsized streams a pseudo-file to EOF with 200 and no length; Range
// and conditionals are ignored (spec http.md §10.2 step 10).
func (f *Files) serveUnsized(w http.ResponseWriter, r *http.Request, d *files.Download, rawPath string) {
	ct := typeByExtension(rawPath)
	var head []byte
	if ct == "" {
		buf := make([]byte, 512)
		n, err := io.ReadFull(d.File, buf)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			writeFileError(w, &files.Error{Kind: files.KindInternal, Msg: "error reading file '" + d.File.Name() + "': " + err.Error(), Err: err})
			return
		}
		head = buf[:n]
		ct = http.DetectContentType(head)
	}
	w.Header().Set("Content-Type", ct)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	// No length, even for a short file: its size is not known up front.
	_ = http.NewResponseController(w).Flush()
	if len(head) > 0 {
		if _, err := w.Write(head); err != nil {
			return
		}
	}
	f.stream(w, d, r)
}

// stream copies the file to dst. A write error means the client is gone. A
// read error after the headers went out aborts the response so the client
// sees a truncated transfer, not a complete-looking one.
func (f *Files) stream(dst io.Writer, d *files.Download, r *http.Request) bool {
	buf := make([]byte, downloadChunk)
	for {
		n, rerr := d.File.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				f.Log.Debug("download ended early", "path", d.File.Name(), "error", werr.Error())
				return false
			}
		}
		if rerr == io.EOF {
			return true
		}
		if rerr != nil {
			f.Log.Error("download failed while streaming; closing the connection", "path", d.File.Name(), "error", rerr.Error())
			panic(http.ErrAbortHandler)
		}
	}
}
