package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/envd/envd/internal/files"
	"github.com/envd/envd/internal/httperror"
	"github.com/envd/envd/internal/identity"
)

// maxComposeBody bounds the compose request, a small JSON object.
const maxComposeBody = 16 << 20

type composeRequest struct {
	SourcePaths []string
	Destination string
	Username    string
}

// decodeCompose reads the body with exact, case-sensitive field names
// (encoding/json alone would also accept "Destination").
func decodeCompose(r io.Reader) (*composeRequest, error) {
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(io.LimitReader(r, maxComposeBody+1))
	if err := dec.Decode(&fields); err != nil {
		return nil, err
	}
	var req composeRequest
	for key, dst := range map[string]any{"source_paths": &req.SourcePaths, "destination": &req.Destination, "username": &req.Username} {
		raw, ok := fields[key]
		if !ok || bytes.Equal(raw, []byte("null")) {
			continue
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			return nil, fmt.Errorf("field %s: %w", key, err)
		}
	}
	return &req, nil
}

// compose serves POST /files/compose (spec http.md §13.2). The token
// middleware already required the access token.
func (f *Files) compose(w http.ResponseWriter, r *http.Request) {
	req, err := decodeCompose(r.Body)
	if err != nil {
		httperror.Write(w, http.StatusBadRequest, "invalid request body: "+err.Error())
		return
	}
	if len(req.SourcePaths) == 0 {
		httperror.Write(w, http.StatusBadRequest, "source_paths must not be empty")
		return
	}
	if req.Destination == "" {
		httperror.Write(w, http.StatusBadRequest, "destination is required")
		return
	}
	name, herr := f.userName(req.Username)
	if herr != nil {
		httperror.WriteError(w, herr)
		return
	}
	u, herr := lookupUser(name)
	if herr != nil {
		httperror.WriteError(w, herr)
		return
	}
	workdir := f.Env.DefaultWorkdir()
	dest, err := identity.ExpandAndResolve(req.Destination, u, workdir)
	if err != nil {
		httperror.Write(w, http.StatusBadRequest, "error resolving destination path: "+err.Error())
		return
	}
	out, err := files.Compose(r.Context(), files.ComposeRequest{
		Sources:     req.SourcePaths,
		Destination: dest,
		Owner:       owner(u),
		Resolve:     func(p string) (string, error) { return identity.ExpandAndResolve(p, u, workdir) },
		Watchers:    f.Watchers,
		Log:         f.Log,
		Staging:     f.Staging,
	})
	if err != nil {
		writeFileError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}
