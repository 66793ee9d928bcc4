package client

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"connectrpc.com/connect"

	"github.com/envd/envd/client/signing"
)

// WrittenFile describes a file envd wrote (upload or compose).
type WrittenFile struct {
	Name     string            `json:"name"`
	Path     string            `json:"path"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// Progress is called as a transfer advances with the number of file bytes
// transferred so far and the total, or -1 when the total is not known. It
// is called from the goroutine doing the transfer and must not block.
type Progress func(done, total int64)

// UploadOptions configure Upload and UploadFiles. The zero value sends the
// content as-is in a raw application/octet-stream body.
type UploadOptions struct {
	// Gzip compresses the request body on the fly (Content-Encoding: gzip).
	Gzip bool
	// Multipart sends multipart/form-data instead of a raw body (what older
	// hosts send; UploadFiles always uses it).
	Multipart bool
	// Metadata is stored with the file as extended attributes (keys and
	// values printable ASCII; envd lower-cases keys). Each upload replaces
	// the file's whole metadata set.
	Metadata map[string]string
	// Size is the content length, if known (> 0). For a raw, uncompressed
	// upload it is sent as Content-Length; it is also the Progress total.
	Size int64
	// Progress, if set, reports the bytes read from the content.
	Progress Progress
}

// UploadFile is one file of UploadFiles.
type UploadFile struct {
	// Path is the target path; "~/" and relative paths resolve against the
	// user's home.
	Path string
	// Content is read until EOF.
	Content io.Reader
	// Size is the content length if known (> 0), for Progress.
	Size int64
}

// filesQuery builds the query of a /files request.
func (c *Client) filesQuery(path string) url.Values {
	q := url.Values{}
	if path != "" {
		q.Set("path", path)
	}
	if c.user != "" {
		q.Set("username", c.user)
	}
	return q
}

// Upload streams r into the file at path (POST /files), creating parent
// directories owned by the client's user. envd writes to a temporary file
// and renames it into place, so a failed upload leaves the previous content
// intact. The body is never buffered whole, on either side.
//
// If the request fails before r is exhausted, Upload waits for the
// goroutine that reads r until its current Read returns or ctx is done.
func (c *Client) Upload(ctx context.Context, path string, r io.Reader, opts *UploadOptions) (*WrittenFile, error) {
	var o UploadOptions
	if opts != nil {
		o = *opts
	}
	if path == "" {
		return nil, &Error{Op: "POST /files", Status: 400, Code: connect.CodeInvalidArgument, Message: "empty path"}
	}
	files := []UploadFile{{Path: path, Content: r, Size: o.Size}}
	written, err := c.upload(ctx, c.filesQuery(path), files, o, o.Multipart)
	if err != nil {
		return nil, err
	}
	if len(written) == 0 {
		return nil, &Error{Op: "POST /files", Status: 200, Code: connect.CodeInternal, Message: "envd reported no written file"}
	}
	return &written[0], nil
}

// UploadFiles uploads several files in one multipart request, each part
// named by its target path. Files written before a failing part are kept.
// opts.Size is ignored (each UploadFile has its own); opts.Multipart is
// implied.
func (c *Client) UploadFiles(ctx context.Context, files []UploadFile, opts *UploadOptions) ([]WrittenFile, error) {
	var o UploadOptions
	if opts != nil {
		o = *opts
	}
	return c.upload(ctx, c.filesQuery(""), files, o, true)
}

// WriteFile writes data to the file at path.
func (c *Client) WriteFile(ctx context.Context, path string, data []byte) (*WrittenFile, error) {
	return c.Upload(ctx, path, bytes.NewReader(data), &UploadOptions{Size: int64(len(data))})
}

func (c *Client) upload(ctx context.Context, q url.Values, files []UploadFile, o UploadOptions, multi bool) ([]WrittenFile, error) {
	const op = "POST /files"
	var total int64
	for _, f := range files {
		if f.Size <= 0 {
			total = -1
			break
		}
		total += f.Size
	}
	counter := &progressCounter{total: total, fn: o.Progress}

	hdr := http.Header{}
	for k, v := range o.Metadata {
		hdr.Set("X-Metadata-"+k, v)
	}
	if o.Gzip {
		hdr.Set("Content-Encoding", "gzip")
	}

	var body io.Reader
	var contentLength int64 = -1
	var wait func()
	switch {
	case !multi && !o.Gzip:
		hdr.Set("Content-Type", "application/octet-stream")
		body = counter.reader(files[0].Content)
		if o.Size > 0 {
			contentLength = o.Size
		}
	case !multi:
		hdr.Set("Content-Type", "application/octet-stream")
		body, wait = produceBody(ctx, func(w io.Writer) error {
			gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
			if _, err := io.Copy(gz, counter.reader(files[0].Content)); err != nil {
				return err
			}
			return gz.Close()
		})
	default:
		// The boundary must be known before the body is produced.
		mw := multipart.NewWriter(io.Discard)
		boundary := mw.Boundary()
		hdr.Set("Content-Type", "multipart/form-data; boundary="+boundary)
		body, wait = produceBody(ctx, func(w io.Writer) error {
			var gz *gzip.Writer
			if o.Gzip {
				gz, _ = gzip.NewWriterLevel(w, gzip.BestSpeed)
				w = gz
			}
			mw := multipart.NewWriter(w)
			if err := mw.SetBoundary(boundary); err != nil {
				return err
			}
			for _, f := range files {
				part, err := mw.CreateFormFile("file", f.Path)
				if err != nil {
					return err
				}
				if _, err := io.Copy(part, counter.reader(f.Content)); err != nil {
					return err
				}
			}
			if err := mw.Close(); err != nil {
				return err
			}
			if gz != nil {
				return gz.Close()
			}
			return nil
		})
	}
	if wait != nil {
		defer wait()
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/files?"+q.Encode(), body)
	if err != nil {
		return nil, &Error{Op: op, Code: connect.CodeInvalidArgument, Message: err.Error(), Err: err}
	}
	if contentLength > 0 {
		req.ContentLength = contentLength
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	c.setHeaders(req.Header, false, false)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, transportError(op, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, httpError(op, resp)
	}
	defer resp.Body.Close()
	var written []WrittenFile
	if err := json.NewDecoder(resp.Body).Decode(&written); err != nil {
		return nil, &Error{Op: op, Status: resp.StatusCode, Code: connect.CodeInternal, Message: "decoding response: " + err.Error(), Err: err}
	}
	return written, nil
}

// produceBody runs produce on a goroutine that writes a request body into a
// pipe. The returned wait closes the pipe (so a producer blocked on a write
// returns) and waits for the goroutine, or for ctx, whichever comes first:
// a producer blocked reading the caller's reader ends on its own when that
// Read returns.
func produceBody(ctx context.Context, produce func(io.Writer) error) (io.Reader, func()) {
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		var err error
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("envd client: panic producing upload body: %v", r)
			}
			_ = pw.CloseWithError(err)
		}()
		err = produce(pw)
	}()
	return pr, func() {
		_ = pr.CloseWithError(io.ErrClosedPipe)
		select {
		case <-done:
		case <-ctx.Done():
		}
	}
}

// progressCounter counts file bytes across the readers of one transfer.
type progressCounter struct {
	done  int64
	total int64
	fn    Progress
}

func (p *progressCounter) reader(r io.Reader) io.Reader {
	if p.fn == nil {
		return r
	}
	return &countingReader{r: r, p: p}
}

func (p *progressCounter) add(n int) {
	p.done += int64(n)
	p.fn(p.done, p.total)
}

type countingReader struct {
	r io.Reader
	p *progressCounter
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if n > 0 {
		c.p.add(n)
	}
	return n, err
}

// DownloadOptions configure OpenFile and Download.
type DownloadOptions struct {
	// Gzip asks envd to compress the transfer; the content is decompressed
	// on the fly. Worth it on slow links for compressible files.
	Gzip bool
	// Progress, if set, reports the (decompressed) bytes read.
	Progress Progress
}

// FileReader is the content of a file being downloaded. Close it when done.
type FileReader struct {
	body     io.ReadCloser
	r        io.Reader
	progress *progressCounter
	// Size is the file's length, or -1 when envd did not send it (gzip
	// transfers, files of pseudo filesystems).
	Size int64
	// ModTime is the file's modification time, if envd sent it.
	ModTime time.Time
	// ContentType is the media type envd derived from the name or content.
	ContentType string
}

// Read implements io.Reader.
func (f *FileReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 && f.progress.fn != nil {
		f.progress.add(n)
	}
	return n, err
}

// Close releases the connection.
func (f *FileReader) Close() error { return f.body.Close() }

// OpenFile starts downloading the file at path (GET /files) and returns its
// content as a stream.
func (c *Client) OpenFile(ctx context.Context, path string, opts *DownloadOptions) (*FileReader, error) {
	const op = "GET /files"
	var o DownloadOptions
	if opts != nil {
		o = *opts
	}
	hdr := http.Header{}
	// Set explicitly: the transport's own transparent gzip would hide the
	// size and the choice from the caller.
	if o.Gzip {
		hdr.Set("Accept-Encoding", "gzip")
	} else {
		hdr.Set("Accept-Encoding", "identity")
	}
	resp, err := c.do(ctx, op, http.MethodGet, "/files?"+c.filesQuery(path).Encode(), nil, hdr, http.StatusOK)
	if err != nil {
		return nil, err
	}
	f := &FileReader{body: resp.Body, r: resp.Body, Size: resp.ContentLength, ContentType: resp.Header.Get("Content-Type")}
	if t, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		f.ModTime = t
	}
	if resp.Header.Get("Content-Encoding") == "gzip" {
		gz, err := gzip.NewReader(resp.Body)
		if err != nil {
			resp.Body.Close()
			return nil, &Error{Op: op, Status: resp.StatusCode, Code: connect.CodeDataLoss, Message: "reading gzip stream: " + err.Error(), Err: err}
		}
		f.r = gz
		f.Size = -1
	}
	f.progress = &progressCounter{total: f.Size, fn: o.Progress}
	return f, nil
}

// Download copies the file at path into w and returns the number of bytes
// written.
func (c *Client) Download(ctx context.Context, path string, w io.Writer, opts *DownloadOptions) (int64, error) {
	f, err := c.OpenFile(ctx, path, opts)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err != nil {
		return n, transportError("GET /files", fmt.Errorf("copying %s: %w", path, err))
	}
	if f.Size >= 0 && n != f.Size {
		return n, &Error{Op: "GET /files", Status: 200, Code: connect.CodeDataLoss, Message: fmt.Sprintf("file %s: got %d of %d bytes", path, n, f.Size)}
	}
	return n, nil
}

// ReadFile returns the content of the file at path.
func (c *Client) ReadFile(ctx context.Context, path string) ([]byte, error) {
	var b bytes.Buffer
	if _, err := c.Download(ctx, path, &b, nil); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Compose concatenates the files sources, in order, into destination and
// then deletes the sources (POST /files/compose). The destination is
// replaced atomically and owned by the client's user.
func (c *Client) Compose(ctx context.Context, sources []string, destination string) (*WrittenFile, error) {
	const op = "POST /files/compose"
	body := map[string]any{"source_paths": sources, "destination": destination}
	if c.user != "" {
		body["username"] = c.user
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, &Error{Op: op, Code: connect.CodeInvalidArgument, Message: err.Error(), Err: err}
	}
	hdr := http.Header{"Content-Type": {"application/json"}}
	resp, err := c.do(ctx, op, http.MethodPost, "/files/compose", bytes.NewReader(b), hdr, http.StatusOK)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var w WrittenFile
	if err := json.NewDecoder(resp.Body).Decode(&w); err != nil {
		return nil, &Error{Op: op, Status: resp.StatusCode, Code: connect.CodeInternal, Message: "decoding response: " + err.Error(), Err: err}
	}
	return &w, nil
}

// DownloadURL returns a URL from which anyone can read the file at path
// with a plain GET, without the access token: the URL is signed with it
// (spec D7). A zero expires makes a URL that never expires. Without an
// access token the URL is unsigned (envd then needs no signature). path is
// sent as given and resolved by envd for the client's user.
func (c *Client) DownloadURL(path string, expires time.Time) string {
	return c.signedURL(path, signing.OpRead, expires)
}

// UploadURL returns a URL to which anyone can POST the content of the file
// at path (raw or multipart), signed like DownloadURL.
func (c *Client) UploadURL(path string, expires time.Time) string {
	return c.signedURL(path, signing.OpWrite, expires)
}

func (c *Client) signedURL(path, op string, expires time.Time) string {
	q := c.filesQuery(path)
	if c.token != "" {
		var exp *int64
		if !expires.IsZero() {
			e := expires.Unix()
			exp = &e
			q.Set("signature_expiration", strconv.FormatInt(e, 10))
		}
		q.Set("signature", signing.Sign(path, op, c.user, []byte(c.token), exp))
	}
	return c.base + "/files?" + q.Encode()
}
